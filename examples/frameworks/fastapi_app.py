"""FastAPI: the lifespan opens and closes the client; dependencies give it and the click id.

The glue is ``cms_shipper.integrations.starlette`` (FastAPI is built on Starlette; there is
no ``.fastapi`` module). Run it (``pip install -e '.[examples]'`` installs FastAPI and
uvicorn; ``cms-shipper emulator`` in another terminal), from this directory::

    CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token uvicorn fastapi_app:app
    curl -X POST --cookie cms_rf=clk_fastapi_example -d user_id=fastapi_example_user \
        http://127.0.0.1:8000/signup
"""

from typing import Optional

from fastapi import Depends, FastAPI, Form

from cms_shipper import CMSClient
from cms_shipper.integrations.starlette import click_id, cms_lifespan, get_client

app = FastAPI(lifespan=cms_lifespan(close_timeout_s=5.0))


@app.post("/signup")
def signup(
    user_id: str = Form(...),
    click: Optional[str] = Depends(click_id),
    cms: CMSClient = Depends(get_client),
) -> dict[str, bool]:
    if click:
        cms.track_lead("signup", user_id, click_id=click, mode="deferred")
    return {"tracked": bool(click)}


@app.post("/verify")
def verify(user_id: str = Form(...), cms: CMSClient = Depends(get_client)) -> dict[str, bool]:
    cms.track_lead("email_verified", user_id)
    return {"ok": True}


@app.post("/checkout")
def checkout(
    user_id: str = Form(...),
    invoice_id: str = Form(...),
    amount_cents: int = Form(...),
    currency: str = Form(...),
    cms: CMSClient = Depends(get_client),
) -> dict[str, bool]:
    result = cms.track_sale("purchase", user_id, invoice_id, amount_cents, currency)
    return {"queued": result.success}
