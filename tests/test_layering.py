"""The layering contracts of pyproject.toml ([tool.importlinter]) hold, and fast commands import nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_import_linter_contracts_hold():
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                          "lint_imports_command()"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


PROBE = """
import sys, io, contextlib, json
from carl_tui.cli import main
buf = io.StringIO()
code = None
with contextlib.redirect_stdout(buf):
    try:
        code = main({argv!r})
    except SystemExit as e:
        code = e.code
heavy = sorted(m for m in ("torch", "transformers", "trl", "textual", "anthropic", "peft", "datasets")
               if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy, "out": buf.getvalue()[:200]}}))
"""


def _run(argv):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_version_batch_help_import_nothing_heavy():
    for argv in (["--help"], ["--version"], ["--batch", "--help"]):
        res = _run(argv)
        assert res["code"] in (0, None), res
        assert res["heavy"] == [], f"{argv} imported {res['heavy']}"
        assert res["out"], argv


def test_plain_carl_off_a_tty_prints_help_and_exits_0():
    out = subprocess.run([sys.executable, "-m", "carl_tui"], cwd=REPO, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0
    assert "usage:" in out.stdout and "--batch" in out.stdout
