#!/usr/bin/env python3
"""Track a lead, the vendor SDK's way; the client's exit hook delivers it.

Run it against the local emulator (it accepts the token ``test-token``)::

    cms-shipper emulator --port 8080                      # in one terminal
    export CMS_HOST=http://127.0.0.1:8080 CMS_BEARER_TOKEN=test-token
    python examples/lead_example.py                      # in another

``track_lead`` validates the event, queues it and returns at once: the response says
"queued". This script deliberately calls neither ``flush()`` nor ``close()``: at
interpreter exit the client's exit hook sends what is still pending, within
``shutdown_timeout_s`` (5 s by default), so a script that tracks and ends loses nothing.
"""

import os

from cms_shipper import CMSClient

# The token comes from CMS_BEARER_TOKEN; the API address from CMS_HOST (default
# https://api.cme.sh), which the client reads by itself.
bearer_token = os.environ.get("CMS_BEARER_TOKEN")
client = CMSClient(token=bearer_token)

# Standard lead with complete payload
response = client.track_lead(
    click_id="5e6e1650-5641-4a2b-bec6-218288a86dbf",
    event_name="signup_started",
    customer_external_id="user_42",
    customer_name="John Doe",
    customer_email="john@example.com",
)

print(response)

if response.success:
    print("Lead tracking queued: it is delivered in the background, or at exit at the latest")
else:
    print(f"Error: {response.error}")
