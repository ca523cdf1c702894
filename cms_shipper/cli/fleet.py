"""``cms-shipper fleet status``: the fleet of one token as Redis holds it."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from cms_shipper._config import CMS_BEARER_TOKEN, CMS_REDIS_URL
from cms_shipper.cli.args import EXIT_FAILED, EXIT_OK

__all__ = ["add_parser", "run_fleet"]

_EPILOG = f"""\
token: from --token-file FILE, else {CMS_BEARER_TOKEN} (only its hash names the fleet's keys)
redis: from --redis-url URL, else {CMS_REDIS_URL} (a password in it is never printed)
exit status: 0 read, 1 Redis could not be read, 2 usage error (no token, no URL)"""


def add_parser(commands: Any) -> None:
    """Add ``fleet`` to the command line's subcommands."""
    fleet = commands.add_parser(
        "fleet",
        help="show the fleet of processes sharing one token in Redis (fleet mode)",
        description="Show fleet mode's shared state: members, the fleet queue, claims, "
        "and whether the fleet is paused (rate limited or the API away) and by whom.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fleet.add_argument("action", choices=["status"], help="status: print the fleet as JSON")
    fleet.add_argument(
        "--redis-url", metavar="URL", help=f"the fleet's Redis (default: ${CMS_REDIS_URL})"
    )
    fleet.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"the bearer token, which names the fleet (default: ${CMS_BEARER_TOKEN})",
    )
    fleet.add_argument(
        "--timeout-s",
        type=float,
        default=2.0,
        metavar="S",
        help="give up on Redis after S seconds (default: %(default)g)",
    )


def run_fleet(args: argparse.Namespace, token: Any) -> int:
    """Print the fleet's status as JSON; exit status as the epilog says."""
    url = args.redis_url or os.environ.get(CMS_REDIS_URL)
    token = token or os.environ.get(CMS_BEARER_TOKEN)
    if not url:
        raise ValueError(f"no Redis URL: pass --redis-url URL or set {CMS_REDIS_URL}")
    if not token:
        raise ValueError(f"no bearer token: set {CMS_BEARER_TOKEN} or pass --token-file FILE")
    try:
        from cms_shipper._fleet import fleet_status  # noqa: PLC0415  # needs the redis extra
    except ImportError as exc:
        raise ValueError(
            f"fleet mode needs the redis extra: pip install 'cms-shipper[redis]' ({exc})"
        ) from None
    try:
        status = fleet_status(url, token, args.timeout_s)
    except Exception as exc:  # redis.RedisError, OSError: unreachable, refused, auth
        from cms_shipper._fleet.link import safe_url  # noqa: PLC0415

        text = str(exc).replace(url, safe_url(url))
        print(json.dumps({"redis": safe_url(url), "error": f"{type(exc).__name__}: {text}"}))
        return EXIT_FAILED
    print(json.dumps(status, indent=2))
    return EXIT_OK
