"""Result values: what ``track_*``, ``wait``, ``flush`` and ``close`` hand back.

Delivery problems travel as these values, never as exceptions. A ``Result`` reads both
ways the vendor SDK's users write: ``r.success`` and ``r["success"]`` / ``r.get("success")``.
It *is* a (read-only) dict, so ``json.dumps(r)``, Flask's ``jsonify(r)``, Django's
``JsonResponse(r)`` and a FastAPI return value serialise it as it prints; ``FlushResult``
likewise. The pipeline itself carries a small ``Tracked`` record per event, not the
caller's result, so an event costs no dict while it waits in the queue.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Dict, Literal, NoReturn, Optional, Protocol, TypedDict

from cms_shipper._config import wait_budget

if TYPE_CHECKING:
    from cms_shipper._events import Event

__all__ = ["FlushResult", "Outcome", "Reason", "Result", "Stats", "TrackResult", "Tracked"]


class Outcome(str, enum.Enum):
    """The one final outcome every tracked event ends in."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # 409: the server already has it; not an error
    REJECTED = "rejected"  # invalid here (422) or refused by the server (4xx); never retried
    FAILED = "failed"  # retries exhausted, or a server answer we cannot act on
    DROPPED = "dropped"  # never sent: queue full, client closed, shutdown deadline, disabled
    SPOOLED = "spooled"  # not sent yet, kept for later: the on-disk spool, or the fleet's queue

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
    UNAUTHORIZED = "unauthorized"  # the API refused the token (401); the event waited for it
    BEHIND_SPOOLED = "behind_spooled"  # saved behind its customer's older events in the spool
    IN_FLEET = "in_fleet"  # left in the fleet's Redis queue, for another member to deliver
    INTERNAL_ERROR = "internal_error"  # a bug of ours caught by track_*'s last-resort guard

    def __str__(self) -> str:
        return self.value


class _ReadOnly(Dict[str, Any]):
    """A dict whose items are fixed at construction (copy it with ``dict(r)`` to change it)."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} is read-only; dict(result) makes a copy")

    __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only


class Result(_ReadOnly):
    """An immutable answer about one event: a read-only dict and an object at once.

    Keys (and attributes): ``success``, ``queued``, ``status_code``, ``message``, ``data``,
    ``error``, ``details``, ``event_id``, ``outcome``, ``reason``. ``queued`` is True for an
    answer given before the event's final outcome (``outcome`` None): ``success=True,
    queued=True`` means accepted and queued, not delivered. ``outcome`` and ``reason`` are
    ``str`` enums, so they compare equal to (and serialise as) their values. ``event`` (the
    validated payload, without the token) is an attribute only, not a key.
    """

    __slots__ = ("event",)

    def __init__(
        self,
        *,
        success: bool,
        queued: bool = False,
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
        dict.__init__(
            self,
            success=success,
            queued=queued,
            status_code=status_code,
            message=message,
            data=data,
            error=error,
            details=dict(details) if details else None,
            event_id=event_id,
            outcome=outcome,
            reason=reason,
        )
        self.event = event

    @property
    def success(self) -> bool:
        """True when the event was delivered or was a duplicate, or (``queued``) is queued.

        On a queued answer it means accepted and queued, not delivered: ``wait()`` gives
        the final outcome, whose ``success`` is the API's.
        """
        return bool(dict.__getitem__(self, "success"))

    @property
    def queued(self) -> bool:
        """True when this answer is not the event's final one: it is queued or on its way."""
        return bool(dict.__getitem__(self, "queued"))

    @property
    def status_code(self) -> Optional[int]:
        """The HTTP status the server answered (422 for an event refused here); or None."""
        return dict.__getitem__(self, "status_code")  # type: ignore[no-any-return]

    @property
    def message(self) -> Optional[str]:
        """A short word on what happened: ``delivered``, ``queued``, ``dropped: shutdown``..."""
        return dict.__getitem__(self, "message")  # type: ignore[no-any-return]

    @property
    def data(self) -> Any:
        """The server's ``data`` on success."""
        return dict.__getitem__(self, "data")

    @property
    def error(self) -> Optional[str]:
        """What went wrong, on one bounded line; None on success."""
        return dict.__getitem__(self, "error")  # type: ignore[no-any-return]

    @property
    def details(self) -> Optional[dict[str, str]]:
        """Field -> rule for a rejected event (ours or the server's); else None."""
        return dict.__getitem__(self, "details")  # type: ignore[no-any-return]

    @property
    def event_id(self) -> Optional[str]:
        """The client's id for the event (never sent to the API)."""
        return dict.__getitem__(self, "event_id")  # type: ignore[no-any-return]

    @property
    def outcome(self) -> Optional[Outcome]:
        """The final outcome; None while the event is queued or pending."""
        return dict.__getitem__(self, "outcome")  # type: ignore[no-any-return]

    @property
    def reason(self) -> Optional[Reason]:
        """Why it got that outcome."""
        return dict.__getitem__(self, "reason")  # type: ignore[no-any-return]

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict, with enums as their string values."""
        return {k: v.value if isinstance(v, enum.Enum) else v for k, v in self.items()}

    def __repr__(self) -> str:
        return repr(self.to_dict())

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy: rebuilt as a plain Result (a snapshot, without the books).
        return _rebuild, (dict(self), self.event)


def _rebuild(fields: dict[str, Any], event: Optional[Event]) -> Result:
    return Result(**fields, event=event)


class Tracked:
    """One event on its way: what the queue, scheduler, senders and ledger hold.

    Not the caller's result: a caller may drop its ``TrackResult`` at once, and an event
    waiting in the queue then costs this record and its ``Event`` only.
    """

    __slots__ = ("_final", "_kept", "_seq", "event")

    def __init__(self, event: Optional[Event], final: Optional[Result] = None) -> None:
        self.event = event
        self._final = final
        self._seq = 0  # set by the ledger on admission
        # The durability implementation's own mark on the event (the spool: whether and how
        # it has a row); 0 means none. Nothing else reads it.
        self._kept = 0

    @property
    def event_id(self) -> Optional[str]:
        """The event's id."""
        return self.event.event_id if self.event is not None else None

    @property
    def final(self) -> Optional[Result]:
        """The final outcome if the event has one yet, else None."""
        return self._final


