"""An AWS Lambda handler (API Gateway HTTP API event): track, then flush before returning.

Deployed, the function's handler is ``lambda_handler.handler``. Locally (``pip install -e .``,
``cms-shipper emulator`` in another terminal), from this directory::

    CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token python lambda_handler.py

That invokes the handler three times (signup with a ``cms_rf`` cookie, verify, purchase)
with events shaped as API Gateway sends them, prints the outcomes and exits 1 unless the
API took every event.
"""

import json
import sys
from typing import Any

from cms_shipper import CMSClient
from cms_shipper.integrations.aws_lambda import click_id_from_event, flush_after

client = CMSClient()  # module level: reused by every invocation of this sandbox


@flush_after(client, timeout_s=2.0)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    body = json.loads(event.get("body") or "{}")
    user = body["user_id"]
    if body.get("action") == "signup":
        click = click_id_from_event(event)
        if click:
            client.track_lead("signup", user, click_id=click, mode="deferred")
    elif body.get("action") == "verify":
        client.track_lead("email_verified", user)
    else:
        client.track_sale("purchase", user, body["invoice_id"], body["amount_cents"], "USD")
    return {"statusCode": 200, "body": json.dumps({"ok": True})}


if __name__ == "__main__":
    user = {"user_id": "lambda_example_user"}
    for body in (
        {**user, "action": "signup"},
        {**user, "action": "verify"},
        {**user, "invoice_id": "inv_lambda_example", "amount_cents": 4999},
    ):
        event = {"cookies": ["cms_rf=clk_lambda_example"], "body": json.dumps(body)}
        print(handler(event, None))  # each invocation ends with a bounded flush
    stats = client.stats()
    taken = stats["delivered"] + stats["duplicate"]  # a duplicate (409) is not an error
    print(f"{taken} of {stats['tracked']} events taken by the API; outcomes: {stats['reasons']}")
    sys.exit(0 if taken == stats["tracked"] else 1)
