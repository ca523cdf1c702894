"""The books: every event's one outcome, made, counted, reported and summed up.

``outcomes`` holds the one set of ``Result`` factories and the ``Reporter`` (logs and
callbacks); ``ledger`` counts each event's outcome once and runs the waits; ``settle`` is
the one funnel every outcome goes through (durability, ledger, reporter); ``stats``
assembles ``stats()``. Imports only the shared core and ``_events``.
"""

from cms_shipper._books.ledger import Ledger
from cms_shipper._books.outcomes import (
    Reporter,
    dropped,
    from_reply,
    invalid,
    unauthorized,
    unsendable,
)
from cms_shipper._books.settle import Settler
from cms_shipper._books.stats import build_stats

__all__ = [
    "Ledger",
    "Reporter",
    "Settler",
    "build_stats",
    "dropped",
    "from_reply",
    "invalid",
    "unauthorized",
    "unsendable",
]
