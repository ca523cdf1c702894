"""A local CutMeShort API emulator, standard library only, for tests, examples and demos.

    from cms_shipper.emulator import Emulator

    with Emulator(token="test-token") as emu:          # serves on a free loopback port
        client = CMSClient(token="test-token", host=emu.url)
        client.track_lead("signup", "user_42", click_id="clk_1")
        client.flush(5.0)
        assert emu.events[0].payload["eventName"] == "signup"
        emu.outage(2.0)                                 # every /track answers 503 for 2 s

It enforces auth, field validation (422 with details), deferred click associations and
invoice dedup (409), and a per-token rate limit (429 with Retry-After); it injects
latency, random errors, outages and dropped connections; and it records what it got.
Over HTTP, without auth: ``GET /_emulator/events``, ``GET /_emulator/requests``,
``POST /_emulator/reset``, ``GET /_emulator/health``.
"""

from cms_shipper.emulator._emulator import Emulator
from cms_shipper.emulator._state import RecordedEvent, RequestLog

__all__ = ["Emulator", "RecordedEvent", "RequestLog"]
