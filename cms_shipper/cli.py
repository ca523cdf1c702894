"""The ``cms-shipper`` command line: send one event, run the emulator, run the demo.

The token is read from ``CMS_BEARER_TOKEN`` or ``--token-file``, never from a flag: a flag
would show in ``ps`` and in shell history.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional

from cms_shipper._checks import check_amount
from cms_shipper._config import CMS_BEARER_TOKEN, CMS_HOST, DEFAULT_HOST
from cms_shipper._spool import SpoolError
from cms_shipper._version import __version__
from cms_shipper.client import CMSClient
from cms_shipper.errors import ConfigurationError, ValidationError
from cms_shipper.results import Outcome, Result

if TYPE_CHECKING:  # imported by the emulator command itself, only when it runs
    from cms_shipper.emulator import Emulator

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
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


def _finite(minimum: float, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float >= minimum (> minimum when ``above``)."""
    bound = f"> {minimum:g}" if above else f">= {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (above and value == minimum):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value

    return parse


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return int(text)


def _amount(text: str) -> int:
    """An argparse type: whole cents, checked by the library so the message is its own."""
    try:
        value: Any = int(text)
    except ValueError:
        try:
            value = float(text)  # 49.99 gets the library's "(for 49.99 send 4999)" hint
        except ValueError:
            value = text
    try:
        return check_amount(value)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.rule) from None


def _add_send_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--event-name", required=True, metavar="NAME", help="the event's name, e.g. signup"
    )
    parser.add_argument(
        "--customer-external-id", required=True, metavar="ID",
        help="your own id for the customer, e.g. user_42",
    )  # fmt: skip
    for name in _OPTIONAL:
        metavar = _METAVARS.get(name, name.split("_")[-1].upper())
        parser.add_argument("--" + name.replace("_", "-"), metavar=metavar, help=_FIELD_HELP[name])
    parser.add_argument(
        "--host", metavar="URL", help=f"API base URL (default: ${CMS_HOST}, else {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--token-file", metavar="FILE",
        help=f"read the bearer token from FILE (default: the {CMS_BEARER_TOKEN} environment "
        "variable; there is no --token flag: it would show in ps and shell history)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout-s", type=_finite(0, above=True), default=15.0, metavar="S",
        help="give up after about S seconds, retries included (default: %(default)g)",
    )  # fmt: skip


def _add_emulator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every interface (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--port",
        type=_port,
        default=8787,
        help="TCP port; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--token", default="test-token", help="the bearer token it accepts (default: %(default)s)"
    )
    parser.add_argument("--any-token", action="store_true", help="accept any bearer token")
    parser.add_argument(
        "--quiet", action="store_true", help="no line per request on stderr (default: one each)"
    )
    parser.add_argument(
        "--rate-limit", type=int, metavar="N",
        help="N /track requests per token per window, then 429 (default: no limit)",
    )  # fmt: skip
    parser.add_argument(
        "--rate-limit-window-s", type=_finite(0, above=True), default=60.0, metavar="S",
        help="the rate limit's window in seconds (default: %(default)g)",
    )  # fmt: skip
    parser.add_argument(
        "--no-retry-after", action="store_true", help="429s of the rate limit carry no Retry-After"
    )
    _add_emulator_error_options(parser)
    _add_emulator_fault_options(parser)


def _add_emulator_error_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--latency-ms", type=_finite(0), default=0.0, metavar="MS",
        help="hold every /track answer MS milliseconds (default: %(default)g)",
    )  # fmt: skip
    parser.add_argument(
        "--error-rate", type=float, default=0.0, metavar="P",
        help="answer this fraction of /track requests, 0 to 1, with --error-status "
        "(default: %(default)g)",
    )  # fmt: skip
    parser.add_argument(
        "--error-status", type=int, default=503, metavar="STATUS",
        help="the status of --error-rate errors, 400 to 599 (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, metavar="N",
        help="seed the --error-rate dice for a repeatable run (default: random)",
    )  # fmt: skip


