"""A local CutMeShort API emulator, standard library only, for tests, examples and demos.

    from cms_shipper.emulator import Emulator

    with Emulator(token="test-token") as emu:          # serves on a free loopback port
        client = CMSClient(token="test-token", host=emu.url)
        client.track_lead("signup", "user_42", click_id="clk_1")
        client.flush(5.0)
        assert emu.events[0].payload["eventName"] == "signup"
        emu.outage(2.0)                                 # every /track answers 503 for 2 s

It enforces auth, field validation (422 with details), deferred click associations and
invoice dedup (409), and a per-token rate limit (429, with Retry-After unless
``rate_limit_retry_after=False``); and it records what it got. Faults (``cms-shipper
emulator`` flags in brackets):

- ``latency_s``, ``error_rate``/``error_status`` [--latency-ms, --error-rate, --error-status];
- ``outage(duration_s, status=, mode=)``: "status" answers an error, "reset" closes each
  connection unanswered, "refuse" stops listening (ECONNREFUSED) and listens on the same
  port after; ``end_outage()``, ``outage_active`` [--outage-after-s, --outage-s,
  --outage-mode, --outage-status];
- ``fail_customer(id, status=, count=, mode=)``, ``clear_customer_failures(id=None)``: one
  customer's requests fail, unrecorded [--fail-customer, --fail-customer-status];
- ``drop_connection_after_record(count)``: recorded, then closed unanswered;
- reply faults on every /track answer, any status: ``trickle_interval_s`` (one body byte
  per interval), ``reply_padding_bytes`` (a streamed "padding" field), ``endless_reply``
  (chunked, never ends), ``nested_reply_depth`` (``[[[...]]]``) [--trickle-interval-s,
  --reply-padding-bytes, --endless-reply, --nested-reply-depth].

``log_requests=True`` logs one INFO line per /track request (method, path, status,
customerExternalId, latency; never the token) on the ``cms_shipper.emulator`` logger
[on by default for ``cms-shipper emulator``; --quiet]. ``token`` is the token it accepts.

Settings go to ``Emulator(...)`` or ``configure(...)``; ``reset()`` ends outages, clears
customer failures and puts the settings back to the constructor's.
Over HTTP, without auth: ``GET /_emulator/events``, ``GET /_emulator/requests``,
``POST /_emulator/reset``, ``GET /_emulator/health``.
"""

from cms_shipper.emulator._emulator import Emulator
from cms_shipper.emulator._state import RecordedEvent, RequestLog

__all__ = ["Emulator", "RecordedEvent", "RequestLog"]
