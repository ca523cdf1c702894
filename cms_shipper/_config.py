"""Resolve constructor arguments: argument, then environment variable, then default.

Everything is validated here, at construction, with a message that names the argument
and the allowed range. The result is a frozen ``Settings``; the token inside it is a
``Secret`` whose repr never shows it.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from cms_shipper.errors import ConfigurationError

__all__ = [
    "CMS_BEARER_TOKEN",
    "CMS_DISABLED",
    "CMS_HANDLE_SIGTERM",
    "CMS_HOST",
    "CMS_MAX_REQUESTS_PER_MINUTE",
    "CMS_REDIS_URL",
    "CMS_SHUTDOWN_TIMEOUT_S",
    "CMS_SPOOL_PATH",
    "CMS_SYNC_MODE",
    "CMS_WRITE_AHEAD",
    "DEFAULT_HOST",
    "MAX_WAIT_S",
    "Secret",
    "Settings",
    "default",
    "resolve_settings",
    "wait_budget",
]

# Environment variables, each named after itself.
CMS_BEARER_TOKEN = "CMS_BEARER_TOKEN"  # noqa: S105  # a variable name, not a secret
CMS_HOST = "CMS_HOST"
CMS_DISABLED = "CMS_DISABLED"
CMS_SYNC_MODE = "CMS_SYNC_MODE"
CMS_SHUTDOWN_TIMEOUT_S = "CMS_SHUTDOWN_TIMEOUT_S"
CMS_MAX_REQUESTS_PER_MINUTE = "CMS_MAX_REQUESTS_PER_MINUTE"
CMS_SPOOL_PATH = "CMS_SPOOL_PATH"
CMS_WRITE_AHEAD = "CMS_WRITE_AHEAD"
CMS_HANDLE_SIGTERM = "CMS_HANDLE_SIGTERM"
CMS_REDIS_URL = "CMS_REDIS_URL"
_REDIS_SCHEMES = ("redis", "rediss", "unix")

DEFAULT_HOST = "https://api.cme.sh"

Callback = Callable[[Any], None]


class Secret:
    """Holds the bearer token; its repr and str never reveal it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The token itself, for the Authorization header only."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


@dataclass(frozen=True)
class Settings:
    """The resolved, validated configuration of one client."""

    token: Optional[Secret] = field(repr=False)
    host: str
    max_queue_size: int = 10_000
    batch_size: int = 100
    flush_interval_s: float = 0.5
    max_concurrent_requests: int = 4
    max_requests_per_minute: Optional[int] = None
    retry_max_attempts: int = 10
    retry_max_elapsed_s: float = 60.0
    retry_initial_backoff_s: float = 0.5
    retry_max_backoff_s: float = 30.0
    max_retry_after_s: float = 300.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    shutdown_timeout_s: float = 5.0
    flush_timeout_s: float = 30.0
    on_success: Optional[Callback] = None
    on_error: Optional[Callback] = None
    on_drop: Optional[Callback] = None
    sync_mode: bool = False
    disabled: bool = False
    spool_path: Optional[str] = None
    spool_max_bytes: int = 50 * 2**20
    write_ahead: bool = False
    handle_sigterm: bool = False
    spool_replay_interval_s: float = 5.0
    spool_lease_s: float = 60.0
    # Fleet mode: a Secret, since the URL may carry a password (never shown, never logged).
    redis_url: Optional[Secret] = field(default=None, repr=False)


