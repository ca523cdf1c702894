"""The emulator's adjustable behaviour (auth, rate limit, injected faults), validated."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """What the emulator enforces and which faults it injects; replaced whole on change."""

    # repr=False: the token must never show up in a repr, a log line or a test failure.
    token: Optional[str] = field(default="test-token", repr=False)
    rate_limit: Optional[int] = None
    rate_limit_window_s: float = 60.0
    latency_s: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    retry_after_s: Optional[float] = None
    seed: Optional[int] = None
    # False: 429s carry no Retry-After, as the real API documents none for its 60/minute.
    rate_limit_retry_after: bool = True
    # Reply faults, applied to every /track answer whatever its status.
    trickle_interval_s: float = 0.0
    reply_padding_bytes: int = 0
    endless_reply: bool = False
    nested_reply_depth: int = 0
    # One INFO line per /track request on the "cms_shipper.emulator" logger. Off by default
    # so that tests stay quiet; the command line turns it on.
    log_requests: bool = False

    def __post_init__(self) -> None:
        if self.token is not None and (not isinstance(self.token, str) or not self.token):
            raise ValueError("token must be a non-empty string, or None to accept any token")
        if self.rate_limit is not None and (
            isinstance(self.rate_limit, bool)
            or not isinstance(self.rate_limit, int)
            or self.rate_limit < 1
        ):
            raise ValueError(f"rate_limit must be None or an int >= 1, got {self.rate_limit!r}")
        _positive("rate_limit_window_s", self.rate_limit_window_s, allow_zero=False)
        _positive("latency_s", self.latency_s, allow_zero=True)
        if not (isinstance(self.error_rate, (int, float)) and 0.0 <= self.error_rate <= 1.0):
            raise ValueError(f"error_rate must be within [0, 1], got {self.error_rate!r}")
        if not (isinstance(self.error_status, int) and 400 <= self.error_status <= 599):
            raise ValueError(f"error_status must be within [400, 599], got {self.error_status!r}")
        if self.retry_after_s is not None:
            _positive("retry_after_s", self.retry_after_s, allow_zero=True)
        _flag("rate_limit_retry_after", self.rate_limit_retry_after)
        _positive("trickle_interval_s", self.trickle_interval_s, allow_zero=True)
        _count("reply_padding_bytes", self.reply_padding_bytes)
        _flag("endless_reply", self.endless_reply)
        _count("nested_reply_depth", self.nested_reply_depth)
        _flag("log_requests", self.log_requests)

    def retry_after_header(self) -> tuple[tuple[str, str], ...]:
        """The Retry-After header for injected errors and outages, if one is configured."""
        if self.retry_after_s is None:
            return ()
        return (("Retry-After", str(math.ceil(self.retry_after_s))),)


def _positive(name: str, value: float, *, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _flag(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