class _Books(Protocol):
    def wait_final(self, item: Tracked, timeout_s: Optional[float]) -> None: ...

    def refusing(self) -> bool: ...


class TrackResult(Result):
    """What ``track_*`` returns at once; ``wait()`` gives the event's final ``Result``.

    As a dict it holds the answer at return: queued (``success=True``, ``queued=True``,
    ``message="queued"``, ``outcome=None``: accepted and queued, not yet sent, so not yet
    delivered) or, for an event settled at once (invalid, closed, disabled, ``sync_mode``,
    a full queue), that final answer (``queued=False``).
    """

    __slots__ = ("_books", "_item")

    def __init__(self, item: Tracked, books: Optional[_Books], **fields: Any) -> None:
        super().__init__(**fields)
        self._item = item  # the event's record in the pipeline
        self._books = books  # the ledger that will resolve it

    @property
    def final(self) -> Optional[Result]:
        """The final outcome if the event has one yet, else None."""
        return self._item._final

    @property
    def _kept(self) -> int:
        return self._item._kept

    def done(self) -> bool:
        """True once the event has its final outcome."""
        return self._item._final is not None

    def wait(self, timeout_s: Optional[float] = None) -> Result:
        """Block until the event's final outcome, at most ``timeout_s``; never raises.

        This gives the vendor SDK's meaning of ``success``: the API accepted the event.

        Args:
            timeout_s: the longest to wait, in seconds. None (the default) waits without a
                bound; negative, NaN or non-numeric values do not wait; huge ones are
                clamped. An event already settled returns at once.

        Returns:
            The final ``Result``: ``success`` True for ``delivered`` (2xx) and ``duplicate``
            (409, already recorded); False for ``rejected``, ``failed``, ``dropped`` and
            ``spooled``, with ``status_code``, ``error`` and ``details`` saying why;
            ``outcome`` and ``reason`` name it. If the deadline passes first, or the API
            refuses the token (nothing can be sent until it accepts one, so ``wait`` returns
            at once): a Result with ``success=False``, ``queued=True``, ``outcome=None``,
            ``message="pending"`` and an ``error`` saying the event is still pending and
            why (it stays on its way).
        """
        # Any timeout value is fine: None waits without a bound; inf and huge are clamped;
        # negative, NaN and non-numbers mean 0 (a garbage timeout must not hang a caller).
        bound = None if timeout_s is None else wait_budget(timeout_s, 0.0)
        item = self._item
        if item._final is None and self._books is not None:
            self._books.wait_final(item, bound)
        final = item._final
        if final is not None:
            return final
        if self._books is not None and self._books.refusing():
            error = (
                "not sent: the API refused the token (HTTP 401); the event is still pending "
                "and goes once a token is accepted"
            )
        elif bound is not None:
            error = f"no final outcome within {bound:g} s; the event is still pending"
        else:
            error = "no final outcome yet; the event is still pending"
        return Result(
            success=False,
            queued=True,
            message="pending",
            error=error,
            event_id=self.event_id,
        )


