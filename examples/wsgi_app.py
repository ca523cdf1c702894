#!/usr/bin/env python3
"""A small Flask app that tracks conversions from its request handlers without waiting.

Run it against the local emulator (it accepts the token ``test-token``); Flask comes
with ``pip install -e '.[examples]'``::

    cms-shipper emulator                                  # in one terminal (port 8787)
    export CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token
    python examples/wsgi_app.py                          # Flask's dev server on :5000

    # a visitor who came through a short link carries the click id in the cms_rf cookie
    curl -X POST --cookie cms_rf=clk_wsgi_example -d user_id=wsgi_example_user \
        -d email=jane@example.com http://127.0.0.1:5000/signup
    curl -X POST -d user_id=wsgi_example_user -d invoice_id=inv_wsgi_example \
        -d amount_cents=4999 -d currency=USD http://127.0.0.1:5000/checkout

Under a production server: ``gunicorn --chdir examples wsgi_app:app`` (the module
exposes ``app``). ``/signup`` sets up deferred attribution (click id from the ``cms_rf`` cookie,
else the ``cms_rf`` query parameter); ``/checkout`` tracks a sale that the API
attributes through that association. Both answer at once: ``track_*`` only queues.
"""

import os
from typing import Any, Dict, Optional, Tuple

from flask import Flask, jsonify, request

from cms_shipper import CMSClient, TrackResult

# The most the process waits at exit for events still being delivered.
SHUTDOWN_TIMEOUT_S = 5.0

app = Flask(__name__)

# ONE client per process, created at import: it is thread-safe, its worker threads start
# on the first event, and it rebuilds its threads and connections by itself in a worker
# process forked from a preloading master (gunicorn --preload). The token comes from
# CMS_BEARER_TOKEN and the API address from CMS_HOST.
#
# Shutdown: the client registers its own atexit hook, which calls
# close(timeout_s=shutdown_timeout_s) at interpreter exit, so events still queued when
# the dev server stops (Ctrl-C) or a gunicorn worker exits normally (after SIGTERM) are
# delivered within SHUTDOWN_TIMEOUT_S and never hold the exit up longer; what is left is
# counted and logged in one warning line. A second atexit.register(client.close) here
# would add nothing. A worker that ends without running atexit handlers (os._exit,
# SIGKILL, some uWSGI set-ups) needs client.close() called from the server's own
# shutdown hook instead.
client = CMSClient(shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)


def _form() -> Dict[str, Any]:
    """The request's fields, from a JSON body or a form."""
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else request.form.to_dict()


def _click_id() -> Optional[str]:
    """The short link's click id: the ``cms_rf`` cookie, else the ``cms_rf`` query parameter."""
    return request.cookies.get("cms_rf") or request.args.get("cms_rf") or None


def _tracking(response: TrackResult) -> Dict[str, Any]:
    """What to tell our own caller about the tracking call (never the token)."""
    return {"queued": response.success, "event_id": response.event_id, "error": response.error}


@app.post("/signup")
def signup() -> Tuple[Any, int]:
    """Create the account, then set up deferred attribution if the visitor came via a link."""
    form = _form()
    user_id = form.get("user_id")
    if not user_id:
        return jsonify(error="user_id is required"), 400
    # ... create the account here ...
    click_id = _click_id()
    if click_id is None:
        # No click id: the visitor did not come through a short link, nothing to attribute.
        return jsonify(user_id=user_id, tracking=None), 201
    response = client.track_lead(
        click_id=click_id,
        event_name="sign_up",
        customer_external_id=user_id,
        customer_name=form.get("name"),
        customer_email=form.get("email"),
        mode="deferred",
    )
    # An invalid event (say a malformed email) is reported in the result, never raised,
    # and must not fail the signup itself.
    return jsonify(user_id=user_id, tracking=_tracking(response)), 201


@app.post("/checkout")
def checkout() -> Tuple[Any, int]:
    """Take the payment, then track the sale; the API attributes it to the stored click."""
    form = _form()
    try:
        amount_cents = int(form.get("amount_cents", ""))
    except ValueError:
        return jsonify(error="amount_cents must be an integer number of cents"), 400
    # ... take the payment here ...
    response = client.track_sale(
        event_name="purchase_completed",
        customer_external_id=form.get("user_id"),
        invoice_id=form.get("invoice_id"),
        amount=amount_cents,
        currency=form.get("currency", "USD"),
    )
    return jsonify(invoice_id=form.get("invoice_id"), tracking=_tracking(response)), 200


if __name__ == "__main__":
    # Flask's development server; threaded, like a real server, so handlers run concurrently.
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