_INTS = {  # name -> smallest allowed value
    "max_queue_size": 1,
    "batch_size": 1,
    "max_concurrent_requests": 1,
    "retry_max_attempts": 1,
    "spool_max_bytes": 64 * 1024,
}
_FLOATS = {  # name -> smallest allowed value
    "flush_interval_s": 0.001,
    "retry_max_elapsed_s": 0.0,
    "retry_initial_backoff_s": 0.0,
    "retry_max_backoff_s": 0.0,
    "max_retry_after_s": 0.0,
    "connect_timeout_s": 0.001,
    "read_timeout_s": 0.001,
    "shutdown_timeout_s": 0.0,
    "flush_timeout_s": 0.0,
    "spool_replay_interval_s": 0.01,
    "spool_lease_s": 0.1,
}
_CALLBACKS = ("on_success", "on_error", "on_drop")
_FLAGS = {
    "sync_mode": CMS_SYNC_MODE,
    "disabled": CMS_DISABLED,
    "write_ahead": CMS_WRITE_AHEAD,
    "handle_sigterm": CMS_HANDLE_SIGTERM,
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# The longest wait any blocking call honours (about 31 years, within every platform's
# threading.TIMEOUT_MAX): larger values, inf included, mean "as long as it takes".
MAX_WAIT_S = min(1e9, threading.TIMEOUT_MAX)


def default(name: str) -> Any:
    """The default of a ``Settings`` field (for ``CMSClient``'s signature)."""
    return Settings.__dataclass_fields__[name].default


def wait_budget(value: object, default: float) -> float:
    """Seconds a blocking call may wait, from any ``timeout_s`` value; never raises.

    None, NaN and non-numbers mean ``default``; negative means 0; anything above
    ``MAX_WAIT_S`` (inf, 1e300, a 5,000-digit int) is clamped to it.
    """
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return default
    try:
        seconds = float(value)
    except OverflowError:  # an int or Fraction too large for a float: its sign decides
        return 0.0 if value < 0 else MAX_WAIT_S
    except Exception:  # a Real whose __float__ misbehaves
        return default
    if math.isnan(seconds):
        return default
    return min(max(seconds, 0.0), MAX_WAIT_S)


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name)
    return value if value is not None and value.strip() != "" else None


