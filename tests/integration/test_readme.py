"""The README's Quick start and Frameworks sections, run as written.

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
README = (ROOT / "README.md").read_text(encoding="utf-8")
DRIVER = Path(__file__).resolve().parent / "apps" / "readme_frameworks.py"
FRAMEWORK_EXAMPLES = ROOT / "examples" / "frameworks"
RUN_TIMEOUT_S = 90.0
RUFF = str(Path(sys.executable).with_name("ruff"))  # installed by the dev extra
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
FILE_NAME = re.compile(r"\A# (\w+\.py)\b")
# README subsection -> the driver's name for it
SECTIONS = {
    "Flask": "flask",
    "Django": "django",
    "FastAPI / Starlette": "fastapi",
    "Celery": "celery",
    "AWS Lambda and other short-lived processes": "lambda",
    "gunicorn and uWSGI": "gunicorn",
}


def section(title: str, level: str = "##") -> str:
    """The text of a README section, up to the next heading of its level or above."""
    start = README.index(f"\n{level} {title}\n")
    # (no "#" level: lines starting "# " are comments inside the code blocks)
    stops = [README.find(f"\n{h} ", start + 1) for h in ("##", level)]
    ends = [i for i in stops if i != -1]
    return README[start : min(ends) if ends else len(README)]


def blocks(text: str, *languages: str) -> list[str]:
    """The fenced code blocks of ``text`` in the given languages."""
    return [code for lang, code in FENCE.findall(text) if lang in languages]


def framework_files(title: str) -> dict[str, str]:
    """The section's python blocks by the file name their first line gives."""
    files: dict[str, str] = {}
    for code in blocks(section(title, "###"), "python"):
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
    titles = re.findall(r"^### (.+)$", section("Frameworks"), re.MULTILINE)
    assert titles == list(SECTIONS)


@pytest.mark.parametrize("title", list(SECTIONS))
def test_each_framework_section_shows_imports_and_how_to_run(title: str) -> None:
    text = section(title, "###")
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
        if example.exists():  # the README's imports are the example's own
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
    (shown,) = [b for b in blocks(section("Django", "###"), "") if "cms_shipper.E001" in b]
    for line in shown.strip().splitlines()[1:]:  # below "ERRORS:", what Django prints
        assert line in done.stderr, (line, done.stderr)


def test_quick_start_installs_only_what_each_command_needs() -> None:
    demo, tests = blocks(section("Quick start"), "bash")
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
    assert "(150 calls)" in done.stdout  # the latency line counts the same calls
    assert "None" not in done.stdout  # the lost answers are named, not shown as None
    # The emulator loses 2 answers after recording; the summary says what they are.
    assert "no answer x2 (recorded, then the connection closed: a lost answer)" in done.stdout


def test_the_license_is_the_mit_license_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the cms-shipper authors" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
