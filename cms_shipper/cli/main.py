"""The ``cms-shipper`` command line: send one event, run the emulator, run the demo.

The token is read from ``CMS_BEARER_TOKEN`` or ``--token-file``, never from a flag: a flag
would show in ``ps`` and in shell history.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
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
from cms_shipper.results import Outcome, Reason, Result

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
        help="the total time to give up, retries included: the command ends within about "
        "a second of S seconds after it starts (default: %(default)g)",
    )


_SEND_EXIT = """\
exit status:
  0  delivered, or a duplicate (the API already had it)
  1  not delivered: the API refused it, or could not be reached within --timeout-s
     (the JSON's error says the attempts made, the time spent and the last cause)
  2  usage error, or invalid input (the JSON names the field; nothing was sent)"""
_EPILOG = f"""\
token: from --token-file FILE, else the {CMS_BEARER_TOKEN} environment variable
host:  from --host URL, else {CMS_HOST}, else {DEFAULT_HOST}
{_SEND_EXIT}"""
_MAIN_EPILOG = f"""\
exit status of lead and sale:
{_SEND_EXIT.split(chr(10), 1)[1]}
other commands: 0 done; 1 see the command's --help; 2 usage error"""
_SPOOL_EPILOG = """\
actions:
  status  print what the spool holds, as JSON; opens the file read-only
  replay  send what it holds through a normal client, with a progress bar, then
          print counts that add up (in_spool_before + added_by_others =
          delivered + duplicate + rejected + failed + dropped + left_kept)
  purge   delete every event it holds (asks first, unless --yes)

exit status:
  0  done (replay: nothing left in the spool, nothing refused)
  1  replay: events left in the spool, or refused or failed by the API; purge:
     declined at the prompt; the spool could not be used (busy, I/O error)
  2  usage error: no spool at --path, the file is not a spool, or purge without
     --yes and no terminal to ask"""
_DEMO_EPILOG = """\
exit status:
  0  every event has its outcome counted and per-customer order held
  1  the counts do not add up, or order broke (a bug: please report it)
  2  usage error"""
_EMULATOR_EPILOG = """\
exit status:
  0  stopped with Ctrl-C
  2  usage error, or it cannot listen on --host/--port"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cms-shipper",
        description="CutMeShort conversion events from the command line.",
        epilog=_MAIN_EPILOG,
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
        epilog=_EMULATOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_emulator_options(emulator)

    spool = commands.add_parser(
        "spool",
        help="inspect, replay or purge an on-disk spool",
        description="Inspect, replay or purge the on-disk spool a client keeps at spool_path.",
        epilog=_SPOOL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    spool.add_argument(
        "action",
        choices=["status", "replay", "purge"],
        help="what to do: status, replay or purge (see actions below)",
    )
    spool.add_argument(
        "--path", required=True, metavar="FILE", help="the spool file (spool_path); required"
    )
    spool.add_argument(
        "--host",
        metavar="URL",
        help=f"replay: API base URL (default: ${CMS_HOST}, else {DEFAULT_HOST})",
    )
    spool.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"replay: read the bearer token from FILE (default: ${CMS_BEARER_TOKEN})",
    )
    spool.add_argument(
        "--timeout-s",
        type=finite(0),
        default=300.0,
        metavar="S",
        help="replay: the total time it may take; what is not sent by then stays in the "
        "spool (default: %(default)g)",
    )
    spool.add_argument("--yes", action="store_true", help="purge: do not ask first (default: ask)")

    add_fleet_parser(commands)

    demo = commands.add_parser(
        "demo",
        help="a tour: emulated API with faults, a realistic mix",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    # --timeout-s counts from the command's start: what start-up took is not given again.
    budget = max(0.05, args.timeout_s - (time.monotonic() - _STARTED))
    # The JSON and one line on stderr say what happened; the library's own lines (the
    # event's outcome, the close summary) would say it twice.
    logging.getLogger("cms_shipper").setLevel(logging.ERROR)
    try:
        client = CMSClient(
            token=_token(args),
            host=args.host,
            sync_mode=True,
            # Time is the bound (sync_mode cuts every attempt at it), not a count; retries
            # at most a second apart, so the last one comes close to the deadline.
            retry_max_attempts=1000,
            retry_max_elapsed_s=budget,
            retry_initial_backoff_s=min(0.25, budget / 4),
            retry_max_backoff_s=min(1.0, max(budget / 4, 0.25)),
            connect_timeout_s=min(5.0, budget),
            read_timeout_s=min(10.0, budget),
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
    client.close(0.5)  # sync_mode: nothing is queued, this only ends the threads
    print(json.dumps(result.to_dict(), indent=2, default=str))
    if _succeeded(result):
        return EXIT_OK
    said = f"cms-shipper: not delivered: {result.outcome} ({result.reason}): {result.error}"
    print(said, file=sys.stderr)
    return EXIT_USAGE if result.reason is Reason.INVALID else EXIT_FAILED


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


_STARTED = time.monotonic()  # when the command started, as near as this module can tell


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status (each command's --help lists them)."""
    global _STARTED  # noqa: PLW0603  # main() in-process (tests) starts its own clock
    _STARTED = time.monotonic()
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
