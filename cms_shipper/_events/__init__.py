"""Events: build one from ``track_*``'s arguments and check every field (``build``,
``checks``). Validation is total: any value gives an ``Event`` or a ``ValidationError``
naming the field and the rule. Imports only the shared core.
"""

from cms_shipper._events.build import Event, build_lead, build_sale, event_of
from cms_shipper._events.checks import check_amount

__all__ = ["Event", "build_lead", "build_sale", "check_amount", "event_of"]
