"""A Celery app for a real prefork worker over a filesystem broker (see test_servers.py)."""

import json
import os

from celery import Celery

from cms_shipper.integrations.celery import get_client, setup_celery

folder = os.environ["CELERY_FS_FOLDER"]
app = Celery("celery_worker_app")
app.conf.update(
    broker_url="filesystem://",
    broker_transport_options={
        "data_folder_in": folder,
        "data_folder_out": folder,
        "control_folder": os.path.join(folder, "control"),  # else ./control in the cwd
    },
    worker_hijack_root_logger=False,
)
setup_celery(**json.loads(os.environ.get("CMS_OPTIONS", "{}")))


@app.task(name="track_journey")
def track_journey(user_id: str, click_id: str, invoice_id: str) -> int:
    """A deferred signup, its follow-up and a sale, from one task; returns the child's pid."""
    client = get_client()
    assert client.track_lead("signup", user_id, click_id=click_id, mode="deferred").success
    assert client.track_lead("email_verified", user_id).success
    assert client.track_sale("purchase", user_id, invoice_id, 4999, "USD").success
    return os.getpid()
