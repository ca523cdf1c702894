"""Request faults decided before the API's rules: outages and per-customer failures.

Validation lives here too, so that the ``Emulator`` and the command line reject the same
arguments with the same messages. ``CustomerFailures`` is not thread-safe on its own:
``State`` calls it with its lock held.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional

__all__ = [
    "CustomerFailure",
    "CustomerFailures",
    "FailMode",
    "Outage",
    "OutageMode",
    "check_customer_failure",
    "check_outage",
]

FailMode = Literal["status", "reset"]
OutageMode = Literal["status", "reset", "refuse"]


def check_outage(duration_s: Optional[float], status: int, mode: str) -> None:
    """Raise ValueError, naming the argument, unless these are valid ``outage`` arguments."""
    if duration_s is not None and not (
        isinstance(duration_s, (int, float))
        and not isinstance(duration_s, bool)
        and math.isfinite(duration_s)
        and duration_s >= 0
    ):
        raise ValueError(f"duration_s must be None or a finite number >= 0, got {duration_s!r}")
    _check_status(status)
    if mode not in ("status", "reset", "refuse"):
        raise ValueError(f"mode must be 'status', 'reset' or 'refuse', got {mode!r}")


def check_customer_failure(
    customer_external_id: str, status: int, count: Optional[int], mode: str
) -> None:
    """Raise ValueError, naming the argument, unless these are valid ``fail_customer`` ones."""
    if not isinstance(customer_external_id, str) or not customer_external_id:
        raise ValueError(
            f"customer_external_id must be a non-empty string, got {customer_external_id!r}"
        )
    _check_status(status)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be None or an int >= 1, got {count!r}")
    if mode not in ("status", "reset"):
        raise ValueError(f"mode must be 'status' or 'reset', got {mode!r}")


def _check_status(status: int) -> None:
    if isinstance(status, bool) or not (isinstance(status, int) and 400 <= status <= 599):
        raise ValueError(f"status must be within [400, 599], got {status!r}")


@dataclass(frozen=True)
class Outage:
    """An outage the emulator answers itself (the refuse mode lives in the listener)."""

    until: float  # time.monotonic(); math.inf until end_outage()
    status: int
    mode: FailMode

    def active(self) -> bool:
        """Whether the outage still holds now."""
        return time.monotonic() < self.until


@dataclass(frozen=True)
class CustomerFailure:
    """How to fail one customer's requests, and how many more times (None: until cleared)."""

    status: int
    remaining: Optional[int]
    mode: FailMode


class CustomerFailures:
    """Per-customer failure rules, keyed by ``customerExternalId``."""

    def __init__(self) -> None:
        self._rules: Dict[str, CustomerFailure] = {}

    def add(self, customer: str, rule: CustomerFailure) -> None:
        """Fail this customer's next requests as ``rule`` says; replaces any earlier rule."""
        self._rules[customer] = rule

    def clear(self, customer: Optional[str] = None) -> None:
        """Remove the rule for ``customer``, or every rule when it is None."""
        if customer is None:
            self._rules.clear()
        else:
            self._rules.pop(customer, None)

    def take(self, payload: Any) -> Optional[CustomerFailure]:
        """The rule matching this body, counting it as used once; None when none matches."""
        if not self._rules or not isinstance(payload, dict):
            return None
        customer = payload.get("customerExternalId")
        if not isinstance(customer, str) or customer not in self._rules:
            return None
        rule = self._rules[customer]
        if rule.remaining is not None:
            if rule.remaining <= 1:
                del self._rules[customer]
            else:
                self._rules[customer] = CustomerFailure(rule.status, rule.remaining - 1, rule.mode)
        return rule
