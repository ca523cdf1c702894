"""The protocol of a benchmark child process: one ``result {json}`` line, then exit.

Used by the child scripts (``_delivery_child.py``, ``_peers_children.py``), which the
benchmarks start with ``PYTHONPATH=<tree under test>``. ``os._exit`` skips the client's
exit hook on purpose: the figures are taken, and a child must end at once.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, Callable


def report(measure: Callable[[], Any]) -> None:
    """Run ``measure``, print its figures as one ``result`` line and exit (1 on any error)."""
    try:
        figures = measure()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.write("result " + json.dumps(figures) + "\n")
    sys.stdout.flush()
    os._exit(0)
