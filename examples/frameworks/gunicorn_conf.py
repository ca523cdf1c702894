"""gunicorn hooks for an app that holds one CMSClient (here: the Flask example's).

Run it (``pip install -e '.[examples]' gunicorn``, ``cms-shipper emulator`` in another
terminal), from this directory::

    CMS_HOST=http://127.0.0.1:8787 CMS_BEARER_TOKEN=test-token \
        gunicorn -c gunicorn_conf.py --preload flask_app:app

With ``--preload`` the master imports the app (and creates the client) before forking;
each worker's client rebuilds its queue, threads and connections by itself after the
fork, so ``post_fork`` has nothing to do. ``worker_exit`` closes the worker's client with
a bound, so events queued when a worker is recycled (max_requests) or stopped are sent.
"""

from typing import Any

from flask_app import cms

graceful_timeout = 10  # must exceed the close budget below


def worker_exit(server: Any, worker: Any) -> None:
    """Flush and stop this worker's client, at most 5 s."""
    cms.client.close(timeout_s=5.0)
