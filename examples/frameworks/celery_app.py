"""Celery tasks that track, with a client per worker process (eager here, for the example).

celery -A celery_app worker          # with a real broker set in broker_url
"""

from typing import Optional

from celery import Celery

from cms_shipper.integrations.celery import get_client, setup_celery

app = Celery("example", broker="memory://")
app.conf.task_always_eager = True  # run tasks in-process: no broker needed for the example
setup_celery(flush_after_task=True, shutdown_timeout_s=5.0)


@app.task
def on_signup(user_id: str, click_id: Optional[str]) -> bool:
    if not click_id:
        return False
    return get_client().track_lead("signup", user_id, click_id=click_id, mode="deferred").success


@app.task
def on_verified(user_id: str) -> bool:
    return get_client().track_lead("email_verified", user_id).success


@app.task
def on_paid(user_id: str, invoice_id: str, amount_cents: int, currency: str) -> bool:
    return get_client().track_sale("purchase", user_id, invoice_id, amount_cents, currency).success
