"""pytest plugin: a ``cms_emulator`` fixture, a running emulator for each test.

Installed with the package (a ``pytest11`` entry point), so no set-up is needed::

    from cms_shipper import CMSClient

    def test_signup_is_tracked(cms_emulator):
        client = CMSClient(token="test-token", host=cms_emulator.url)
        client.track_lead("signup", "user_42", click_id="clk_1")
        assert client.flush(5.0)
        assert cms_emulator.events[0].payload["customerExternalId"] == "user_42"

    def test_survives_an_outage(cms_emulator):
        cms_emulator.outage(status=503)     # or configure(latency_s=..., error_rate=...)
        ...

The fixture yields the started ``Emulator``: ``url``, ``token`` (the ``"test-token"`` it
accepts), ``events``, ``requests``, ``wait_for_events(n, timeout_s)``, and the faults
(``configure(...)``, ``outage(...)``, ``fail_customer(...)``, ``reset()``). It is stopped
after the test. Its request log is off; ``configure(log_requests=True)`` turns it on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cms_shipper.emulator import Emulator

__all__ = ["cms_emulator"]


@pytest.fixture
def cms_emulator() -> Iterator[Emulator]:
    """A started emulator (token ``"test-token"``) on a free loopback port, stopped after."""
    with Emulator() as emulator:
        yield emulator
