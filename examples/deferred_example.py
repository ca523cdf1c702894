#!/usr/bin/env python3
"""Deferred lead attribution, the vendor SDK's way: store the click, then follow up.

Run it against the local emulator (it accepts the token ``test-token``)::

    cms-shipper emulator                                  # in one terminal (port 8787)
    export CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token
    python examples/deferred_example.py                  # in another

Step 1 sends the click id with ``mode="deferred"``: the API stores the association
between the click and the customer. Step 2 sends later events with the customer id
only, and the API attributes them to the stored click. The client keeps the events of
one customer in order, also across retries, so the follow-up never overtakes its set-up.
Both calls return at once ("queued"); ``wait()`` then shows the API's own answers, and
the script exits 1 unless both were delivered. Run it again on the same emulator and the
set-up comes back as a duplicate (409: the association is already stored), which counts
as success. The customer id is this example's own, so it agrees with the other examples.
"""

import os
import sys

from cms_shipper import CMSClient

# The token comes from CMS_BEARER_TOKEN; the API address from CMS_HOST (default
# https://api.cme.sh), which the client reads by itself.
bearer_token = os.environ.get("CMS_BEARER_TOKEN")
client = CMSClient(token=bearer_token)

# Step 1: Setup deferred mode - store clickId association
response = client.track_lead(
    click_id="5e6e1650-5641-4a2b-bec6-218288a86dbf",
    event_name="lead_captured",
    customer_external_id="deferred_example_user",
    customer_name="Jane Smith",
    customer_email="jane@example.com",
    mode="deferred",
)

print(response)

# Step 2: Later, track using just customer_external_id (no click_id)
follow_up = client.track_lead(
    event_name="kyc_completed",
    customer_external_id="deferred_example_user",
)

print(follow_up)

# Wait (bounded) for the API's answer to each event: they decide the exit status.
failures = 0
for queued in (response, follow_up):
    answer = queued.wait(timeout_s=10.0)
    print(answer)
    if answer.success:
        print(f"Lead tracked: {answer.outcome}, HTTP {answer.status_code}")
    else:
        print(f"Error: {answer.error}")
        failures += 1

client.close(timeout_s=5.0)
sys.exit(1 if failures else 0)
