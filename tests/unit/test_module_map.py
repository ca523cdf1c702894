"""docs/architecture.md's module map is generated from the code, so it cannot drift.

Each module's line is the first line of its docstring. After adding, moving or
re-describing a module, rewrite the map with ``python tests/unit/test_module_map.py``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
START, END = "<!-- module-map:start -->", "<!-- module-map:end -->"


def generated_map() -> str:
    """The map: one line per module of the package, grouped by sub-package."""
    lines: list[str] = []
    package = ROOT / "cms_shipper"
    for path in sorted(package.rglob("*.py"), key=lambda p: (p.parent != package, str(p))):
        relative = path.relative_to(ROOT).as_posix()
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"
        lines.append(f"| `{relative}` | {first.replace('|', '/')} |")
    return "\n".join(["| module | what it is |", "|---|---|", *lines])


def documented_map() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def test_the_module_map_matches_the_code() -> None:
    assert documented_map() == generated_map(), (
        "docs/architecture.md's module map is stale: run python tests/unit/test_module_map.py"
    )


def test_every_module_has_a_docstring() -> None:
    assert "(no docstring)" not in generated_map()


if __name__ == "__main__":
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{START}\n{generated_map()}\n{END}{tail}", encoding="utf-8")
    sys.stdout.write(f"rewrote the module map in {DOC}\n")
