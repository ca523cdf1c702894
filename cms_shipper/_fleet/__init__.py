"""Fleet mode: the processes behind one token share one queue, rate budget and health in Redis.

Imported only when ``redis_url`` is set (it needs the ``redis`` extra: redis-py and
``limits``). ``FleetKeeper`` is the durability port's fleet implementation (``keeper``);
``member`` is this process's membership and its Redis calls; ``scripts`` holds the keys
and the Lua scripts that change them; ``health`` keeps the members' health gates in step
and holds the fleet's request budget; ``link`` is the connection and its warnings;
``records`` the queue entries; ``status`` reads the fleet for ``cms-shipper fleet status``.
"""

from cms_shipper._fleet.keeper import FleetKeeper, in_fleet
from cms_shipper._fleet.status import fleet_status

__all__ = ["FleetKeeper", "fleet_status", "in_fleet"]
