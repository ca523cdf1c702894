"""Result values: what ``track_*``, ``wait``, ``flush`` and ``close`` hand back.

Delivery problems travel as these values, never as exceptions. A ``Result`` reads both
ways the vendor SDK's users write: ``r.success`` and ``r["success"]`` / ``r.get("success")``,
and prints as a dict.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Protocol

from cms_shipper._config import wait_budget

if TYPE_CHECKING:
    from cms_shipper._events import Event

__all__ = ["FlushResult", "Outcome", "Reason", "Result", "TrackResult"]


class Outcome(str, enum.Enum):
    """The one final outcome every tracked event ends in."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # 409: the server already has it; not an error
    REJECTED = "rejected"  # invalid here (422) or refused by the server (4xx); never retried
    FAILED = "failed"  # retries exhausted, or a server answer we cannot act on
    DROPPED = "dropped"  # never sent: queue full, client closed, shutdown deadline, disabled
    SPOOLED = "spooled"  # not sent yet, saved in the on-disk spool for a later replay

    def __str__(self) -> str:
        return self.value


class Reason(str, enum.Enum):
    """Why an event got its outcome; ``stats()`` counts outcomes by these."""

    ACCEPTED = "accepted"
    ALREADY_RECORDED = "already_recorded"
    INVALID = "invalid"
    HTTP_ERROR = "http_error"
    RETRIES_EXHAUSTED = "retries_exhausted"
    UNEXPECTED_STATUS = "unexpected_status"
    QUEUE_FULL = "queue_full"
    CLOSED = "closed"
    SHUTDOWN = "shutdown"
    DISABLED = "disabled"
    SPOOL_FULL = "spool_full"
    BEHIND_SPOOLED = "behind_spooled"  # saved behind its customer's older events in the spool
    INTERNAL_ERROR = "internal_error"  # a bug of ours caught by track_*'s last-resort guard

    def __str__(self) -> str:
        return self.value


_KEYS = (
    "success",
    "status_code",
    "message",
    "data",
    "error",
    "details",
    "event_id",
    "outcome",
    "reason",
)


class Result(Mapping[str, Any]):
    """An immutable answer about one event; a read-only mapping as well as an object."""

    __slots__ = (
        "data",
        "details",
        "error",
        "event",
        "event_id",
        "message",
        "outcome",
        "reason",
        "status_code",
        "success",
    )

    def __init__(
        self,
        *,
        success: bool,
        status_code: Optional[int] = None,
        message: Optional[str] = None,
        data: Any = None,
        error: Optional[str] = None,
        details: Optional[Mapping[str, str]] = None,
        event_id: Optional[str] = None,
        outcome: Optional[Outcome] = None,
        reason: Optional[Reason] = None,
        event: Optional[Event] = None,
    ) -> None:
        self.success = success
        self.status_code = status_code
        self.message = message
        self.data = data
        self.error = error
        self.details = dict(details) if details else None
        self.event_id = event_id
        self.outcome = outcome
        self.reason = reason
        # The validated event (payload without the token); not one of the mapping's keys.
        self.event = event

    def __getitem__(self, key: str) -> Any:
        if key not in _KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict, with enums as their string values."""
        out = {key: getattr(self, key) for key in _KEYS}
        for key in ("outcome", "reason"):
            if out[key] is not None:
                out[key] = out[key].value
        return out

    def __repr__(self) -> str:
        return repr(self.to_dict())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self.to_dict() == {
                k: (v.value if isinstance(v, enum.Enum) else v) for k, v in other.items()
            }
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to dicts, so unhashable like them


class _Books(Protocol):
    def wait_final(self, result: TrackResult, timeout_s: Optional[float]) -> None: ...


class TrackResult(Result):
    """What ``track_*`` returns at once; ``wait()`` gives the event's final ``Result``."""

    __slots__ = ("_books", "_final", "_in_spool", "_seq")

    def __init__(
        self,
        *,
        books: Optional[_Books],
        final: Optional[Result] = None,
        **fields: Any,
    ) -> None:
        super().__init__(**fields)
        self._books = books  # the ledger that will resolve it
        self._final = final
        self._seq = 0  # set by the ledger on admission
        self._in_spool = 0  # its row in the on-disk spool: 0 none, else how (see _spooling)

    @property
    def final(self) -> Optional[Result]:
        """The final outcome if the event has one yet, else None."""
        return self._final

    def done(self) -> bool:
        """True once the event has its final outcome."""
        return self._final is not None

    def wait(self, timeout_s: Optional[float] = None) -> Result:
        """Block until the event's final outcome or ``timeout_s``; never raises.

        Returns the server's answer (``success``, ``status_code``, ``data`` or ``error``).
        On timeout returns a Result with ``success=False``, ``outcome=None`` and an
        ``error`` saying the event is still pending. ``None`` waits without a bound;
        negative, NaN or non-numeric timeouts do not wait.
        """
        # Any timeout value is fine: None waits without a bound; inf and huge are clamped;
        # negative, NaN and non-numbers mean 0 (a garbage timeout must not hang a caller).
        bound = None if timeout_s is None else wait_budget(timeout_s, 0.0)
        if self._final is None and self._books is not None:
            self._books.wait_final(self, bound)
        final = self._final
        if final is not None:
            return final
        return Result(
            success=False,
            message="pending",
            error=f"no final outcome within {bound:g} s; the event is still pending"
            if bound is not None
            else "no final outcome yet; the event is still pending",
            event_id=self.event_id,
        )


@dataclass(frozen=True)
class FlushResult:
    """Counts by outcome over the client's life, what is still pending, and whether time ran out.

    Truthy when nothing that was tracked before the call is still pending.
    """

    delivered: int
    duplicate: int
    rejected: int
    failed: int
    dropped: int
    pending: int
    timed_out: bool
    spooled: int = 0

    def __bool__(self) -> bool:
        return self.pending == 0
