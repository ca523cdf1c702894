"""Django: one client per process from settings, the click id on every request, a start-up check.

    # settings.py
    INSTALLED_APPS = [..., "cms_shipper.integrations.django.CMSShipperConfig"]
    MIDDLEWARE = [..., "cms_shipper.integrations.django.ClickIdMiddleware"]
    CMS_SHIPPER = {"token": None, "host": None, "options": {"shutdown_timeout_s": 5.0}}

    # views.py
    from cms_shipper.integrations.django import get_client
    get_client().track_lead("signup", user_id, click_id=request.cms_click_id, mode="deferred")

``token``/``host`` left out or None fall back to CMS_BEARER_TOKEN/CMS_HOST. The client is
created on first use in each process (so a forked worker never shares its parent's), and
its exit hook flushes within ``shutdown_timeout_s`` when the process ends.

With ``CMSShipperConfig`` in INSTALLED_APPS, Django's system checks (``runserver``,
``migrate``, ``manage.py check``) report an incomplete ``CMS_SHIPPER`` once, at start-up:
``cms_shipper.E001`` when there is no token, ``cms_shipper.E002`` for any other bad value.
Servers that run no checks (gunicorn, uWSGI) get the same message, as
``ImproperlyConfigured``, from the first ``get_client()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]
from django.core import checks  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]

from cms_shipper._config import CMS_BEARER_TOKEN, CMS_DISABLED, CMS_HOST, resolve_settings
from cms_shipper.client import CMSClient
from cms_shipper.errors import ConfigurationError
from cms_shipper.integrations._click_id import click_id_from
from cms_shipper.integrations._process_client import ProcessClient

__all__ = [
    "CMSShipperConfig",
    "ClickIdMiddleware",
    "check_settings",
    "click_id",
    "get_client",
    "reset_client",
]

_KEYS = ("token", "host", "options")
_NO_TOKEN_HINT = (
    f'Set settings.CMS_SHIPPER["token"] or the {CMS_BEARER_TOKEN} environment variable; to '
    "validate events without sending them (development, tests), set settings.CMS_SHIPPER = "
    f'{{"options": {{"disabled": True}}}} or {CMS_DISABLED}=1.'
)
_BAD_VALUE_HINT = (
    'settings.CMS_SHIPPER is a dict with "token", "host" (falling back to '
    f'{CMS_BEARER_TOKEN} and {CMS_HOST}) and "options" (a dict of CMSClient keyword '
    "arguments, see the Options table in docs/usage.md)."
)


class _Problem(NamedTuple):
    """What is wrong with the configuration, in Django's terms."""

    id: str
    message: str
    hint: str


class _Config(NamedTuple):
    token: Any
    host: Any
    options: dict[str, Any]


def _read_settings() -> _Config:
    """``settings.CMS_SHIPPER`` split into its parts; raises ``ConfigurationError`` on its shape."""
    config = getattr(settings, "CMS_SHIPPER", {})
    if not isinstance(config, Mapping):
        raise ConfigurationError(
            "settings.CMS_SHIPPER", f"must be a dict, got {type(config).__name__}"
        )
    unknown = sorted(str(key) for key in config if key not in _KEYS)
    if unknown:
        raise ConfigurationError(
            "settings.CMS_SHIPPER",
            f"unknown key {unknown[0]!r}; the keys are {list(_KEYS)} (CMSClient options go"
            ' in "options")',
        )
    options = config.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            'settings.CMS_SHIPPER["options"]',
            f"must be a dict of CMSClient options, got {type(options).__name__}",
        )
    return _Config(config.get("token"), config.get("host"), dict(options))


def _problem() -> Optional[_Problem]:
    """The first thing that keeps ``settings.CMS_SHIPPER`` (and the environment) from working."""
    try:
        config = _read_settings()
    except ConfigurationError as exc:
        return _Problem("cms_shipper.E002", str(exc), _BAD_VALUE_HINT)
    try:
        # Validation only: resolve_settings starts no thread and opens nothing.
        resolve_settings(config.token, config.host, config.options)
    except ConfigurationError as exc:
        if exc.argument == "token" and not _has_token(config.token):
            return _Problem(
                "cms_shipper.E001",
                'No CutMeShort token: settings.CMS_SHIPPER["token"] is not set and the '
                f"{CMS_BEARER_TOKEN} environment variable is empty, so get_client() cannot "
                "build the client.",
                _NO_TOKEN_HINT,
            )
        return _Problem("cms_shipper.E002", _where(exc), _BAD_VALUE_HINT)
    return None


def _where(exc: ConfigurationError) -> str:
    """The error's message, naming the setting (or environment variable) to fix."""
    rule = str(exc)[len(exc.argument) + 2 :]  # ConfigurationError says "<argument>: <rule>"
    if exc.argument == "token":
        return f'settings.CMS_SHIPPER["token"] (or {CMS_BEARER_TOKEN}): {rule}'
    if exc.argument == "host":
        return f'settings.CMS_SHIPPER["host"] (or {CMS_HOST}): {rule}'
    if exc.argument.startswith("CMS_"):  # an environment variable
        return str(exc)
    return f'settings.CMS_SHIPPER["options"]["{exc.argument}"]: {rule}'


def _has_token(token: Any) -> bool:
    """Whether a token is given, in the settings or in the environment."""
    if token is None:
        token = os.environ.get(CMS_BEARER_TOKEN)
    return not (token is None or (isinstance(token, str) and not token.strip()))


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Django system check: ``settings.CMS_SHIPPER`` with the environment can build a client.

    Returns ``[]``, or one ``checks.Error`` (``cms_shipper.E001``: no token;
    ``cms_shipper.E002``: another bad value). Never raises.
    """
    problem = _problem()
    if problem is None:
        return []
    return [checks.Error(problem.message, hint=problem.hint, id=problem.id)]


class CMSShipperConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """Add to INSTALLED_APPS to have the system checks report a bad ``CMS_SHIPPER``."""

    name = "cms_shipper.integrations.django"
    label = "cms_shipper"
    verbose_name = "CutMeShort conversion tracking"

    def ready(self) -> None:
        """Register ``check_settings`` (Django's registry is a set: once, however often)."""
        checks.register(check_settings)


def _build() -> CMSClient:
    problem = _problem()
    if problem is not None:
        raise ImproperlyConfigured(f"{problem.id}: {problem.message} HINT: {problem.hint}")
    config = _read_settings()
    return CMSClient(token=config.token, host=config.host, **config.options)


_client = ProcessClient(_build)


def get_client() -> CMSClient:
    """This process's client, built from ``settings.CMS_SHIPPER`` on first use.

    Raises ``ImproperlyConfigured`` (naming the setting to fix) when the settings cannot
    build a client; the start-up check reports the same problem before any request.
    """
    return _client.get()


def reset_client(timeout_s: Optional[float] = None) -> None:
    """Close this process's client (bounded) and forget it; the next use builds a new one."""
    _client.reset(timeout_s)


def click_id(request: HttpRequest) -> Optional[str]:
    """The request's click id: ``cms_rf`` cookie, else ``cms_rf`` query parameter."""
    return click_id_from(request.COOKIES, request.GET)


class ClickIdMiddleware:
    """Sets ``request.cms_click_id`` from the ``cms_rf`` cookie or query parameter."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.cms_click_id = click_id(request)
        return self.get_response(request)
