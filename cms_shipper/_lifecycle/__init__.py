"""The process around the clients: fork, collection, exit and SIGTERM.

- ``register(client, pipeline)``: rebuild the pipeline in a forked child, retire it when the
  client handle is collected, close it at exit (``registry``).
- ``install_sigterm(pipeline)``: ``handle_sigterm=True``, a bounded flush on SIGTERM
  (``sigterm``).

Knows pipelines only through the small protocols it declares; imports nothing of the
engine, the books or durability.
"""

from cms_shipper._lifecycle.registry import register
from cms_shipper._lifecycle.sigterm import install as install_sigterm

__all__ = ["install_sigterm", "register"]