def _add_emulator_fault_options(parser: argparse.ArgumentParser) -> None:
    outage = parser.add_argument_group("outage (scheduled when --outage-after-s or --outage-s)")
    outage.add_argument(
        "--outage-after-s", type=float, metavar="S", help="start S s after start (default: 0)"
    )
    outage.add_argument("--outage-s", type=float, metavar="S", help="last S s (default: till exit)")
    outage.add_argument(
        "--outage-mode", choices=["status", "reset", "refuse"], default="status",
        help="answer --outage-status, close unanswered, or stop listening (refused) "
        "(default: %(default)s)",
    )  # fmt: skip
    outage.add_argument(
        "--outage-status", type=int, default=503, metavar="STATUS",
        help="for --outage-mode status (default: %(default)s)",
    )  # fmt: skip
    customers = parser.add_argument_group("failing customers")
    customers.add_argument(
        "--fail-customer", action="append", default=[], metavar="ID",
        help="fail every request of this customerExternalId (repeatable)",
    )  # fmt: skip
    customers.add_argument(
        "--fail-customer-status", type=int, default=503, metavar="STATUS",
        help="the status they get (default: %(default)s)",
    )  # fmt: skip
    _add_emulator_reply_options(parser)


def _add_emulator_reply_options(parser: argparse.ArgumentParser) -> None:
    replies = parser.add_argument_group("reply faults, on every /track answer")
    replies.add_argument(
        "--trickle-interval-s", type=float, default=0.0, metavar="S",
        help="one body byte per S s (default: %(default)g, all at once)",
    )  # fmt: skip
    replies.add_argument(
        "--reply-padding-bytes", type=int, default=0, metavar="N",
        help="an N-char padding field (default: %(default)s)",
    )  # fmt: skip
    replies.add_argument("--endless-reply", action="store_true", help="a chunked body, never ends")
    replies.add_argument(
        "--nested-reply-depth", type=int, default=0, metavar="N",
        help="the body is [[...]] N deep (default: %(default)s, plain JSON)",
    )  # fmt: skip


