"""Celery tasks that track, with a client per worker process (eager here, for the example).

Run it (``pip install -e '.[examples]'``, ``cms-shipper emulator`` in another terminal),
from this directory::

    CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token python celery_app.py

That runs the three tasks eagerly in this process (no broker, no worker), as one prefork
child would, prints the outcomes and exits 1 unless the API took every event. With a real
broker, set ``broker_url``, drop ``task_always_eager`` and start a worker::

    celery -A celery_app worker
"""

import sys
from typing import Optional

from celery import Celery, signals

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


if __name__ == "__main__":
    signals.worker_process_init.send(sender=None)  # what a prefork child does on start
    client = get_client()
    on_signup.delay("celery_example_user", "clk_celery_example")
    on_verified.delay("celery_example_user")
    on_paid.delay("celery_example_user", "inv_celery_example", 4999, "USD")
    signals.worker_process_shutdown.send(sender=None)  # on exit: close(), bounded
    stats = client.stats()
    taken = stats["delivered"] + stats["duplicate"]  # a duplicate (409) is not an error
    print(f"{taken} of {stats['tracked']} events taken by the API; outcomes: {stats['reasons']}")
    sys.exit(0 if taken == stats["tracked"] else 1)
