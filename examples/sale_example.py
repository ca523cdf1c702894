#!/usr/bin/env python3
"""Track a sale, the vendor SDK's way, and wait for the API's answer.

Run it against the local emulator (it accepts the token ``test-token``)::

    cms-shipper emulator --port 8080                      # in one terminal
    export CMS_HOST=http://127.0.0.1:8080 CMS_BEARER_TOKEN=test-token
    python examples/sale_example.py                      # in another

``amount`` is an int number of cents (4999 = $49.99); a float is refused at once with
a message that says so. Run it twice against the same emulator and the second sale
comes back as a duplicate (409: that ``invoice_id`` is already recorded), which counts
as success, not as an error.
"""

import os

from cms_shipper import CMSClient

# Get Bearer token from environment; the API address comes from CMS_HOST (default
# https://api.cme.sh), which the client reads by itself.
bearer_token = os.environ.get("CMS_BEARER_TOKEN")

# Create client
client = CMSClient(token=bearer_token)

# Track a sale. The click id is the one lead_example.py tracked for user_42 (the vendor
# docs use "id_123" here): a sale whose click id differs from the click the API already
# holds for that customer is an attribution conflict, so the two examples agree.
response = client.track_sale(
    click_id="5e6e1650-5641-4a2b-bec6-218288a86dbf",
    event_name="purchase_completed",
    customer_external_id="user_42",
    invoice_id="inv_987",
    amount=4999,  # amount in cents ($49.99)
    currency="USD",
    customer_name="John Doe",
    customer_email="john@example.com",
)

print(response)

# track_sale returned at once ("queued"); wait (bounded) for the API's answer.
answer = response.wait(timeout_s=10.0)
print(answer)

if answer.success:
    print(f"Sale tracked ({answer.outcome}): {answer.data}")
else:
    print(f"Error: {answer.error}")

client.close(timeout_s=5.0)
