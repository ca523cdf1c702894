"""``help(CMSClient)`` is enough: every public method documents each argument and its return."""

from __future__ import annotations

import inspect
import re
from datetime import datetime
from typing import Any, Callable, Optional, Union, get_type_hints

import pytest

from cms_shipper import CMSClient
from cms_shipper.results import TrackResult

DOCUMENTED: dict[str, Callable[..., Any]] = {
    "CMSClient(...)": CMSClient.__init__,
    "track_lead": CMSClient.track_lead,
    "track_sale": CMSClient.track_sale,
    "flush": CMSClient.flush,
    "close": CMSClient.close,
    "aflush": CMSClient.aflush,
    "aclose": CMSClient.aclose,
    "stats": CMSClient.stats,
    "wait": TrackResult.wait,
}


def _documented_args(doc: str) -> list[str]:
    """The names the ``Args:`` section documents, in order (``name: text`` at one indent)."""
    section = re.search(r"^(\s*)Args:\n(.*?)(?=^\1\S|\Z)", doc, re.DOTALL | re.MULTILINE)
    if section is None:
        return []
    body = section.group(2)
    indent = min(len(line) - len(line.lstrip()) for line in body.splitlines() if line.strip())
    entry = re.compile(rf"^ {{{indent}}}(\w+):", re.MULTILINE)
    return entry.findall(body)


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_every_parameter_is_documented_in_order_with_a_return(name: str) -> None:
    function = DOCUMENTED[name]
    doc = inspect.getdoc(function) or ""
    params = [p for p in inspect.signature(function).parameters if p != "self"]
    assert _documented_args(doc) == params, doc
    if name != "CMSClient(...)":
        assert "\nReturns:\n" in doc, doc
    # Self-contained: help() works offline, so no page is sent for.
    assert not re.search(r"README|docs/|\.md\b|see the", doc, re.IGNORECASE), doc


def test_the_class_says_what_success_means_for_a_queued_event() -> None:
    doc = inspect.getdoc(CMSClient) or ""
    for needed in ("queued=True", "not delivered", "wait(timeout_s)", "sync_mode=True"):
        assert needed in doc, needed
    assert not re.search(r"README|docs/|\.md\b", doc)


@pytest.mark.parametrize("method", [CMSClient.track_lead, CMSClient.track_sale])
def test_timestamp_is_typed_precisely(method: Callable[..., Any]) -> None:
    hints = get_type_hints(method)
    assert hints["timestamp"] == Optional[Union[datetime, str]]


def test_the_parser_of_args_sections_finds_what_is_there() -> None:
    # The check above is only as good as this parser: a missing name must show.
    doc = "Do it.\n\nArgs:\n    a: one\n        more about a\n    b: two\n\nReturns:\n    x\n"
    assert _documented_args(doc) == ["a", "b"]
    assert _documented_args("Do it.\n") == []
