"""Turn what happened to an event into its final ``Result``, then log it and call back.

Bodies are parsed leniently: the API answers ``{"status": true, "data": ...}``,
``{"success": false, "error": ..., "details": ...}``, other shapes, or plain text.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from cms_shipper._config import Settings
from cms_shipper._events import Event
from cms_shipper._log import RateLimitedLog
from cms_shipper._transport import Reply
from cms_shipper.errors import ValidationError
from cms_shipper.results import Outcome, Reason, Result

__all__ = ["Reporter", "dropped", "from_reply", "invalid", "unsendable"]

_SUCCESS = (Outcome.DELIVERED, Outcome.DUPLICATE)


def _body_parts(body: Any) -> tuple[Any, Optional[str], Optional[dict[str, str]]]:
    """(data, error, details) from any body shape."""
    if isinstance(body, dict):
        error = body.get("error") or body.get("message")
        details = body.get("details")
        data = body.get("data", body)
        return (
            data,
            str(error) if error is not None else None,
            {str(k): str(v) for k, v in details.items()} if isinstance(details, dict) else None,
        )
    text = body if isinstance(body, str) else None
    return body, (text or None), None


def from_reply(
    event: Event, reply: Reply, outcome: Outcome, reason: Reason, attempts: int
) -> Result:
    """The final result of an event the server answered (or never answered)."""
    data, error, details = _body_parts(reply.body)
    if outcome in _SUCCESS:
        message = "delivered" if outcome is Outcome.DELIVERED else "duplicate: already recorded"
        return Result(
            success=True, status_code=reply.status_code, message=message, data=data,
            event_id=event.event_id, outcome=outcome, reason=reason, event=event,
        )  # fmt: skip
    if reply.error is not None:
        error = reply.error
    elif error is None:
        error = f"HTTP {reply.status_code}"
    if outcome is Outcome.FAILED and reason is Reason.RETRIES_EXHAUSTED:
        error = f"{error} (gave up after {attempts} attempt{'s' if attempts != 1 else ''})"
    return Result(
        success=False, status_code=reply.status_code, message=str(outcome), data=None,
        error=error, details=details, event_id=event.event_id, outcome=outcome, reason=reason,
        event=event,
    )  # fmt: skip


def dropped(event: Optional[Event], reason: Reason, error: str, *, success: bool = False) -> Result:
    """The final result of an event that was never sent."""
    return Result(
        success=success, message=f"dropped: {reason}", error=error,
        event_id=event.event_id if event else None, outcome=Outcome.DROPPED, reason=reason,
        event=event,
    )  # fmt: skip


def invalid(exc: ValidationError) -> Result:
    """The final result of an event that failed validation (never queued)."""
    return Result(
        success=False, status_code=422, message="invalid", error=str(exc),
        details={exc.field: exc.rule}, outcome=Outcome.REJECTED, reason=Reason.INVALID,
    )  # fmt: skip


def unsendable(event: Event, exc: BaseException) -> Result:
    """The final result of a validated event whose body cannot be encoded (never sent)."""
    return Result(
        success=False, status_code=422, message="invalid",
        error=f"the event cannot be encoded as JSON ({type(exc).__name__})",
        event_id=event.event_id, outcome=Outcome.REJECTED, reason=Reason.INVALID, event=event,
    )  # fmt: skip


class Reporter:
    """Logs each final outcome (rate-limited) and hands it to the user's callback."""

    def __init__(self, settings: Settings, log: Optional[RateLimitedLog] = None) -> None:
        self._log = log or RateLimitedLog()
        self._callbacks: dict[Optional[Outcome], Optional[Callable[[Any], None]]] = {
            Outcome.DELIVERED: settings.on_success,
            Outcome.DUPLICATE: settings.on_success,
            Outcome.REJECTED: settings.on_error,
            Outcome.FAILED: settings.on_error,
            Outcome.DROPPED: settings.on_drop,
        }

    def report(self, final: Result) -> None:
        """Log and call back; never raises (a raising callback is logged)."""
        self._log_outcome(final)
        callback = self._callbacks.get(final.outcome) if final.outcome else None
        if callback is None:
            return
        try:
            callback(final)
        except Exception:
            self._log.log(
                logging.ERROR, f"callback:{final.outcome}",
                "cms_shipper: the %s callback raised; the shipper carries on", final.outcome,
                exc_info=True,
            )  # fmt: skip

    def _log_outcome(self, final: Result) -> None:
        outcome, reason = final.outcome, final.reason
        # Shutdown drops are summed up in close()'s single warning line instead.
        if outcome is Outcome.DELIVERED or reason in (Reason.DISABLED, Reason.SHUTDOWN):
            level = logging.DEBUG
        elif outcome in (Outcome.DUPLICATE, Outcome.SPOOLED):
            level = logging.INFO
        else:
            level = logging.WARNING
        event = final.event
        self._log.log(
            level, f"{outcome}:{reason}:{final.status_code}",
            "cms_shipper: %s event %s %s (%s%s)%s",
            event.endpoint if event else "invalid", final.event_id or "-", outcome, reason,
            f", HTTP {final.status_code}" if final.status_code else "",
            f": {final.error}" if final.error else "",
        )  # fmt: skip
