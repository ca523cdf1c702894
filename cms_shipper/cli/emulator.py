"""``cms-shipper emulator``: its flags, and the emulator run in the foreground.

The emulator package is imported only when the command runs, so the other commands do not
pay for it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import sys
import threading
from typing import TYPE_CHECKING, Dict, Iterator, Optional

from cms_shipper._config import CMS_BEARER_TOKEN, CMS_HOST
from cms_shipper.cli.args import EXIT_OK, finite, port

if TYPE_CHECKING:
    from cms_shipper.emulator import Emulator

__all__ = ["add_options", "run"]

# The Python argument an emulator error names -> the flag the user typed.
_SETTING_FLAGS = {"latency_s": "--latency-ms", "port": "--port", "token": "--token"}
_OUTAGE_FLAGS = {"duration_s": "--outage-s", "status": "--outage-status", "mode": "--outage-mode"}
_CUSTOMER_FLAGS = {"customer_external_id": "--fail-customer", "status": "--fail-customer-status"}


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 for every interface (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=port,
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
        "--rate-limit",
        type=int,
        metavar="N",
        help="N /track requests per token per window, then 429 (default: no limit)",
    )
    parser.add_argument(
        "--rate-limit-window-s",
        type=finite(0, above=True),
        default=60.0,
        metavar="S",
        help="the rate limit's window in seconds (default: %(default)g)",
    )
    parser.add_argument(
        "--no-retry-after", action="store_true", help="429s of the rate limit carry no Retry-After"
    )
    _add_emulator_error_options(parser)
    _add_emulator_fault_options(parser)


def _add_emulator_error_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--latency-ms",
        type=finite(0),
        default=0.0,
        metavar="MS",
        help="hold every /track answer MS milliseconds (default: %(default)g)",
    )
    parser.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="answer this fraction of /track requests, 0 to 1, with --error-status "
        "(default: %(default)g)",
    )
    parser.add_argument(
        "--error-status",
        type=int,
        default=503,
        metavar="STATUS",
        help="the status of --error-rate errors, 400 to 599 (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="seed the --error-rate dice for a repeatable run (default: random)",
    )


def _add_emulator_fault_options(parser: argparse.ArgumentParser) -> None:
    outage = parser.add_argument_group("outage (scheduled when --outage-after-s or --outage-s)")
    outage.add_argument(
        "--outage-after-s", type=float, metavar="S", help="start S s after start (default: 0)"
    )
    outage.add_argument("--outage-s", type=float, metavar="S", help="last S s (default: till exit)")
    outage.add_argument(
        "--outage-mode",
        choices=["status", "reset", "refuse"],
        default="status",
        help="answer --outage-status, close unanswered, or stop listening (refused) "
        "(default: %(default)s)",
    )
    outage.add_argument(
        "--outage-status",
        type=int,
        default=503,
        metavar="STATUS",
        help="for --outage-mode status (default: %(default)s)",
    )
    customers = parser.add_argument_group("failing customers")
    customers.add_argument(
        "--fail-customer",
        action="append",
        default=[],
        metavar="ID",
        help="fail every request of this customerExternalId (repeatable)",
    )
    customers.add_argument(
        "--fail-customer-status",
        type=int,
        default=503,
        metavar="STATUS",
        help="the status they get (default: %(default)s)",
    )
    _add_emulator_reply_options(parser)


def _add_emulator_reply_options(parser: argparse.ArgumentParser) -> None:
    replies = parser.add_argument_group("reply faults, on every /track answer")
    replies.add_argument(
        "--trickle-interval-s",
        type=float,
        default=0.0,
        metavar="S",
        help="one body byte per S s (default: %(default)g, all at once)",
    )
    replies.add_argument(
        "--reply-padding-bytes",
        type=int,
        default=0,
        metavar="N",
        help="an N-char padding field (default: %(default)s)",
    )
    replies.add_argument("--endless-reply", action="store_true", help="a chunked body, never ends")
    replies.add_argument(
        "--nested-reply-depth",
        type=int,
        default=0,
        metavar="N",
        help="the body is [[...]] N deep (default: %(default)s, plain JSON)",
    )


def run(args: argparse.Namespace) -> int:
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
            token=None if args.any_token else args.token,
            host=args.host,
            port=args.port,
            rate_limit=args.rate_limit,
            rate_limit_window_s=args.rate_limit_window_s,
            latency_s=args.latency_ms / 1000.0,
            error_rate=args.error_rate,
            error_status=args.error_status,
            seed=args.seed,
            rate_limit_retry_after=not args.no_retry_after,
            trickle_interval_s=args.trickle_interval_s,
            reply_padding_bytes=args.reply_padding_bytes,
            endless_reply=args.endless_reply,
            nested_reply_depth=args.nested_reply_depth,
            log_requests=not args.quiet,
        )
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
