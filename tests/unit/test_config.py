"""Configuration: argument, then environment, then default; every bad value named."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cms_shipper import CMSClient, ConfigurationError
from cms_shipper._config import DEFAULT_HOST, MAX_WAIT_S, wait_budget

TOKEN = "sekret-token-value-123"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CMS_BEARER_TOKEN", "CMS_HOST", "CMS_DISABLED", "CMS_SYNC_MODE",
                 "CMS_SHUTDOWN_TIMEOUT_S", "CMS_MAX_REQUESTS_PER_MINUTE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_missing_token_names_both_ways_and_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="token=") as info:
        CMSClient()
    assert isinstance(info.value, ConfigurationError)
    assert "CMS_BEARER_TOKEN" in str(info.value)


def test_disabled_client_needs_no_token() -> None:
    client = CMSClient(disabled=True)
    result = client.track_lead("signup", "u1", click_id="c1")
    assert result.success is True
    assert result.outcome == "dropped" and result.reason == "disabled"
    assert client.stats()["dropped"] == 1


def test_token_and_host_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMS_BEARER_TOKEN", TOKEN)
    monkeypatch.setenv("CMS_HOST", "http://127.0.0.1:1234/")
    client = CMSClient()
    assert client.settings.host == "http://127.0.0.1:1234"
    assert client.settings.token is not None and client.settings.token.reveal() == TOKEN


def test_argument_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMS_HOST", "http://env.example")
    assert CMSClient(token="t", host="https://arg.example").settings.host == "https://arg.example"
    monkeypatch.delenv("CMS_HOST")
    assert CMSClient(token="t").settings.host == DEFAULT_HOST


def test_token_never_in_repr_or_str() -> None:
    client = CMSClient(token=TOKEN)
    for text in (repr(client), str(client), repr(client.settings), str(client.settings.token)):
        assert TOKEN not in text


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"max_queue_size": 10.5}, "max_queue_size"),
        ({"batch_size": True}, "batch_size"),
        ({"max_concurrent_requests": 0}, "max_concurrent_requests"),
        ({"max_requests_per_minute": 0}, "max_requests_per_minute"),
        ({"retry_max_attempts": 0}, "retry_max_attempts"),
        ({"flush_interval_s": 0}, "flush_interval_s"),
        ({"read_timeout_s": float("inf")}, "read_timeout_s"),
        ({"connect_timeout_s": "3"}, "connect_timeout_s"),
        ({"shutdown_timeout_s": -1}, "shutdown_timeout_s"),
        ({"retry_initial_backoff_s": 5.0, "retry_max_backoff_s": 1.0}, "retry_initial_backoff_s"),
        ({"on_error": "print"}, "on_error"),
        ({"sync_mode": "yes"}, "sync_mode"),
    ],
)
def test_bad_option_names_the_argument(options: dict[str, Any], argument: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        CMSClient(token="t", **options)
    assert info.value.argument == argument
    assert str(info.value).startswith(argument + ":")


@pytest.mark.parametrize("host", ["api.cme.sh", "ftp://x", "http://"])
def test_bad_host(host: str) -> None:
    with pytest.raises(ConfigurationError, match="host"):
        CMSClient(token="t", host=host)


def test_env_values_are_validated_with_the_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMS_MAX_REQUESTS_PER_MINUTE", "sixty")
    with pytest.raises(ConfigurationError, match="CMS_MAX_REQUESTS_PER_MINUTE"):
        CMSClient(token="t")
    monkeypatch.setenv("CMS_MAX_REQUESTS_PER_MINUTE", "60")
    monkeypatch.setenv("CMS_SHUTDOWN_TIMEOUT_S", "2.5")
    monkeypatch.setenv("CMS_SYNC_MODE", "true")
    settings = CMSClient(token="t").settings
    assert (settings.max_requests_per_minute, settings.shutdown_timeout_s) == (60, 2.5)
    assert settings.sync_mode is True
    monkeypatch.setenv("CMS_DISABLED", "maybe")
    with pytest.raises(ConfigurationError, match="CMS_DISABLED"):
        CMSClient(token="t")


def test_token_with_line_break_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        CMSClient(token=TOKEN + "\r\nX-Evil: 1")
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("bad", ["a\u2028b", "tok\u20ac", "t\u200bk", "two words", "tab\there"])
def test_a_token_no_http_header_can_carry_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="visible ASCII") as info:
        CMSClient(token=TOKEN + bad)
    assert TOKEN not in str(info.value) and bad not in str(info.value)


def test_swapped_positional_arguments_never_put_the_token_in_the_message() -> None:
    with pytest.raises(ConfigurationError) as info:
        CMSClient("https://api.cme.sh", TOKEN)  # the vendor order is (token, host)
    assert "keyword" in str(info.value) and TOKEN not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        CMSClient(token="t", host=TOKEN)  # a token where the host goes
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("http://h/api?v=2", "no query"),
        ("http://h/#x", "fragment"),
        ("http://h?", "no query"),
        ("http://user:secret@h", "user:password"),
        ("http://[", "does not parse"),
        ("http://h:99999", "does not parse"),
        ("http://h /x", "no spaces"),
    ],
)
def test_host_is_an_http_base_url_without_query_fragment_or_credentials(
    host: str, rule: str
) -> None:
    with pytest.raises(ConfigurationError, match=rule) as info:
        CMSClient(token="t", host=host)
    assert "secret" not in str(info.value)


def test_a_host_path_prefix_is_kept() -> None:
    client = CMSClient(token="t", host=" https://gateway.example/cms/ ")
    assert client.settings.host == "https://gateway.example/cms"
    client.close(0)


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.fractions(),
                 st.text(max_size=3), st.binary(max_size=3)))  # fmt: skip
def test_wait_budget_takes_any_value_and_stays_within_bounds(value: Any) -> None:
    budget = wait_budget(value, 7.0)
    assert 0.0 <= budget <= MAX_WAIT_S
    if value is None or isinstance(value, (bool, str, bytes)):
        assert budget == 7.0


def test_wait_budget_clamps_the_extremes() -> None:
    assert wait_budget(math.inf, 1.0) == MAX_WAIT_S == wait_budget(10**5000, 1.0)
    assert wait_budget(-(10**5000), 1.0) == 0.0 == wait_budget(-1, 1.0)
    assert wait_budget(math.nan, 1.0) == 1.0


def test_every_option_is_an_explicit_keyword_only_parameter_with_its_default() -> None:
    import inspect

    from cms_shipper._config import Settings

    params = inspect.signature(CMSClient).parameters
    options = set(Settings.__dataclass_fields__) - {"token", "host"}
    keyword_only = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keyword_only == options
    assert list(params)[:2] == ["token", "host"]  # positional, as in the vendor SDK
    assert params["max_queue_size"].default == 10_000 and params["batch_size"].default == 100
    assert params["max_queue_size"].annotation == "int"  # shown by help() and IDEs


def test_a_misspelt_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_queue"):
        CMSClient(token="t", max_queue=5)  # type: ignore[call-arg]
