"""The ``cms-shipper`` command line: send one event, run the emulator, run the demo.

The token is read from ``CMS_BEARER_TOKEN`` or ``--token-file``, never from a flag: a flag
would show in ``ps`` and in shell history.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from cms_shipper._config import CMS_BEARER_TOKEN, CMS_HOST, DEFAULT_HOST
from cms_shipper._spool import SpoolError
from cms_shipper._version import __version__
from cms_shipper.cli.args import EXIT_FAILED, EXIT_OK, EXIT_USAGE, amount, finite
from cms_shipper.cli.emulator import add_options as add_emulator_options
from cms_shipper.cli.emulator import run as run_emulator
from cms_shipper.cli.fleet import add_parser as add_fleet_parser
from cms_shipper.cli.fleet import run_fleet
from cms_shipper.client import CMSClient
from cms_shipper.errors import ConfigurationError
from cms_shipper.results import Outcome, Result

__all__ = ["main"]

_OPTIONAL = ("click_id", "customer_name", "customer_email", "customer_avatar", "timestamp")


_TIMESTAMP_HELP = (
    "when it happened, ISO 8601, e.g. 2026-11-24T10:00:00Z or 2026-11-24T11:00:00+01:00; "
    "naive means UTC (default: now)"
)
_FIELD_HELP = {
    "click_id": "the click id the visitor arrived with, e.g. clk_1 (default: none)",
    "customer_name": "the customer's display name (default: none)",
    "customer_email": "the customer's email address, e.g. ada@example.com (default: none)",
    "customer_avatar": "an http(s) URL of the customer's picture (default: none)",
    "timestamp": _TIMESTAMP_HELP,
}
_METAVARS = {"timestamp": "WHEN", "customer_avatar": "URL"}


def _add_send_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--event-name", required=True, metavar="NAME", help="the event's name, e.g. signup"
    )
    parser.add_argument(
        "--customer-external-id",
        required=True,
        metavar="ID",
        help="your own id for the customer, e.g. user_42",
    )
    for name in _OPTIONAL:
        metavar = _METAVARS.get(name, name.split("_")[-1].upper())
        parser.add_argument("--" + name.replace("_", "-"), metavar=metavar, help=_FIELD_HELP[name])
    parser.add_argument(
        "--host", metavar="URL", help=f"API base URL (default: ${CMS_HOST}, else {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"read the bearer token from FILE (default: the {CMS_BEARER_TOKEN} environment "
        "variable; there is no --token flag: it would show in ps and shell history)",
    )
    parser.add_argument(
        "--timeout-s",
        type=finite(0, above=True),
        default=15.0,
        metavar="S",
        help="give up after about S seconds, retries included (default: %(default)g)",
    )


_EPILOG = f"""\
token: from --token-file FILE, else the {CMS_BEARER_TOKEN} environment variable
host:  from --host URL, else {CMS_HOST}, else {DEFAULT_HOST}
exit status: 0 delivered (or a duplicate), 1 failed (the result says why), 2 usage error"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cms-shipper",
        description="CutMeShort conversion events from the command line.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_send_commands(commands)
    emulator = commands.add_parser(
        "emulator",
        help="run the local CutMeShort API emulator",
        description="Run the CutMeShort API emulator in the foreground, one line per /track "
        "request on stderr, until Ctrl-C.",
    )
    add_emulator_options(emulator)

    spool = commands.add_parser("spool", help="inspect, replay or purge an on-disk spool")
    spool.add_argument("action", choices=["status", "replay", "purge"])
    spool.add_argument("--path", required=True, help="the spool file (spool_path)")
    spool.add_argument("--host", help=f"API base URL for replay (default: ${CMS_HOST})")
    spool.add_argument(
        "--token-file", help=f"bearer token file for replay (default: ${CMS_BEARER_TOKEN})"
    )
    spool.add_argument("--timeout-s", type=float, default=300.0, help="replay gives up after this")
    spool.add_argument("--yes", action="store_true", help="purge without asking")

    add_fleet_parser(commands)

    demo = commands.add_parser("demo", help="a tour: emulated API with faults, a realistic mix")
    demo.add_argument(
        "--events", type=int, default=400, help="events to track (default: %(default)s)"
    )
    demo.add_argument(
        "--threads", type=int, default=4, help="caller threads (default: %(default)s)"
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the fault mix, for a repeatable run (default: %(default)s)",
    )
    return parser