def _int(name: str, value: Any, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise ConfigurationError(name, f"must be an int >= {minimum}, got {value!r}")
    return value


def _float(name: str, value: Any, minimum: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < minimum:
        raise ConfigurationError(
            name, f"must be a finite number of seconds >= {minimum}, got {value!r}"
        )
    return float(value)


def _flag(name: str, value: Any, env_name: str) -> bool:
    if value is None:
        raw = (os.environ.get(env_name) or "").strip().lower()
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise ConfigurationError(env_name, f"must be one of 1/0/true/false/yes/no, got {raw!r}")
    if not isinstance(value, bool):
        raise ConfigurationError(name, f"must be True or False, got {value!r}")
    return value


def _host(value: Optional[str]) -> str:
    source = "host"
    if value is None:
        value, source = _env(CMS_HOST), CMS_HOST
    if value is None:
        return DEFAULT_HOST
    problem = _host_problem(value)
    if problem:
        # Echo the value only if it is URL-shaped and holds no credentials: with the
        # positional arguments swapped, CMSClient("https://api.cme.sh", TOKEN), it is the token.
        url_shaped = isinstance(value, str) and "://" in value and "@" not in value
        shown = f", got {value[:200]!r}" if url_shaped else ""
        raise ConfigurationError(
            source, f"must be an http(s) base URL such as {DEFAULT_HOST} ({problem}){shown}"
        )
    return str(value).strip().rstrip("/")


def _host_problem(value: object) -> str:
    """What is wrong with a host value, or "" when it is an http(s) base URL."""
    if not isinstance(value, str):
        return f"got {type(value).__name__}, not a string"
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  # raises ValueError for a port out of range
    except ValueError:
        return "it does not parse as a URL"
    rules = (
        (
            parts.scheme in ("http", "https") and bool(parts.hostname),
            "http:// or https:// and a host name are required",
        ),
        (
            not (parts.query or parts.fragment or "?" in text or "#" in text),
            "no query (?...) or fragment (#...): a path prefix is fine",
        ),
        (
            parts.username is None and parts.password is None,
            "no user:password@: the bearer token is the only credential",
        ),
        (not any(ch.isspace() for ch in text), "no spaces"),
    )
    return next((rule for ok, rule in rules if not ok), "")


def _token(value: Optional[str], disabled: bool) -> Optional[Secret]:
    if value is None:
        value = _env(CMS_BEARER_TOKEN)
    if value is not None and not isinstance(value, str):
        raise ConfigurationError("token", f"must be a string, got {type(value).__name__}")
    if value is None or not value.strip():
        if disabled:
            return None
        raise ConfigurationError(
            "token",
            f"no bearer token: pass token=... or set the {CMS_BEARER_TOKEN} environment variable"
            " (or pass disabled=True to validate events without sending them)",
        )
    value = value.strip()
    if value.startswith(("http://", "https://")):
        raise ConfigurationError(
            "token",
            "looks like a URL: the arguments are CMSClient(token, host); pass them by keyword",
        )
    if not all("!" <= ch <= "~" for ch in value):
        # Sent in the Authorization header: visible ASCII only. The token is not shown.
        raise ConfigurationError(
            "token",
            "must be visible ASCII characters only (no spaces, line breaks or non-ASCII "
            "characters such as '€' or zero-width spaces): it is sent in an HTTP header",
        )
    return Secret(value)


def _spool_path(value: Any, write_ahead: bool) -> Optional[str]:
    source = "spool_path"
    if value is None:
        value, source = _env(CMS_SPOOL_PATH), CMS_SPOOL_PATH
    if value is None:
        if write_ahead:
            raise ConfigurationError("write_ahead", "needs a spool: pass spool_path=... too")
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigurationError(source, f"must be a file path, got {value!r}")
    path = os.path.abspath(os.fspath(value))
    if not os.path.isdir(os.path.dirname(path)):
        raise ConfigurationError(source, f"directory {os.path.dirname(path)!r} does not exist")
    return path


def _redis_url(value: Any) -> Optional[Secret]:
    source = "redis_url"
    if value is None:
        value, source = _env(CMS_REDIS_URL), CMS_REDIS_URL
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(source, f"must be a URL string, got {type(value).__name__}")
    scheme = urlsplit(value).scheme
    if scheme not in _REDIS_SCHEMES:
        raise ConfigurationError(
            source,
            f"must start with redis://, rediss:// or unix:// (got scheme {scheme or 'none'!r})",
        )
    return Secret(value)


def _env_number(name: str, env_name: str, options: dict[str, Any]) -> None:
    """Fill ``options[name]`` from ``env_name`` when the argument was not given."""
    if name in options:
        return
    raw = _env(env_name)
    if raw is None:
        return
    try:
        options[name] = float(raw) if name.endswith("_s") else int(raw)
    except ValueError:
        raise ConfigurationError(env_name, f"must be a number, got {raw!r}") from None


def resolve_settings(
    token: Optional[str], host: Optional[str], options: dict[str, Any]
) -> Settings:
    """Validate every option and return the frozen ``Settings``; raise ``ConfigurationError``."""
    known = set(Settings.__dataclass_fields__) - {"token", "host"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigurationError(unknown[0], f"unknown option; known options are {sorted(known)}")
    options = dict(options)
    _env_number("shutdown_timeout_s", CMS_SHUTDOWN_TIMEOUT_S, options)
    _env_number("max_requests_per_minute", CMS_MAX_REQUESTS_PER_MINUTE, options)
    for name, env_name in _FLAGS.items():
        options[name] = _flag(name, options.get(name), env_name)
    for name, minimum in _INTS.items():
        if name in options:
            options[name] = _int(name, options[name], minimum)
    for name, least in _FLOATS.items():
        if name in options:
            options[name] = _float(name, options[name], least)
    if options.get("max_requests_per_minute") is not None:
        options["max_requests_per_minute"] = _int(
            "max_requests_per_minute", options["max_requests_per_minute"], 1
        )
    options["spool_path"] = _spool_path(options.get("spool_path"), options["write_ahead"])
    options["redis_url"] = _redis_url(options.get("redis_url"))
    for name in _CALLBACKS:
        if options.get(name) is not None and not callable(options[name]):
            raise ConfigurationError(name, f"must be callable or None, got {options[name]!r}")
    settings = Settings(token=_token(token, options["disabled"]), host=_host(host), **options)
    if settings.retry_initial_backoff_s > settings.retry_max_backoff_s:
        raise ConfigurationError(
            "retry_initial_backoff_s",
            f"must be <= retry_max_backoff_s ({settings.retry_max_backoff_s})",
        )
    return settings
