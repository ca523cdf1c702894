"""The ``cms-shipper`` command line: send one event, run the emulator, run the demo.

The token is read from ``CMS_BEARER_TOKEN`` or ``--token-file``, never from a flag: a flag
would show in ``ps`` and in shell history.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import threading
from typing import TYPE_CHECKING, Any, Optional

from cms_shipper._config import CMS_BEARER_TOKEN, CMS_HOST
from cms_shipper._spool import SpoolError
from cms_shipper._version import __version__
from cms_shipper.client import CMSClient
from cms_shipper.errors import ConfigurationError
from cms_shipper.results import Outcome, Result

if TYPE_CHECKING:  # imported by the emulator command itself, only when it runs
    from cms_shipper.emulator import Emulator

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_OPTIONAL = ("click_id", "customer_name", "customer_email", "customer_avatar", "timestamp")


def _add_send_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--event-name", required=True)
    parser.add_argument("--customer-external-id", required=True)
    for name in _OPTIONAL:
        parser.add_argument("--" + name.replace("_", "-"))
    parser.add_argument("--host", help=f"API base URL (default: ${CMS_HOST}, else the public API)")
    parser.add_argument(
        "--token-file", help=f"read the bearer token from this file (default: ${CMS_BEARER_TOKEN})"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=15.0, help="give up after about this long (default 15)"
    )


def _add_emulator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--token", default="test-token", help="the token it accepts")
    parser.add_argument("--any-token", action="store_true", help="accept any bearer token")
    parser.add_argument("--rate-limit", type=int, help="requests per window, then 429")
    parser.add_argument("--rate-limit-window-s", type=float, default=60.0)
    parser.add_argument(
        "--no-retry-after", action="store_true", help="429s of the rate limit carry no Retry-After"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0, help="0..1")
    parser.add_argument("--error-status", type=int, default=503)
    parser.add_argument("--seed", type=int)
    _add_emulator_fault_options(parser)


def _add_emulator_fault_options(parser: argparse.ArgumentParser) -> None:
    outage = parser.add_argument_group("outage (scheduled when --outage-after-s or --outage-s)")
    outage.add_argument("--outage-after-s", type=float, metavar="S", help="start S s after start")
    outage.add_argument("--outage-s", type=float, metavar="S", help="last S s (default: till exit)")
    outage.add_argument(
        "--outage-mode", choices=["status", "reset", "refuse"], default="status",
        help="answer --outage-status, close unanswered, or stop listening (refused)",
    )  # fmt: skip
    outage.add_argument("--outage-status", type=int, default=503, help="for --outage-mode status")
    customers = parser.add_argument_group("failing customers")
    customers.add_argument(
        "--fail-customer", action="append", default=[], metavar="ID",
        help="fail every request of this customerExternalId (repeatable)",
    )  # fmt: skip
    customers.add_argument("--fail-customer-status", type=int, default=503, metavar="STATUS")
    replies = parser.add_argument_group("reply faults, on every /track answer")
    replies.add_argument(
        "--trickle-interval-s", type=float, default=0.0, metavar="S", help="one body byte per S s"
    )
    replies.add_argument(
        "--reply-padding-bytes", type=int, default=0, metavar="N", help="an N-char padding field"
    )
    replies.add_argument("--endless-reply", action="store_true", help="a chunked body, never ends")
    replies.add_argument(
        "--nested-reply-depth", type=int, default=0, metavar="N", help="the body is [[...]] N deep"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cms-shipper", description="CutMeShort conversion events from the command line."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lead = commands.add_parser("lead", help="send one lead event and print the result as JSON")
    _add_send_options(lead)
    lead.add_argument("--mode", choices=["deferred"])

    sale = commands.add_parser("sale", help="send one sale event and print the result as JSON")
    _add_send_options(sale)
    sale.add_argument("--invoice-id", required=True)
    sale.add_argument("--amount", type=int, required=True, help="in cents: 4999 = 49.99")
    sale.add_argument("--currency", required=True, help="3 letters, e.g. USD")

    emulator = commands.add_parser("emulator", help="run the local CutMeShort API emulator")
    _add_emulator_options(emulator)

    spool = commands.add_parser("spool", help="inspect, replay or purge an on-disk spool")
    spool.add_argument("action", choices=["status", "replay", "purge"])
    spool.add_argument("--path", required=True, help="the spool file (spool_path)")
    spool.add_argument("--host", help=f"API base URL for replay (default: ${CMS_HOST})")
    spool.add_argument(
        "--token-file", help=f"bearer token file for replay (default: ${CMS_BEARER_TOKEN})"
    )
    spool.add_argument("--timeout-s", type=float, default=300.0, help="replay gives up after this")
    spool.add_argument("--yes", action="store_true", help="purge without asking")

    demo = commands.add_parser("demo", help="a tour: emulated API with faults, a realistic mix")
    demo.add_argument("--events", type=int, default=400, help="events to track (default 400)")
    demo.add_argument("--threads", type=int, default=4, help="caller threads (default 4)")
    demo.add_argument("--seed", type=int, default=1)
    return parser


def _token(args: argparse.Namespace) -> Optional[str]:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            return handle.read().strip()
    return None  # the client reads CMS_BEARER_TOKEN itself


def _send(args: argparse.Namespace) -> int:
    budget = max(1.0, args.timeout_s)
    client = CMSClient(
        token=_token(args), host=args.host, sync_mode=True,
        retry_max_attempts=4, retry_max_elapsed_s=budget / 2,
        connect_timeout_s=min(5.0, budget / 4), read_timeout_s=min(10.0, budget / 4),
    )  # fmt: skip
    fields: dict[str, Any] = {name: getattr(args, name) for name in _OPTIONAL}
    if args.command == "lead":
        result = client.track_lead(
            args.event_name, args.customer_external_id, mode=args.mode, **fields
        )
    else:
        result = client.track_sale(
            args.event_name, args.customer_external_id, args.invoice_id, args.amount,
            args.currency, **fields,
        )  # fmt: skip
    client.close(1.0)
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return EXIT_OK if _succeeded(result) else EXIT_FAILED


def _succeeded(result: Result) -> bool:
    return result.outcome in (Outcome.DELIVERED, Outcome.DUPLICATE)


def _emulator(args: argparse.Namespace) -> int:
    from cms_shipper.emulator import Emulator  # noqa: PLC0415  # only this command needs it

    emulator = Emulator(
        token=None if args.any_token else args.token, host=args.host, port=args.port,
        rate_limit=args.rate_limit, rate_limit_window_s=args.rate_limit_window_s,
        latency_s=args.latency_ms / 1000.0, error_rate=args.error_rate,
        error_status=args.error_status, seed=args.seed,
        rate_limit_retry_after=not args.no_retry_after,
        trickle_interval_s=args.trickle_interval_s, reply_padding_bytes=args.reply_padding_bytes,
        endless_reply=args.endless_reply, nested_reply_depth=args.nested_reply_depth,
    )  # fmt: skip
    for customer in args.fail_customer:
        emulator.fail_customer(customer, status=args.fail_customer_status)
    outage = _outage_timer(emulator, args)  # validated before anything listens
    emulator.start()
    token = "any token" if args.any_token else args.token
    print(
        f"CutMeShort emulator on {emulator.url} (accepts {token}); point a client at it with:\n"
        f"  export {CMS_HOST}={emulator.url} {CMS_BEARER_TOKEN}={args.token}\n"
        "Ctrl-C stops it.",
        flush=True,
    )
    if outage is not None:
        outage.start()
    try:
        emulator.run_forever()  # already started (to know the port); serves until Ctrl-C
    finally:
        if outage is not None:
            outage.cancel()
    return EXIT_OK


def _outage_timer(emulator: Emulator, args: argparse.Namespace) -> Optional[threading.Timer]:
    """A timer that starts the requested outage, or None; raises ValueError on bad values."""
    from cms_shipper.emulator._faults import check_outage  # noqa: PLC0415

    if args.outage_after_s is None and args.outage_s is None:
        return None
    after_s = 0.0 if args.outage_after_s is None else args.outage_after_s
    if not (math.isfinite(after_s) and after_s >= 0):
        raise ValueError(f"--outage-after-s must be a finite number >= 0, got {after_s!r}")
    check_outage(args.outage_s, args.outage_status, args.outage_mode)

    def begin() -> None:
        # Ctrl-C may have stopped the emulator just before: a refuse outage then has no port.
        with contextlib.suppress(RuntimeError):
            emulator.outage(args.outage_s, status=args.outage_status, mode=args.outage_mode)

    timer = threading.Timer(after_s, begin)
    timer.daemon = True  # never holds up exit
    return timer


def _spool(args: argparse.Namespace) -> int:
    from cms_shipper._spool_cli import run_spool  # noqa: PLC0415  # only this command needs it

    return run_spool(args, _token(args))


def _demo(args: argparse.Namespace) -> int:
    from cms_shipper._demo import run_demo  # noqa: PLC0415  # only this command needs it

    return run_demo(events=args.events, threads=args.threads, seed=args.seed)


_COMMANDS = {"lead": _send, "sale": _send, "emulator": _emulator, "spool": _spool, "demo": _demo}


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
