"""Exceptions raised by cms_shipper.

Only configuration problems are raised, and only from the constructor. Event data
problems and delivery failures never raise into the host application: they come back
as result values (``success=False``) and are counted in ``stats()``.

    CMSError                       base of everything this package raises
    ├── ConfigurationError         bad constructor argument or environment variable
    │   (also a ValueError)
    └── ValidationError            an event field breaks a rule; raised only inside
        (also a ValueError)        the package and turned into a 422 result by track_*
"""

from __future__ import annotations

__all__ = ["CMSError", "ConfigurationError", "ValidationError"]


class CMSError(Exception):
    """Base class of every exception raised by cms_shipper."""


class ConfigurationError(CMSError, ValueError):
    """A constructor argument or environment variable is missing or out of range."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument


class ValidationError(CMSError, ValueError):
    """An event field breaks a rule; ``field`` names it and ``rule`` says why."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule
