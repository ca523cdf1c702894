"""Reply parsing: Retry-After, bodies and error text, for anything a server may send."""

from __future__ import annotations

import json
import math
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cms_shipper._engine.transport import (
    MAX_ERROR_TEXT,
    MAX_REPLY_BYTES,
    one_line,
    parse_body,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: no wait
        ("soon", None),
        (None, None),
        ("-3", None),
        ("²", None),  # a digit to str.isdigit, not to float()
        ("9" * 5000, math.inf),  # huge: inf, which every waiter caps
        ("Wed, 99 Oct 99999 07:28:10 GMT", None),
    ],
)
def test_parse_retry_after(header: Optional[str], expected: Optional[float]) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now=now) == expected


@given(st.text())
def test_parse_retry_after_never_raises(header: str) -> None:
    value = parse_retry_after(header, now=0.0)
    assert value is None or value >= 0.0


def test_deeply_nested_json_is_an_unparseable_body_not_an_error() -> None:
    body = b"[" * 50_000 + b"]" * 50_000
    parsed = parse_body(body[:MAX_REPLY_BYTES], complete=True)
    assert isinstance(parsed, str) and len(parsed) <= MAX_ERROR_TEXT


def test_a_truncated_body_is_text_even_if_it_starts_like_json() -> None:
    assert parse_body(b'{"success": false, "error": "x"}', complete=False) == (
        '{"success": false, "error": "x"}'
    )
    assert parse_body(b'{"success": false}', complete=True) == {"success": False}


@given(st.binary(max_size=2000), st.booleans())
def test_parse_body_never_raises_and_bounds_text(data: bytes, complete: bool) -> None:
    parsed = parse_body(data, complete)
    if isinstance(parsed, str):
        assert len(parsed) <= MAX_ERROR_TEXT and "\n" not in parsed and "\r" not in parsed
    elif parsed is not None:  # only a complete body is parsed; NaN compares by its text
        assert complete
        assert json.dumps(parsed) == json.dumps(json.loads(data.decode("utf-8", "replace")))


def test_one_line_removes_line_breaks_and_bounds_length() -> None:
    assert one_line("a\nb\r\nc") == "a b c"
    long = one_line("x" * 10_000)
    assert len(long) == MAX_ERROR_TEXT and long.endswith("...")
