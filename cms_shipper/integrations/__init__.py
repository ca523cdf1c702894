"""Glue for web frameworks, task workers and serverless; each module imports its framework.

``click_id_from`` works anywhere: it reads the CutMeShort click id from the first-party
``cms_rf`` cookie, falling back to the ``cms_rf`` query parameter.
"""

from cms_shipper.integrations._click_id import COOKIE_NAME, click_id_from

__all__ = ["COOKIE_NAME", "click_id_from"]