def _add_send_commands(commands: Any) -> None:
    lead = commands.add_parser(
        "lead",
        help="send one lead event and print the result as JSON",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_send_options(lead)
    lead.add_argument(
        "--mode",
        choices=["deferred"],
        help='only "deferred": the first lead of a deferred attribution (needs --click-id); '
        "this customer's later events may then leave --click-id out (default: a plain lead)",
    )
    sale = commands.add_parser(
        "sale",
        help="send one sale event and print the result as JSON",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_send_options(sale)
    sale.add_argument(
        "--invoice-id",
        required=True,
        metavar="ID",
        help="your invoice id; the API takes each once (a repeat is a duplicate)",
    )
    sale.add_argument(
        "--amount",
        type=amount,
        required=True,
        metavar="CENTS",
        help="whole cents, an int: 4999 for 49.99",
    )
    sale.add_argument("--currency", required=True, help="3 letters, e.g. USD")


def _token(args: argparse.Namespace) -> Optional[str]:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            return handle.read().strip()
    return None  # the client reads CMS_BEARER_TOKEN itself


def _send(args: argparse.Namespace) -> int:
    budget = max(1.0, args.timeout_s)
    try:
        client = CMSClient(
            token=_token(args),
            host=args.host,
            sync_mode=True,
            retry_max_attempts=4,
            retry_max_elapsed_s=budget / 2,
            connect_timeout_s=min(5.0, budget / 4),
            read_timeout_s=min(10.0, budget / 4),
        )
    except ConfigurationError as exc:
        raise ValueError(_config_problem(exc, args)) from None
    fields: dict[str, Any] = {name: getattr(args, name) for name in _OPTIONAL}
    if args.command == "lead":
        result = client.track_lead(
            args.event_name, args.customer_external_id, mode=args.mode, **fields
        )
    else:
        result = client.track_sale(
            args.event_name,
            args.customer_external_id,
            args.invoice_id,
            args.amount,
            args.currency,
            **fields,
        )
    client.close(1.0)
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return EXIT_OK if _succeeded(result) else EXIT_FAILED


def _config_problem(exc: ConfigurationError, args: argparse.Namespace) -> str:
    """The client's complaint in the command line's terms: flags and variables, not kwargs."""
    problem = str(exc).split(": ", 1)[-1]
    source = f"--token-file {args.token_file}" if args.token_file else CMS_BEARER_TOKEN
    if exc.argument == "token" and problem.startswith("no bearer token"):
        if args.token_file:
            return f"{source}: the file holds no token"
        return f"no bearer token: set {CMS_BEARER_TOKEN} or pass --token-file FILE"
    if exc.argument == "token" and problem.startswith("looks like a URL"):
        return f"{source}: the token looks like a URL; the API URL goes in --host or {CMS_HOST}"
    if exc.argument == "token":
        return f"{source}: the token {problem}"
    if exc.argument == "host":
        return f"--host: {problem}"
    return str(exc)  # already named by its environment variable, e.g. CMS_HOST


def _succeeded(result: Result) -> bool:
    return result.outcome in (Outcome.DELIVERED, Outcome.DUPLICATE)


def _spool(args: argparse.Namespace) -> int:
    from cms_shipper.cli.spool import run_spool  # noqa: PLC0415  # only this command needs it

    return run_spool(args, _token(args))


def _demo(args: argparse.Namespace) -> int:
    from cms_shipper.cli.demo import run_demo  # noqa: PLC0415  # only this command needs it

    return run_demo(events=args.events, threads=args.threads, seed=args.seed)


def _fleet(args: argparse.Namespace) -> int:
    return run_fleet(args, _token(args))


_COMMANDS = {
    "lead": _send,
    "sale": _send,
    "emulator": run_emulator,
    "spool": _spool,
    "fleet": _fleet,
    "demo": _demo,
}


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ConfigurationError, SpoolError, OSError, ValueError) as exc:
        # ConfigurationError is a ValueError too; all are the user's to fix, no traceback.
        print(f"cms-shipper: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
