"""Flask with the ``CMSShipper`` extension: a deferred lead from the cms_rf cookie, then more.

Run it (``pip install -e '.[examples]'``, ``cms-shipper emulator`` in another terminal),
from this directory::

    CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token flask --app flask_app run
    curl -X POST --cookie cms_rf=clk_flask_example -d user_id=flask_example_user \
        http://127.0.0.1:5000/signup
"""

from flask import Flask, jsonify, request

from cms_shipper.integrations.flask import CMSShipper

app = Flask(__name__)
app.config.from_prefixed_env()  # FLASK_CMS_OPTIONS='{"batch_size": 50}' and the like
cms = CMSShipper(app, shutdown_timeout_s=5.0)  # token/host: app.config or the environment


@app.post("/signup")
def signup():  # type: ignore[no-untyped-def]
    user = request.form["user_id"]
    click = cms.click_id()
    if click:  # came through a short link: store the attribution for later events
        cms.client.track_lead("signup", user, click_id=click, mode="deferred")
    return jsonify(tracked=bool(click))


@app.post("/verify")
def verify():  # type: ignore[no-untyped-def]
    cms.client.track_lead("email_verified", request.form["user_id"])
    return jsonify(ok=True)


@app.post("/checkout")
def checkout():  # type: ignore[no-untyped-def]
    form = request.form
    result = cms.client.track_sale(
        "purchase", form["user_id"], form["invoice_id"], int(form["amount_cents"]), form["currency"]
    )
    return jsonify(queued=result.success, error=result.error)
