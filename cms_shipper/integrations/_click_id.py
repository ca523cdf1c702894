"""Reading the click id the way the vendor's browser script stores it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

__all__ = ["COOKIE_NAME", "click_id_from"]

COOKIE_NAME = "cms_rf"  # set by the vendor's script from the short link's ?cms_rf= parameter
_MAX = 255


def _clean(value: Any) -> Optional[str]:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if 0 < len(value) <= _MAX and value.isprintable() else None


def click_id_from(
    cookies: Optional[Mapping[str, Any]], query: Optional[Mapping[str, Any]] = None
) -> Optional[str]:
    """The ``cms_rf`` cookie, else the ``cms_rf`` query parameter; None if absent or malformed."""
    for source in (cookies, query):
        if source is not None:
            found = _clean(source.get(COOKIE_NAME))
            if found is not None:
                return found
    return None
