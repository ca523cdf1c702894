"""``python -m cms_shipper``: the same as the ``cms-shipper`` command."""

import sys

from cms_shipper.cli import main

sys.exit(main())
