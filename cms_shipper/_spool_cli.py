"""``cms-shipper spool status|replay|purge --path FILE``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Optional

from cms_shipper._spool import Spool
from cms_shipper.client import CMSClient

__all__ = ["run_spool"]


def _status(spool: Spool) -> int:
    print(json.dumps(asdict(spool.status()), indent=2))
    return 0


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // total if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _replay(args: argparse.Namespace, token: Optional[str], spool: Spool) -> int:
    """Replay through a normal client (it claims, sends and removes); show progress."""
    total = spool.status().total
    client = CMSClient(token=token, host=args.host, spool_path=args.path,
                       spool_replay_interval_s=0.2, flush_interval_s=0.05)  # fmt: skip
    deadline = time.monotonic() + args.timeout_s
    tty = sys.stderr.isatty()
    while time.monotonic() < deadline:
        stats = client.stats()
        settled = stats["replayed"] - stats["pending"]
        print(("\r" if tty else "") + _bar(min(settled, total), total), end="" if tty else "\n",
              file=sys.stderr, flush=True)  # fmt: skip
        if settled >= total or (spool.status().total == 0 and not stats["pending"]):
            break
        time.sleep(0.25 if tty else 1.0)
    client.close(10.0)
    stats = client.stats()
    left = spool.status().total
    summary = {key: stats[key] for key in ("replayed", "delivered", "duplicate", "rejected",
                                           "failed", "spooled", "dropped")}  # fmt: skip
    summary["left_in_spool"] = left
    print(("\n" if tty else "") + json.dumps(summary, indent=2))
    return 0 if stats["rejected"] == stats["failed"] == 0 and left == 0 else 1


def _purge(args: argparse.Namespace, spool: Spool) -> int:
    total = spool.status().total
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
    print(f"Deleted {spool.purge()} event(s).")
    return 0


def run_spool(args: argparse.Namespace, token: Optional[str]) -> int:
    """Run one spool action; returns the exit status."""
    if not os.path.exists(args.path):
        print(f"cms-shipper: no spool at {args.path}", file=sys.stderr)
        return 2
    spool = Spool(args.path, max_bytes=None)
    try:
        if args.action == "status":
            return _status(spool)
        if args.action == "purge":
            return _purge(args, spool)
        return _replay(args, token, spool)
    finally:
        spool.close()
