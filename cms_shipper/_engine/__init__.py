"""The delivery engine of one process: when to send, how to send, what the API allows.

``queue`` (bounded, lock-light) -> ``scheduler`` (a FIFO per customer, one request in flight
each) -> ``dispatcher`` (the sender threads) -> ``health`` (the shared 429 pause and outage
circuit) -> ``retry`` (an event's own failures, tenacity's pieces) -> ``transport`` (one
POST over pooled connections, with ``deadline``'s watchdog) and ``delivery`` (one attempt
end to end, and ``sync_mode``'s loop); ``engine`` puts them together.

The engine hands each final outcome to a ``settle`` callable and asks durability only
through the port (``cms_shipper._durability``); it never imports the spool, the books'
settling, the lifecycle or the CLI.
"""

from cms_shipper._engine.engine import Engine
from cms_shipper._engine.health import GateState, HealthGate, SharedHealth
from cms_shipper._engine.queue import EventQueue

__all__ = ["Engine", "EventQueue", "GateState", "HealthGate", "SharedHealth"]
