#!/usr/bin/env python3
"""Track a sale, the vendor SDK's way, and wait for the API's answer.

Run it against the local emulator (it accepts the token ``test-token``)::

    cms-shipper emulator                                  # in one terminal (port 8787)
    export CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token
    python examples/sale_example.py                      # in another

``amount`` is an int number of cents (4999 = $49.99); a float is refused at once with
a message that says so. Run it twice against the same emulator and the second sale
comes back as a duplicate (409: that ``invoice_id`` is already recorded), which counts
as success, not as an error. The script exits 0 when the sale was delivered (or was a
duplicate), 1 when it was rejected, failed or got no answer within 10 s.
"""

import os
import sys

from cms_shipper import CMSClient

# Get Bearer token from environment; the API address comes from CMS_HOST (default
# https://api.cme.sh), which the client reads by itself.
bearer_token = os.environ.get("CMS_BEARER_TOKEN")

# Create client
client = CMSClient(token=bearer_token)

# Track a sale. The customer, click and invoice ids are this example's own: a sale whose
# click id differs from the click the API already holds for that customer would be an
# attribution conflict, so the examples share no customer.
response = client.track_sale(
    click_id="id_123",
    event_name="purchase_completed",
    customer_external_id="sale_example_user",
    invoice_id="inv_sale_example_987",
    amount=4999,  # amount in cents ($49.99)
    currency="USD",
    customer_name="John Doe",
    customer_email="john@example.com",
)

print(response)

# track_sale returned at once ("queued"); wait (bounded) for the API's answer.
answer = response.wait(timeout_s=10.0)
print(answer)

client.close(timeout_s=5.0)
if answer.success:
    print(f"Sale tracked: {answer.outcome}, HTTP {answer.status_code}")
else:
    print(f"Error: {answer.error}")
    sys.exit(1)
