"""Values the ``cms-shipper`` flags take: argparse types whose errors the user can act on."""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

from cms_shipper._events import check_amount
from cms_shipper.errors import ValidationError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "amount", "finite", "port"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def finite(minimum: float, *, above: bool = False) -> Callable[[str], float]:
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


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return int(text)


def amount(text: str) -> int:
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