class FlushResult(_ReadOnly):
    """Counts by outcome over the client's life, what is still pending, and whether time ran out.

    A read-only dict (it serialises as it prints) with the same names as attributes.
    Truthy when the call finished in time: nothing it waited for is still pending and its
    deadline was not hit.

    From ``flush()``: ``pending`` counts the events tracked before the call that still have
    no outcome, and ``timed_out`` is ``pending > 0``. From ``close()``: the counts are taken
    after close has settled what it gave up on, so ``dropped`` (or ``spooled``, with a
    spool) includes those, ``pending`` is what is really left (0 unless an event raced in
    while closing), and ``timed_out`` says whether close gave up on events still pending
    (its deadline passed, or the API refused the token, so nothing could be sent).
    """

    __slots__ = ()

    def __init__(
        self,
        delivered: int,
        duplicate: int,
        rejected: int,
        failed: int,
        dropped: int,
        pending: int,
        timed_out: bool,
        spooled: int = 0,
    ) -> None:
        dict.__init__(
            self,
            delivered=delivered,
            duplicate=duplicate,
            rejected=rejected,
            failed=failed,
            dropped=dropped,
            pending=pending,
            timed_out=timed_out,
            spooled=spooled,
        )

    def _count(self, key: str) -> int:
        return int(dict.__getitem__(self, key))

    @property
    def delivered(self) -> int:
        """Events the server accepted."""
        return self._count("delivered")

    @property
    def duplicate(self) -> int:
        """Events the server already had (409): not errors."""
        return self._count("duplicate")

    @property
    def rejected(self) -> int:
        """Events refused, here (invalid) or by the server; never retried."""
        return self._count("rejected")

    @property
    def failed(self) -> int:
        """Events that ran out of retries, or got an answer the client cannot act on."""
        return self._count("failed")

    @property
    def dropped(self) -> int:
        """Events never sent: queue full, closed, shutdown deadline, disabled."""
        return self._count("dropped")

    @property
    def pending(self) -> int:
        """Events that still have no outcome when the call returned (see the class docstring)."""
        return self._count("pending")

    @property
    def timed_out(self) -> bool:
        """True when the call gave up with events still pending.

        For ``flush()``, its deadline passed. For ``close()``, its deadline passed or the
        API refused the token; those events were then dropped or spooled (and counted there).
        """
        return bool(dict.__getitem__(self, "timed_out"))

    @property
    def spooled(self) -> int:
        """Events saved in the on-disk spool for a later replay."""
        return self._count("spooled")

    def __bool__(self) -> bool:
        return self.pending == 0 and not self.timed_out

    def __repr__(self) -> str:
        return f"FlushResult({', '.join(f'{k}={v!r}' for k, v in self.items())})"

    def __reduce__(self) -> tuple[Any, ...]:
        return FlushResult, tuple(self.values())


class Stats(TypedDict):
    """What ``CMSClient.stats()`` returns: a snapshot, a plain (JSON-ready) dict.

    Counts cover the client's life in this process;
    ``tracked + replayed == delivered + duplicate + rejected + failed + dropped + spooled
    + pending`` always holds.
    """

    tracked: int  # track_* calls in this process
    replayed: int  # events this process took from the on-disk spool
    delivered: int
    duplicate: int
    rejected: int
    failed: int
    dropped: int
    spooled: int
    pending: int  # no outcome yet: queued, scheduled, parked for a retry or in flight
    reasons: dict[str, dict[str, int]]  # outcome -> reason -> count
    status_codes: dict[str, int]  # HTTP status -> final answers with it
    queue_depth: int  # events waiting in the queue
    scheduled: int  # events the senders hold: waiting their turn, parked, in flight
    in_flight: int  # requests being sent now
    circuit: Literal["closed", "open", "probing", "unauthorized"]
    circuit_since: float  # time.time() of the last change of circuit state
    circuit_cause: Optional[str]  # why it opened (None while closed)
    rate_limited: bool  # a 429 paused sending
    rate_limited_for_s: float  # how much longer the pause lasts
    uncharged_attempts: int  # failed requests not counted against their event's retries
    spool_path: Optional[str]  # None without a usable spool
    spool_dropped: int  # events dropped because the spool was full
    spool_write_ahead_misses: int  # write-ahead events kept in memory only (busy, error)
    spool_errors: int  # events whose row could not be stored (encoding, SQLite)
    spool_settle_misses: int  # settle batches the spool could not take in time
    # Fleet mode (redis_url): the link, members, fleet queue, who paused it; else None.
    fleet: Optional[dict[str, Any]]
    closed: bool
