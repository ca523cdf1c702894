"""The ``cms-shipper`` command (also ``python -m cms_shipper``).

``main`` parses and sends one lead or sale; ``args`` has the flag value types and exit
codes; ``emulator``, ``spool`` and ``demo`` are the other subcommands.
"""

from cms_shipper.cli.main import main

__all__ = ["main"]
