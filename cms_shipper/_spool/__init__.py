"""The on-disk spool: the local implementation of the durability port (one host).

``keeper`` implements the port (write ahead, hold back, settle, replay) and decides;
``store`` is the SQLite file's rows (``connection`` holds it and runs its transactions,
``opening`` opens it: schema, 0600, busy or broken files, the spool's errors;
``disk`` keeps its files within bounds), ``journal`` writes the memory-mapped
write-ahead records (``records``: their format, a dead owner's files read back),
``owners`` the per-process lock files (crash recovery), ``order`` the per-customer counts
that keep order through the spool, ``plan`` turns outcomes into row changes, ``rows``
the SQL, ``replay`` the thread that feeds spooled events back, ``status`` reads a spool
for the CLI without joining it. Never imports the engine, the books or the CLI; imported
only when ``spool_path`` is set (it loads ``sqlite3`` and ``mmap``).
"""

from cms_shipper._spool.keeper import SpoolKeeper
from cms_shipper._spool.opening import Unreadable
from cms_shipper._spool.status import SpoolStatus, read_status
from cms_shipper._spool.store import Spool, SpoolError

__all__ = ["Spool", "SpoolError", "SpoolKeeper", "SpoolStatus", "Unreadable", "read_status"]
