"""Settings every test shares: hypothesis runs quietly and writes nothing into the repo."""

from __future__ import annotations

from hypothesis import Verbosity, settings

# No example database (it would be written to .hypothesis/), no per-example deadline (the
# machine may be loaded by other tests), and no output beyond a failure's own report.
settings.register_profile(
    "cms", database=None, deadline=None, verbosity=Verbosity.quiet, print_blob=False
)
settings.load_profile("cms")
