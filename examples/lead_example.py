#!/usr/bin/env python3
"""Track a lead, the vendor SDK's way, and wait for the API's answer.

Run it against the local emulator (it accepts the token ``test-token``)::

    cms-shipper emulator                                  # in one terminal (port 8787)
    export CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token
    python examples/lead_example.py                      # in another

``track_lead`` validates the event, queues it and returns at once: the response says
"queued". ``wait()`` then blocks (at most 10 s) for the API's final answer, which the
script prints and turns into its exit status: 0 when the lead was delivered, 1 when it
was rejected, failed or got no answer in time. (Without the ``wait()``, the client's exit
hook would still send the lead at exit, within ``shutdown_timeout_s``; but the script
could not tell how it went.)

The customer and click ids are this example's own, so it agrees with the other examples
and with the documented command-line examples on one emulator, however often it runs.
"""

import os
import sys

from cms_shipper import CMSClient

# The token comes from CMS_BEARER_TOKEN; the API address from CMS_HOST (default
# https://api.cme.sh), which the client reads by itself.
bearer_token = os.environ.get("CMS_BEARER_TOKEN")
client = CMSClient(token=bearer_token)

# Standard lead with complete payload
response = client.track_lead(
    click_id="5e6e1650-5641-4a2b-bec6-218288a86dbf",
    event_name="signup_started",
    customer_external_id="lead_example_user",
    customer_name="John Doe",
    customer_email="john@example.com",
)

print(response)  # {'success': True, 'queued': True, ...}: accepted, not yet sent

# track_lead returned at once; wait (bounded) for the API's answer.
answer = response.wait(timeout_s=10.0)
print(answer)

if answer.success:
    print(f"Lead tracked: {answer.outcome}, HTTP {answer.status_code}")
else:
    print(f"Error: {answer.error}")
    sys.exit(1)
