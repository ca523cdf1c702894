"""Turn what happened to an event into its final ``Result``, then log it and call back.

Bodies are parsed leniently: the API answers ``{"status": true, "data": ...}``,
``{"success": false, "error": ..., "details": ...}``, other shapes, or plain text.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from typing import Any, Callable, Optional, Protocol

from cms_shipper._config import Settings
from cms_shipper._events import Event
from cms_shipper._log import MAX_ERROR_TEXT, RateLimitedLog, one_line
from cms_shipper.errors import ValidationError
from cms_shipper.results import Outcome, Reason, Result

__all__ = ["Reporter", "dropped", "from_reply", "invalid", "unauthorized", "unsendable"]

_SUCCESS = (Outcome.DELIVERED, Outcome.DUPLICATE)


class Reply(Protocol):
    """What ``from_reply`` reads of an attempt's answer (the transport's ``Reply``)."""

    @property
    def status_code(self) -> Optional[int]: ...

    @property
    def body(self) -> Any: ...

    @property
    def error(self) -> Optional[str]: ...


_MAX_DETAILS = 20  # fields of a server's "details" kept in a result
_MAX_DETAIL_TEXT = 200
_MAX_LOGGED_RULES = 1000  # characters of a result's details shown in its log line
_OTHER_FIELDS = "(other fields)"  # the kind counted when too many kinds are remembered


def _text(value: Any, limit: int = MAX_ERROR_TEXT) -> str:
    """A server's value as bounded, single-line text (it reaches logs and results)."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=str)[: limit + 1]
    except Exception:  # nested past the recursion limit, or stranger
        text = f"<{type(value).__name__}>"
    return one_line(text, limit)


def _body_parts(body: Any) -> tuple[Any, Optional[str], Optional[dict[str, str]]]:
    """(data, error, details) from any body shape; the server's text bounded and one line."""
    if isinstance(body, dict):
        error = body.get("error") or body.get("message")
        details = body.get("details")
        data = body.get("data", body)
        kept = list(details.items())[:_MAX_DETAILS] if isinstance(details, dict) else None
        return (
            data,
            _text(error) if error is not None else None,
            {_text(k, 60): _text(v, _MAX_DETAIL_TEXT) for k, v in kept} if kept else None,
        )
    text = body if isinstance(body, str) else None
    return body, (one_line(text) if text else None), None


def from_reply(
    event: Event,
    reply: Reply,
    outcome: Outcome,
    reason: Reason,
    attempts: int,
    *,
    spent_s: Optional[float] = None,
) -> Result:
    """The final result of an event the server answered (or never answered).

    ``spent_s``: for an event given up on, the seconds spent trying (said in ``error``).
    """
    data, error, details = _body_parts(reply.body)
    if outcome is Outcome.DELIVERED:
        return Result(
            success=True,
            status_code=reply.status_code,
            message="delivered",
            data=data,
            event_id=event.event_id,
            outcome=outcome,
            reason=reason,
            event=event,
        )
    if outcome is Outcome.DUPLICATE:
        # A success in every view: the server's body ({"success": false, "error": "Duplicate
        # invoiceId"}) is not passed on as data; its words go into the message.
        said = f" ({error})" if error else ""
        return Result(
            success=True,
            status_code=reply.status_code,
            message=f"duplicate: already recorded{said}",
            event_id=event.event_id,
            outcome=outcome,
            reason=reason,
            event=event,
        )
    if reply.error is not None:
        error = reply.error
    elif error is None:
        error = f"HTTP {reply.status_code}"
    if outcome is Outcome.FAILED and reason is Reason.RETRIES_EXHAUSTED:
        spent = f" in {spent_s:.1f} s" if spent_s is not None else ""
        error = f"{error} (gave up after {attempts} attempt{'s' if attempts != 1 else ''}{spent})"
    return Result(
        success=False,
        status_code=reply.status_code,
        message=str(outcome),
        data=None,
        error=error,
        details=details,
        event_id=event.event_id,
        outcome=outcome,
        reason=reason,
        event=event,
    )


def unauthorized(event: Event) -> Result:
    """An event not sent because the API refuses the token (401): kept if it can be."""
    return dropped(
        event,
        Reason.UNAUTHORIZED,
        "the API refused the token (HTTP 401); not sent",
    )


def dropped(event: Optional[Event], reason: Reason, error: str, *, success: bool = False) -> Result:
    """The final result of an event that was never sent."""
    return Result(
        success=success,
        message=f"dropped: {reason}",
        error=error,
        event_id=event.event_id if event else None,
        outcome=Outcome.DROPPED,
        reason=reason,
        event=event,
    )


def invalid(exc: ValidationError) -> Result:
    """The final result of an event that failed validation (never queued)."""
    return Result(
        success=False,
        status_code=422,
        message="invalid",
        error=str(exc),
        details={exc.field: exc.rule},
        outcome=Outcome.REJECTED,
        reason=Reason.INVALID,
    )


