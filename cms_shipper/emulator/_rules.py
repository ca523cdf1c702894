"""The API's answers and its business rules: deferred associations and invoice dedup.

Not thread-safe on its own: ``State`` calls it with its lock held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Set, Tuple

from cms_shipper.emulator._validation import Endpoint, validate

__all__ = ["Answer", "Rules", "error"]

_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}

_NO_ASSOCIATION = "required: no deferred association for this customer"
_CONFLICT = "attribution conflict: the customer is associated with a different clickId"


@dataclass(frozen=True)
class Answer:
    """What to send back: a status and JSON body, or ``status=None`` to close unanswered."""

    status: Optional[int]
    body: Optional[Dict[str, Any]] = None
    headers: Tuple[Tuple[str, str], ...] = ()


def error(
    status: int,
    message: str,
    headers: Tuple[Tuple[str, str], ...] = (),
    details: Optional[Dict[str, str]] = None,
) -> Answer:
    """An error answer in the API's usual shape."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "error")
    body: Dict[str, Any] = {"success": False, "error": message, "type": kind, "statusCode": status}
    if details is not None:
        body["details"] = details
    return Answer(status, body, headers)


def _invalid(details: Dict[str, str]) -> Answer:
    return error(422, "Validation failed", details=details)


class Rules:
    """Deferred clickId associations per customer and the set of recorded invoice ids."""

    def __init__(self) -> None:
        self._associations: Dict[str, str] = {}
        self._invoices: Set[str] = set()

    def clear(self) -> None:
        """Forget every association and invoice."""
        self._associations.clear()
        self._invoices.clear()

    def check(self, endpoint: Endpoint, payload: Any) -> Optional[Answer]:
        """The refusal (400, 409, 422) for this body, or None when it would be accepted."""
        if not isinstance(payload, dict):
            return error(400, "Request body must be a JSON object")
        details = validate(endpoint, payload)
        if details:
            return _invalid(details)
        if endpoint == "lead":
            return self._check_lead(payload)
        return self._check_sale(payload)

    def remember(self, endpoint: Endpoint, payload: Mapping[str, Any]) -> None:
        """Update the state for an accepted (recorded) event."""
        customer, click_id = payload["customerExternalId"], payload.get("clickId")
        if endpoint == "sale":
            self._invoices.add(payload["invoiceId"])
        elif click_id is not None:
            # Only leads create associations; a sale's clickId is taken at its word.
            self._associations.setdefault(customer, click_id)

    def _check_lead(self, payload: Mapping[str, Any]) -> Optional[Answer]:
        stored = self._associations.get(payload["customerExternalId"])
        click_id = payload.get("clickId")
        if click_id is None:
            return _invalid({"clickId": _NO_ASSOCIATION}) if stored is None else None
        if stored is not None and stored != click_id:
            return _invalid({"clickId": _CONFLICT})
        if stored is not None and payload.get("mode") == "deferred":
            return error(409, "Duplicate deferred association")
        return None

    def _check_sale(self, payload: Mapping[str, Any]) -> Optional[Answer]:
        # Dedup first: a retried sale must learn it is already recorded (409), whatever else.
        if payload["invoiceId"] in self._invoices:
            return error(409, "Duplicate invoiceId")
        stored = self._associations.get(payload["customerExternalId"])
        click_id = payload.get("clickId")
        if click_id is None and stored is None:
            return _invalid({"clickId": _NO_ASSOCIATION})
        if click_id is not None and stored is not None and stored != click_id:
            return _invalid({"clickId": _CONFLICT})
        return None
