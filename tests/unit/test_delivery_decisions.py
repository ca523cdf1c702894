"""Whatever a server answers, one attempt ends in a Step: never a raise, never a stranded event."""

from __future__ import annotations

import threading
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from cms_shipper._engine.delivery import Delivery
from cms_shipper._engine.dispatcher import Action
from cms_shipper._engine.health import HealthGate
from cms_shipper._engine.retry import RetryPolicy
from cms_shipper._engine.transport import Reply
from cms_shipper._events.build import build_lead
from cms_shipper.results import Outcome, Tracked

_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = st.sampled_from(["error", "message", "details", "data", "success"])
_BODIES = st.one_of(_JSON, st.text(max_size=200), st.dictionaries(_KEYS, _JSON, max_size=5))


class ScriptedTransport:
    """Answers every send with the reply it is given."""

    def __init__(self) -> None:
        self.reply = Reply(200)

    def send(self, path: str, body: bytes, deadline: Optional[float] = None) -> Reply:
        return self.reply


def _queued(seq: int) -> Tracked:
    event = build_lead(f"evt_{seq}", 0.0, event_name="signup", customer_external_id=f"u{seq % 3}")
    result = Tracked(event)
    result._seq = seq
    return result


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(min_value=100, max_value=599)),
            _BODIES,
            st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
            st.booleans(),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_any_sequence_of_replies_ends_each_attempt_in_a_step(
    replies: list[tuple[Optional[int], Any, Optional[float], bool]],
) -> None:
    transport = ScriptedTransport()
    gate = HealthGate(max_retry_after_s=60.0)
    policy = RetryPolicy(max_attempts=3, max_elapsed_s=60.0, initial_backoff_s=0.1,
                         max_backoff_s=1.0, max_retry_after_s=60.0)  # fmt: skip
    delivery = Delivery(transport, gate, policy, threading.Event())  # type: ignore[arg-type]
    for seq, (status, body, retry_after, unreachable) in enumerate(replies, start=1):
        transport.reply = Reply(status, body, None if status else "ConnectionError: x",
                                retry_after, unreachable and status is None)  # fmt: skip
        ticket, wait = gate.admit()
        if ticket is None:  # the gate holds everybody back: the event waits, it is not lost
            assert wait >= 0.0
            continue
        step = delivery.attempt(_queued(seq), ticket)
        assert step.action in (Action.DONE, Action.PARK, Action.REQUEUE)
        if step.action is Action.PARK:
            assert 0.0 <= step.delay_s <= 60.0
        if step.action is Action.DONE:
            final = step.result
            assert final is not None and final.outcome in tuple(Outcome)
            assert final.error is None or (len(final.error) <= 400 and "\n" not in final.error)