def unsendable(event: Event, exc: BaseException) -> Result:
    """The final result of a validated event whose body cannot be encoded (never sent)."""
    return Result(
        success=False,
        status_code=422,
        message="invalid",
        error=f"the event cannot be encoded as JSON ({type(exc).__name__})",
        event_id=event.event_id,
        outcome=Outcome.REJECTED,
        reason=Reason.INVALID,
        event=event,
    )


class Reporter:
    """Logs each final outcome (rate-limited) and hands it to the user's callback.

    Callbacks run on one dedicated daemon thread, in the order outcomes were reached, so
    a slow or blocking callback never holds up a sender, a flush or ``close()``'s
    deadline, and may itself call ``track_*``, ``flush``, ``close``, ``wait`` or ``stats``.
    Outcomes decided inside ``track_*`` (invalid, closed, disabled, ``sync_mode``) are
    called back in the caller's thread before it returns (``inline``).
    """

    def __init__(self, settings: Settings, log: Optional[RateLimitedLog] = None) -> None:
        self._log = log or RateLimitedLog()
        self._callbacks: dict[Optional[Outcome], Optional[Callable[[Any], None]]] = {
            Outcome.DELIVERED: settings.on_success,
            Outcome.DUPLICATE: settings.on_success,
            Outcome.REJECTED: settings.on_error,
            Outcome.FAILED: settings.on_error,
            Outcome.DROPPED: settings.on_drop,
        }
        self._calls: deque[tuple[Callable[[Any], None], Result]] = deque()
        self._cond = threading.Condition(threading.RLock())  # re-entrant: signal handlers
        self._busy = False
        self._stopping = False  # close(): the thread ends once nothing is queued
        self._thread: Optional[threading.Thread] = None

    def report(self, final: Result, *, inline: bool = False) -> None:
        """Log and call back (now if ``inline``, else on the callback thread); never raises."""
        self._log_outcome(final)
        callback = self._callbacks.get(final.outcome) if final.outcome else None
        if callback is None:
            return
        if inline:
            self._call(callback, final)
            return
        with self._cond:
            self._calls.append((callback, final))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cms-shipper-callbacks", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def on_callback_thread(self) -> bool:
        """True when called from a callback (on the callback thread)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for queued callbacks to run; returns how many have not."""
        if self.on_callback_thread():
            return len(self._calls)  # a callback cannot wait for itself and those behind it
        with self._cond:
            self._cond.wait_for(lambda: not self._calls and not self._busy, timeout_s)
            return len(self._calls) + self._busy

    def stop(self) -> None:
        """Let the callback thread end once its queue is empty (a later report restarts one)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._calls) or self._stopping)
                if not self._calls:
                    self._thread = None  # stopping, nothing left: a late report starts anew
                    return
                callback, final = self._calls.popleft()
                self._busy = True
            try:
                self._call(callback, final)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _call(self, callback: Callable[[Any], None], final: Result) -> None:
        try:
            callback(final)
        except Exception:
            self._log.log(
                logging.ERROR,
                ("callback", final.outcome),
                "the %s callback raised; the shipper carries on",
                final.outcome,
                exc_info=True,
            )

    def _log_outcome(self, final: Result) -> None:
        outcome, reason = final.outcome, final.reason
        # Shutdown drops are summed up in close()'s single warning line instead.
        if outcome is Outcome.DELIVERED or reason in (Reason.DISABLED, Reason.SHUTDOWN):
            level = logging.DEBUG
        elif outcome in (Outcome.DUPLICATE, Outcome.SPOOLED):
            level = logging.INFO
        else:
            level = logging.WARNING
        if not self._log.enabled(level):
            return  # nobody listens at this level: build no message
        # One kind of problem per outcome, reason, status and the fields named: 100 bad
        # amounts and 100 bad emails are two kinds, each with its own first line.
        fields = ",".join(sorted(final.details)) if final.details else None
        kind = (outcome, reason, final.status_code)
        event = final.event
        self._log.log(
            level,
            (*kind, fields),
            "%s event %s %s (%s%s)%s",
            event.endpoint if event else "invalid",
            final.event_id or "-",
            outcome,
            reason,
            f", HTTP {final.status_code}" if final.status_code else "",
            _said(final),
            overflow_key=(*kind, _OTHER_FIELDS) if fields else None,
        )


def _said(final: Result) -> str:
    """``": error: field: rule; ..."``: the error and the field rules it does not already name."""
    error = final.error or ""
    rules = "; ".join(
        named
        for named in (f"{k}: {v}" for k, v in (final.details or {}).items())
        if named not in error
    )
    rules = one_line(rules, _MAX_LOGGED_RULES)
    text = f"{error}: {rules}" if error and rules else error or rules
    return f": {text}" if text else ""
