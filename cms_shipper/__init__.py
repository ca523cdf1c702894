"""cms_shipper: the non-blocking CutMeShort conversion-event client.

from cms_shipper import CMSClient
client = CMSClient(token="...")          # or CMS_BEARER_TOKEN
client.track_lead("signup", "user_42", click_id="...")   # returns in microseconds
client.close()                            # or let the exit hook flush
"""

from cms_shipper._version import __version__
from cms_shipper.client import CMSClient
from cms_shipper.errors import CMSError, ConfigurationError, ValidationError
from cms_shipper.results import FlushResult, Outcome, Reason, Result, Stats, TrackResult

__all__ = [
    "CMSClient",
    "CMSError",
    "ConfigurationError",
    "FlushResult",
    "Outcome",
    "Reason",
    "Result",
    "Stats",
    "TrackResult",
    "ValidationError",
    "__version__",
]