_EPILOG = f"""\
token: from --token-file FILE, else the {CMS_BEARER_TOKEN} environment variable
host:  from --host URL, else {CMS_HOST}, else {DEFAULT_HOST}
exit status: 0 delivered (or a duplicate), 1 failed (the result says why), 2 usage error"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cms-shipper", description="CutMeShort conversion events from the command line.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_send_commands(commands)
    emulator = commands.add_parser(
        "emulator", help="run the local CutMeShort API emulator",
        description="Run the CutMeShort API emulator in the foreground, one line per /track "
        "request on stderr, until Ctrl-C.",
    )  # fmt: skip
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
    demo.add_argument(
        "--events", type=int, default=400, help="events to track (default: %(default)s)"
    )
    demo.add_argument(
        "--threads", type=int, default=4, help="caller threads (default: %(default)s)"
    )
    demo.add_argument(
        "--seed", type=int, default=1, help="seed of the fault mix, for a repeatable run "
        "(default: %(default)s)",
    )  # fmt: skip
    return parser


def _add_send_commands(commands: Any) -> None:
    lead = commands.add_parser(
        "lead", help="send one lead event and print the result as JSON", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _add_send_options(lead)
    lead.add_argument(
        "--mode", choices=["deferred"],
        help='only "deferred": the first lead of a deferred attribution (needs --click-id); '
        "this customer's later events may then leave --click-id out (default: a plain lead)",
    )  # fmt: skip
    sale = commands.add_parser(
        "sale", help="send one sale event and print the result as JSON", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _add_send_options(sale)
    sale.add_argument(
        "--invoice-id", required=True, metavar="ID",
        help="your invoice id; the API takes each once (a repeat is a duplicate)",
    )  # fmt: skip
    sale.add_argument(
        "--amount", type=_amount, required=True, metavar="CENTS",
        help="whole cents, an int: 4999 for 49.99",
    )  # fmt: skip
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
            token=_token(args), host=args.host, sync_mode=True,
            retry_max_attempts=4, retry_max_elapsed_s=budget / 2,
            connect_timeout_s=min(5.0, budget / 4), read_timeout_s=min(10.0, budget / 4),
        )  # fmt: skip
    except ConfigurationError as exc:
        raise ValueError(_config_problem(exc, args)) from None
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


_SETTING_FLAGS = {"latency_s": "--latency-ms", "port": "--port", "token": "--token"}
_OUTAGE_FLAGS = {"duration_s": "--outage-s", "status": "--outage-status", "mode": "--outage-mode"}
_CUSTOMER_FLAGS = {"customer_external_id": "--fail-customer", "status": "--fail-customer-status"}


def _emulator(args: argparse.Namespace) -> int:
    emulator = _build_emulator(args)
    outage = _outage_timer(emulator, args)  # validated before anything listens
    try:
        emulator.start()
    except OSError as exc:
        raise ValueError(_listen_problem(exc, args.host, args.port)) from None
    token = "any token" if args.any_token else args.token
    print(
        f"CutMeShort emulator on {emulator.url} (accepts {token}); point a client at it with:\n"
        f"  export {CMS_HOST}={emulator.url} {CMS_BEARER_TOKEN}={args.token}\n"
        + ("" if args.quiet else "One line per /track request follows on stderr. ")
        + "Ctrl-C stops it.",
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


def _build_emulator(args: argparse.Namespace) -> Emulator:
    """The emulator the flags describe; a bad value raises ValueError naming its flag."""
    from cms_shipper.emulator import Emulator  # noqa: PLC0415  # only this command needs it

    if not args.quiet:
        _log_requests_to_stderr()
    with _flag_names(_SETTING_FLAGS):
        emulator = Emulator(
            token=None if args.any_token else args.token, host=args.host, port=args.port,
            rate_limit=args.rate_limit, rate_limit_window_s=args.rate_limit_window_s,
            latency_s=args.latency_ms / 1000.0, error_rate=args.error_rate,
            error_status=args.error_status, seed=args.seed,
            rate_limit_retry_after=not args.no_retry_after,
            trickle_interval_s=args.trickle_interval_s,
            reply_padding_bytes=args.reply_padding_bytes, endless_reply=args.endless_reply,
            nested_reply_depth=args.nested_reply_depth, log_requests=not args.quiet,
        )  # fmt: skip
    with _flag_names(_CUSTOMER_FLAGS):
        for customer in args.fail_customer:
            emulator.fail_customer(customer, status=args.fail_customer_status)
    return emulator


def _log_requests_to_stderr() -> None:
    """Show the emulator's per-request INFO lines (and its warnings) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log = logging.getLogger("cms_shipper.emulator")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # this handler is the only one: no line twice


@contextlib.contextmanager
def _flag_names(flags: Dict[str, str]) -> Iterator[None]:
    """Re-raise a ValueError that names a Python argument as one naming its flag."""
    try:
        yield
    except ValueError as exc:
        name, _, rest = str(exc).partition(" ")
        if name in flags or "_" in name:  # a Python name such as error_rate, not prose
            flag = flags.get(name, "--" + name.replace("_", "-"))
            raise ValueError(f"{flag} {rest}") from None
        raise


def _listen_problem(exc: OSError, host: str, port: int) -> str:
    """Why the emulator cannot listen, with the address and the flag to change."""
    reason = (exc.strerror or str(exc)).lower()
    busy = exc.errno in (errno.EADDRINUSE, errno.EACCES)
    hint = "pick another --port" if busy else "check --host"
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"cannot listen on {address}: {reason}; {hint}"


def _outage_timer(emulator: Emulator, args: argparse.Namespace) -> Optional[threading.Timer]:
    """A timer that starts the requested outage, or None; raises ValueError on bad values."""
    from cms_shipper.emulator._faults import check_outage  # noqa: PLC0415

    if args.outage_after_s is None and args.outage_s is None:
        return None
    after_s = 0.0 if args.outage_after_s is None else args.outage_after_s
    if not (math.isfinite(after_s) and after_s >= 0):
        raise ValueError(f"--outage-after-s must be a finite number >= 0, got {after_s!r}")
    with _flag_names(_OUTAGE_FLAGS):
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
