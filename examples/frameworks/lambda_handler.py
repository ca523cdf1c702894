"""An AWS Lambda handler (API Gateway HTTP API event): track, then flush before returning."""

import json
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
