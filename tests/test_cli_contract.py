"""The batch-mode contract (../shared/CONTRACT.md) as seen by a script: real `python -m carl_tui` subprocesses.

stdout carries only JSON, errors are one JSON object on stderr, exit codes follow the contract, and no bad
input ever produces a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from carl_tui.batch import verb_modules
from tests.conftest import REPO

HF = "hf_" + "S3cr3tHfT0ken" * 3 + "wxyz"
ANTHROPIC = "sk-ant-api03-" + "AnthropicSecretKey" * 3 + "-9z8y"
RUNPOD = "rpa_" + "RunPodSecretKey" * 3 + "QRST"


def carl(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("CARL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "carl_tui", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def ok_json(res) -> dict:
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout
    return json.loads(lines[0])


def error_json(res, exit_code: int, code: str) -> dict:
    assert res.returncode == exit_code, (res.returncode, res.stdout, res.stderr)
    assert res.stdout == "", res.stdout
    assert "Traceback" not in res.stderr
    err_lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("{")]
    assert len(err_lines) == 1, res.stderr
    err = json.loads(err_lines[0])["error"]
    assert set(err) == {"code", "message", "hint", "context"}
    assert err["code"] == code and err["message"] and "\n" not in err["message"]
    return err


# -------------------------------------------------------------------------------------------- help, version
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["--batch", "--help"]])
def test_help_and_version_exit_0(args):
    res = carl(*args)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() and "Traceback" not in res.stderr
    if "--version" in args:
        assert res.stdout.startswith("carl ")


def carl_here(capsys, *args: str):
    """What `python -m carl_tui ARGS` runs (carl_tui.cli.main), in this process: (exit code, stdout, stderr).
    For the per-verb help pages; the process boundary is checked on the top-level help above."""
    from carl_tui.cli import main

    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as exc:  # argparse's --help, as in `raise SystemExit(main())`
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("verb", verb_modules())
def test_every_verb_has_help(verb, capsys):
    rc, out, err = carl_here(capsys, "--batch", verb, "--help")
    assert rc == 0, err
    assert "usage:" in out and "Traceback" not in err


def test_project_subcommands_have_help(capsys):
    for sub in ("init", "validate"):
        rc, out, err = carl_here(capsys, "--batch", "project", sub, "--help")
        assert rc == 0 and "usage:" in out, err


# -------------------------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args", [
    ["--batch", "no-such-verb"],
    ["--batch", "--bogus"],
    ["--batch", "project", "init", "--bogus"],
    ["--batch", "project", "init", "--preset", "huge"],
    ["--batch", "project", "frobnicate"],
    ["--batch", "project"],
    ["--batch", "doctor", "--nope"],
])
def test_bad_usage_is_carl_validation_exit_2(args, tmp_path):
    err = error_json(carl(*args, cwd=tmp_path), 2, "carl.validation")
    assert err["hint"]


# -------------------------------------------------------------------------------------------- project
def test_project_init_writes_preset_and_refuses_to_overwrite(tmp_path):
    out = ok_json(carl("--batch", "project", "init", "--preset", "lora-7b", "--dir", str(tmp_path / "p")))
    path = tmp_path / "p" / "carl.yaml"
    assert set(out) == {"path", "preset", "config"}
    assert out["path"] == str(path.resolve()) and out["preset"] == "lora-7b"
    assert out["config"]["lora"]["enabled"] is True
    assert yaml.safe_load(path.read_text()) == out["config"]

    err = error_json(carl("--batch", "project", "init", "--dir", str(tmp_path / "p")), 2, "carl.validation")
    assert "already exists" in err["message"] and "--force" in err["hint"]
    assert yaml.safe_load(path.read_text())["project"]["name"] == "carl-lora-7b"  # untouched

    out = ok_json(carl("--batch", "project", "init", "--dir", str(tmp_path / "p"), "--force",
                       "--name", "mine", "--set", "grpo.max_steps=9"))
    assert out["preset"] == "tiny-cpu" and out["config"]["project"]["name"] == "mine"
    assert yaml.safe_load(path.read_text())["grpo"]["max_steps"] == 9


def test_project_init_defaults_to_cwd(tmp_path):
    out = ok_json(carl("--batch", "project", "init", cwd=tmp_path))
    assert Path(out["path"]) == (tmp_path / "carl.yaml").resolve() and out["preset"] == "tiny-cpu"


def test_project_show_resolves_config_and_overrides(tmp_path):
    out = ok_json(carl("--batch", "project", "show", cwd=tmp_path))
    assert out["path"] is None and out["config"]["model"]["name_or_path"] == "builtin:tiny"
    (tmp_path / "carl.yaml").write_text("project:\n  name: here\ngrpo:\n  max_steps: 12\n")
    out = ok_json(carl("--batch", "project", "show", cwd=tmp_path))
    assert out["path"] == str((tmp_path / "carl.yaml").resolve())
    assert out["config"]["project"]["name"] == "here" and out["config"]["grpo"]["max_steps"] == 12
    assert out["config"]["grpo"]["num_generations"] == 8  # defaults filled in
    out = ok_json(carl("--batch", "project", "show", "--set", "grpo.max_steps=3", "--set", "lora.enabled=true",
                       cwd=tmp_path))
    assert out["config"]["grpo"]["max_steps"] == 3 and out["config"]["lora"]["enabled"] is True


def test_project_show_set_with_bad_type_names_the_field(tmp_path):
    err = error_json(carl("--batch", "project", "show", "--set", "grpo.max_steps=many", cwd=tmp_path),
                     2, "carl.config")
    assert err["context"]["errors"][0]["field"] == "grpo.max_steps"
    assert err["context"]["errors"][0]["value"] == "many"
    assert "grpo.max_steps" in err["message"]


def test_project_validate_happy_and_sad(tmp_path):
    cfg = tmp_path / "carl.yaml"
    ok_json(carl("--batch", "project", "init", cwd=tmp_path))
    out = ok_json(carl("--batch", "project", "validate", cwd=tmp_path))
    assert out["ok"] is True and out["path"] == str(cfg.resolve())

    cfg.write_text("project:\n  name: x\ngrpo:\n  batch_size: 30\n  max_stepz: 3\nlora:\n  r: 0\n"
                   "cascade:\n  mode: sometimes\n")
    err = error_json(carl("--batch", "project", "validate", "--config", str(cfg)), 2, "carl.config")
    fields = {e["field"]: e for e in err["context"]["errors"]}
    assert {"grpo.max_stepz", "lora.r", "cascade.mode"} <= set(fields)
    assert all(set(e) >= {"field", "value", "message"} for e in err["context"]["errors"])
    assert fields["lora.r"]["value"] == 0 and fields["cascade.mode"]["value"] == "sometimes"
    assert "unknown key" in fields["grpo.max_stepz"]["message"]

    # the cross-field check names its field once the section's fields are individually valid
    cfg.write_text("grpo:\n  batch_size: 30\n")
    err = error_json(carl("--batch", "project", "validate", cwd=tmp_path), 2, "carl.config")
    assert err["context"]["errors"] == [{"field": "grpo.batch_size", "value": 30,
                                         "message": "must be a multiple of num_generations (8)"}]
    assert "(got 30)" in err["message"]

    # --set can fix it, or break it
    ok_json(carl("--batch", "project", "validate", "--set", "grpo.batch_size=32", cwd=tmp_path))
    err = error_json(carl("--batch", "project", "validate", "--set", "grpo.batch_size=32",
                          "--set", "grpo.learning_rate=fast", cwd=tmp_path), 2, "carl.config")
    assert err["context"]["errors"][0]["field"] == "grpo.learning_rate"


def test_project_validate_yaml_syntax_error_and_missing_file(tmp_path):
    (tmp_path / "carl.yaml").write_text("grpo:\n  max_steps: [1,\n  x: 2\n")
    err = error_json(carl("--batch", "project", "validate", cwd=tmp_path), 2, "carl.config")
    assert "line" in err["context"] and "column" in err["context"]
    empty = tmp_path / "empty"
    empty.mkdir()
    err = error_json(carl("--batch", "project", "validate", cwd=empty), 2, "carl.config")
    assert "project init" in err["hint"]
    error_json(carl("--batch", "project", "show", "--config", str(tmp_path / "none.yaml")), 2, "carl.config")


def test_project_presets_lists_all():
    out = ok_json(carl("--batch", "project", "presets"))
    names = [p["name"] for p in out["presets"]]
    assert names[:3] == ["tiny-cpu", "lora-7b", "full-gpu"]
    assert all(p["description"] for p in out["presets"])


# -------------------------------------------------------------------------------------------- doctor
def test_doctor_shape_and_masked_credentials(tmp_path):
    env = {"HF_TOKEN": HF, "ANTHROPIC_API_KEY": ANTHROPIC, "RUNPOD_API_KEY": RUNPOD,
           "HF_HOME": str(tmp_path / "hf"), "CARL_HOME": str(tmp_path / "home")}
    res = carl("--batch", "doctor", cwd=tmp_path, env=env)
    for secret in (HF, ANTHROPIC, RUNPOD):
        assert secret not in res.stdout and secret not in res.stderr
        assert secret[len(secret) // 3: len(secret) // 3 + 10] not in res.stdout  # no middle chunk either
    out = json.loads(res.stdout)
    assert set(out) == {"checks", "blockers"}
    assert all(set(c) == {"name", "status", "detail"} and c["status"] in ("ok", "warn", "fail")
               for c in out["checks"])
    assert out["blockers"] == sum(c["status"] == "fail" for c in out["checks"])
    assert res.returncode == (1 if out["blockers"] else 0)
    checks = {c["name"]: c for c in out["checks"]}
    for name in ("python", "torch", "cuda", "mps", "carl_home", "disk", "lib.transformers", "lib.trl",
                 "lib.peft", "lib.trackio", "lib.anthropic", "lib.mcp", "lib.pynacl", "lib.textual",
                 "credential.huggingface", "credential.anthropic", "credential.runpod", "config"):
        assert name in checks, name
    assert checks["credential.huggingface"]["detail"] == f"set (hf_…wxyz, {len(HF)} chars) from HF_TOKEN"
    assert checks["credential.anthropic"]["detail"].startswith("set (sk-ant-…9z8y")
    assert checks["credential.runpod"]["detail"].startswith("set (rpa_…QRST")
    assert checks["carl_home"]["status"] == "ok" and str(tmp_path / "home") in checks["carl_home"]["detail"]
    assert checks["torch"]["status"] == "ok"
    assert "hardware" in checks and "RAM" in checks["hardware"]["detail"]  # GPUs per device, or "no GPU (…)"


def test_doctor_fails_with_unwritable_home_and_warns_on_missing_credentials(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    env = {"CARL_HOME": str(blocker / "home"), "HF_HOME": str(tmp_path / "hf")}
    res = carl("--batch", "doctor", cwd=tmp_path, env=env)
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    checks = {c["name"]: c for c in out["checks"]}
    assert checks["carl_home"]["status"] == "fail" and out["blockers"] >= 1
    for cred in ("huggingface", "anthropic", "runpod"):
        assert checks[f"credential.{cred}"]["status"] == "warn"
        assert checks[f"credential.{cred}"]["detail"].startswith("not set")
