"""The README's "Demo and tests" commands and the docs' Frameworks page, run as written.

A section is found by its heading, in the README or in any page under ``docs/``: the one
heading with that title (outside code blocks), up to the next heading of its level or above.
Each "Frameworks" subsection's python blocks are written, exactly as they stand, into a
fresh directory under the file name their first line gives (``# flask_app.py``), then
``apps/readme_frameworks.py`` drives them there in a subprocess: one signup carrying the
``cms_rf`` cookie, through the framework's own test client, against the emulator.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cms_shipper.emulator import Emulator

from .conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]
# The README and every docs page, by path: sections are looked up by heading in all of them.
PAGES = {
    path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
}
DRIVER = Path(__file__).resolve().parent / "apps" / "readme_frameworks.py"
FRAMEWORK_EXAMPLES = ROOT / "examples" / "frameworks"
RUN_TIMEOUT_S = 90.0
RUFF = str(Path(sys.executable).with_name("ruff"))  # installed by the dev extra
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
FILE_NAME = re.compile(r"\A# (\w+\.py)\b")
HEADING = re.compile(r"^(#{1,6}) (.+)$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Frameworks subsection -> the driver's name for it
SECTIONS = {
    "Flask": "flask",
    "Django": "django",
    "FastAPI / Starlette": "fastapi",
    "Celery": "celery",
    "AWS Lambda and other short-lived processes": "lambda",
    "gunicorn and uWSGI": "gunicorn",
}


def headings(text: str) -> list[tuple[int, int, str]]:
    """(offset, level, title) of each Markdown heading of ``text``, outside code blocks.

    (Lines starting "# " inside code blocks are comments, not headings.)
    """
    found: list[tuple[int, int, str]] = []
    offset, fenced = 0, False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            match = HEADING.match(line.rstrip("\n"))
            if match:
                found.append((offset, len(match.group(1)), match.group(2)))
        offset += len(line)
    return found


def section(title: str) -> str:
    """The text of the one section so titled, in the README or a docs page.

    From its heading up to the next heading of its level or above (or the page's end).
    """
    found: list[tuple[str, str]] = []
    for page, text in PAGES.items():
        marks = headings(text)
        for i, (start, level, name) in enumerate(marks):
            if name == title:
                ends = [offset for offset, deeper, _ in marks[i + 1 :] if deeper <= level]
                found.append((page, text[start : ends[0] if ends else len(text)]))
    assert len(found) == 1, f"{len(found)} sections titled {title!r}: {[p for p, _ in found]}"
    return found[0][1]


def subsections(title: str) -> list[str]:
    """The titles of the headings one level below the section's own, in order."""
    (_, level, _), *rest = headings(section(title))
    return [name for _, deeper, name in rest if deeper == level + 1]


def blocks(text: str, *languages: str) -> list[str]:
    """The fenced code blocks of ``text`` in the given languages."""
    return [code for lang, code in FENCE.findall(text) if lang in languages]


def framework_files(title: str) -> dict[str, str]:
    """The section's python blocks by the file name their first line gives."""
    files: dict[str, str] = {}
    for code in blocks(section(title), "python"):
        name = FILE_NAME.match(code)
        assert name, f"{title}: a python block does not say which file it is:\n{code}"
        files[name.group(1)] = code
    return files


def env_for(emulator: Emulator, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    env.update({"CMS_HOST": emulator.url, "CMS_BEARER_TOKEN": TOKEN, **extra})
    env.pop("PYTHONPATH", None)  # the written files come from the cwd only
    return env


def test_the_frameworks_section_has_exactly_the_subsections_driven_here() -> None:
    titles = subsections("Frameworks")
    assert titles == list(SECTIONS)


@pytest.mark.parametrize("title", list(SECTIONS))
def test_each_framework_section_shows_imports_and_how_to_run(title: str) -> None:
    text = section(title)
    files = framework_files(title)
    assert files, title
    for name, code in files.items():
        # Every name the block uses is defined or imported in it (ruff's undefined-name).
        lint = subprocess.run(
            [RUFF, "check", "--no-cache", "--isolated", "--select", "F821",
             "--output-format", "concise", "--stdin-filename", name, "-"],
            input=code, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert lint.returncode == 0, f"{title}: {name}: {lint.stdout}{lint.stderr}"
        imports = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
        example = FRAMEWORK_EXAMPLES / name
        if example.exists():  # the page's imports are the example's own
            source = example.read_text(encoding="utf-8")
            assert [line for line in imports if line not in source] == [], (title, name)
    commands = "\n".join(blocks(text, "bash", "sh"))
    assert commands, f"{title}: no command to run it"


@pytest.mark.parametrize("title", list(SECTIONS))
def test_each_framework_section_runs_as_written(
    title: str, cms_emulator: Emulator, tmp_path: Path
) -> None:
    framework = SECTIONS[title]
    files = framework_files(title)
    if framework == "gunicorn":  # gunicorn_conf.py imports the Flask section's app
        files = {**framework_files("Flask"), **files}
    for name, code in files.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    user, click = f"readme_{framework}_user", f"clk_readme_{framework}"
    done = subprocess.run(
        [sys.executable, str(DRIVER), framework, user, click],
        cwd=tmp_path, env=env_for(cms_emulator), capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["flushed"] is True, outcome
    if framework in ("flask", "django", "fastapi", "gunicorn"):
        assert outcome["reply"] == {"tracked": True}, outcome
    assert cms_emulator.wait_for_events(1, timeout_s=15.0)
    (lead,) = cms_emulator.events
    assert lead.endpoint == "lead"
    assert lead.payload["customerExternalId"] == user
    assert (lead.payload["clickId"], lead.payload["mode"]) == (click, "deferred")


def test_the_django_sections_start_up_error_is_what_django_prints(
    cms_emulator: Emulator,
) -> None:
    env = env_for(cms_emulator)
    del env["CMS_BEARER_TOKEN"]
    done = subprocess.run(
        [sys.executable, "django_app.py", "check"], cwd=FRAMEWORK_EXAMPLES, env=env,
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    (shown,) = [b for b in blocks(section("Django"), "") if "cms_shipper.E001" in b]
    for line in shown.strip().splitlines()[1:]:  # below "ERRORS:", what Django prints
        assert line in done.stderr, (line, done.stderr)


def test_the_demo_and_tests_section_installs_only_what_each_command_needs() -> None:
    demo, tests = blocks(section("Demo and tests"), "bash")
    assert demo.strip() == "pip install -e . && cms-shipper demo"
    assert tests.strip() == "pip install -e '.[dev]' && python -m pytest"


def test_the_demo_tracks_exactly_the_events_asked_and_explains_its_counts() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMS_")}
    done = subprocess.run(
        [sys.executable, "-m", "cms_shipper", "demo", "--events", "150"], env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Outcomes (tracked 150):" in done.stdout, done.stdout
    assert "tracked 150 calls" not in done.stdout
    # The latency line counts the same calls: those timed and the threads' warm-up calls.
    timed = re.search(
        r"\((\d+) calls; each thread's first call, its warm-up \((\d+) calls", done.stdout
    )
    assert timed and int(timed.group(1)) + int(timed.group(2)) == 150, done.stdout
    assert "None" not in done.stdout  # the lost answers are named, not shown as None
    # The emulator loses 2 answers after recording; the summary says what they are.
    assert "no answer x2 (recorded, then the connection closed: a lost answer)" in done.stdout


def test_the_use_sections_printed_result_is_the_one_it_prints(cms_emulator: Emulator) -> None:
    (code,) = blocks(section("Use"), "python")
    (shown,) = blocks(section("Use"), "text")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env_for(cms_emulator),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    event_id = re.compile(r"evt_[0-9a-f]{12}_\d+")
    printed = done.stdout.splitlines()[0]
    assert event_id.search(printed) and event_id.search(shown), (printed, shown)
    assert event_id.sub("evt_ID", printed) == event_id.sub("evt_ID", shown.strip())
    # As the README says: queued, and the API later refused the placeholder token; the
    # events waited for a token it accepts, and the exit hook dropped them saying why.
    assert "'queued': True" in printed
    assert "the API refused the token (HTTP 401)" in done.stderr, done.stderr
    assert "2 event(s) not delivered at close: the API refused the token" in done.stderr


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of ``text`` (``## What `success` means``:
    ``what-success-means``; a repeated one gets ``-1``, ``-2``...)."""
    found: set[str] = set()
    for _, _, title in headings(text):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n, unique = 0, slug
        while unique in found:
            n += 1
            unique = f"{slug}-{n}"
        found.add(unique)
    return found


def test_every_relative_link_of_the_readme_and_the_docs_resolves() -> None:
    broken: list[str] = []
    for page, text in PAGES.items():
        for target in LINK.findall(FENCE.sub("", text)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (ROOT / page).parent / path if path else ROOT / page
            if not file.exists():
                broken.append(f"{page}: {target}: no such file")
            elif anchor and anchor not in anchors(file.read_text(encoding="utf-8")):
                broken.append(f"{page}: {target}: no such heading")
    assert broken == []


def test_the_license_is_the_mit_license_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the cms-shipper authors" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
