"""``cms-shipper spool status|replay|purge --path FILE``.

Exit status: 0 done; 1 events left or refused (replay), purge declined, or the spool could
not be used; 2 a usage error (no file, not a spool, purge without ``--yes`` or a terminal).
``status`` opens the file read-only and changes nothing. ``replay`` returns within
``--timeout-s`` (plus process start-up), prints counts that add up and, when events are
left, the cause. No action moves or rewrites a file that is not a spool.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from typing import Optional

from cms_shipper._spool import Spool, SpoolError, SpoolStatus, Unreadable, read_status
from cms_shipper.client import CMSClient

__all__ = ["run_spool"]


class _LastProblem(logging.Handler):
    """Keeps the last message about an event not delivered: the cause to show the user."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.message: Optional[str] = None

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING or "not delivered" in text:
            self.message = text


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _replay(args: argparse.Namespace, token: Optional[str], before: SpoolStatus) -> int:
    """Replay through a normal client (it claims, sends and removes); show progress."""
    started = time.monotonic()
    deadline = started + max(0.0, args.timeout_s)
    # close() gets the last part of the budget, so the command ends by its deadline.
    stop_at = deadline - min(1.0, max(0.0, args.timeout_s) / 4)
    total = before.total
    problem = _LastProblem()
    log = logging.getLogger("cms_shipper")
    level = log.level
    log.addHandler(problem)
    log.setLevel(min(level or logging.INFO, logging.INFO))  # "spooled again" lines say why
    client = CMSClient(
        token=token,
        host=args.host,
        spool_path=args.path,
        spool_replay_interval_s=0.2,
        flush_interval_s=0.05,
    )
    client.flush(0)  # starts replay (a client starts it at its first event or flush)
    tty = sys.stderr.isatty()
    try:
        while True:
            stats = client.stats()
            final = sum(stats[k] for k in ("delivered", "duplicate", "rejected", "failed"))
            print(
                ("\r" if tty else "") + _bar(min(final, total), total),
                end="" if tty else "\n",
                file=sys.stderr,
                flush=True,
            )
            if final >= total or time.monotonic() >= stop_at:
                break
            time.sleep(min(0.25 if tty else 1.0, max(0.0, stop_at - time.monotonic())))
        client.close(max(0.0, deadline - time.monotonic()))
    finally:
        log.removeHandler(problem)
        log.setLevel(level)
    stats = client.stats()
    left = read_status(args.path).total
    removed = {
        key: stats[key] for key in ("delivered", "duplicate", "rejected", "failed", "dropped")
    }
    summary: dict[str, object] = {"in_spool_before": total, **removed, "left_kept": left}
    # in_spool_before + added_by_others = delivered + ... + dropped + left_kept
    summary["added_by_others"] = sum(removed.values()) + left - total
    summary["attempts"] = stats["replayed"]  # an event sent again after a failure counts twice
    summary["attempts_spooled_again"] = stats["spooled"]
    if left:
        summary["cause"] = stats.get("circuit_cause") or problem.message or "unknown"
    print(("\n" if tty else "") + json.dumps(summary, indent=2))
    if left:
        print(
            f"cms-shipper: {left} event(s) left in the spool: {summary['cause']}", file=sys.stderr
        )
    return 0 if stats["rejected"] == stats["failed"] == 0 and left == 0 else 1


def _purge(args: argparse.Namespace, total: int) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "cms-shipper: refusing to purge without --yes (no terminal to ask)", file=sys.stderr
            )
            return 2
        answer = input(f"Delete {total} event(s) from {args.path}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return 1
    spool = Spool(args.path, max_bytes=None)
    try:
        print(f"Deleted {spool.purge()} event(s).")
    finally:
        spool.close()
    return 0


def run_spool(args: argparse.Namespace, token: Optional[str]) -> int:
    """Run one spool action; returns the exit status."""
    if not os.path.exists(args.path):
        print(f"cms-shipper: no spool at {args.path}", file=sys.stderr)
        return 2
    try:
        status = read_status(args.path)  # read-only: proves it is a spool, changes nothing
        if args.action == "status":
            print(json.dumps(asdict(status), indent=2))
            return 0
        if args.action == "purge":
            return _purge(args, status.total)
        return _replay(args, token, status)
    except Unreadable as exc:  # the user's --path is wrong: a usage error, like no file
        print(f"cms-shipper: {args.path} is not a spool ({exc}); left unchanged", file=sys.stderr)
        return 2
    except SpoolError as exc:
        print(f"cms-shipper: {exc}", file=sys.stderr)
        return 1
