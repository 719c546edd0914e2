"""`carl --batch ledger …`: JSON shapes on stdout, exit codes per the contract."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

from carl_tui.batch import main
from engine import ledger
from engine.home import CarlHome
from engine.ledger import Ledger
from tests.conftest import REPO

T0 = 1_750_000_000.0


def _run(*argv: str, stdin: str | None = None) -> tuple[int, object, list]:
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["ledger", *argv])
    finally:
        sys.stdin = old_stdin
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    errs = [json.loads(ln) for ln in err.getvalue().splitlines() if ln.startswith("{")]
    return code, (json.loads(lines[0]) if lines else None), errs


def test_init_status_show_verify():
    code, out, _ = _run("init")
    assert code == 0 and out["created"] is True and out["genesis"]["index"] == 0 and len(out["signer"]) == 64
    assert _run("init")[1]["created"] is False
    for i in range(5):
        ledger.record("run.start" if i % 2 else "checkpoint", {"run_id": f"r{i % 2}", "i": i}, ts=T0 + i)
    code, st, _ = _run("status")
    assert code == 0 and st["blocks"] == 6 and st["head"]["index"] == 5 and st["key_present"]
    code, shown, _ = _run("show", "--last", "2")
    assert code == 0 and [b["index"] for b in shown["blocks"]] == [4, 5] and shown["total"] == 6
    assert set(shown["blocks"][0]) == {"index", "ts", "prev_hash", "action", "payload", "payload_hash", "hash",
                                       "signer", "signature"}
    assert _run("show", "--action", "run.start")[1]["count"] == 2
    assert _run("show", "--run", "r0")[1]["count"] == 3
    code, v, _ = _run("verify")
    assert code == 0 and v == {"ok": True, "blocks": 6, "first_bad": None, "reason": None, "kind": None,
                               "segment": None, "head": st["head"]["hash"]}


def test_verify_broken_chain_exits_1_with_first_bad():
    _run("init")
    for i in range(4):
        ledger.record("eval", {"run_id": "r", "pass": True, "i": i}, ts=T0 + i)
    seg = Ledger().segments()[0]
    seg.write_bytes(seg.read_bytes().replace(b'"i":2', b'"i":7'))
    code, v, _ = _run("verify")
    assert code == 1 and v["ok"] is False and v["first_bad"] == 3 and v["kind"] == "payload_hash_mismatch"
    assert v["reason"].startswith("payload hash mismatch")


def test_verify_without_public_key_is_a_credential_error():
    _run("init")
    shutil.rmtree(CarlHome.from_env().keys)
    code, out, errs = _run("verify")
    assert code == 3 and out is None and errs[0]["error"]["code"] == "carl.credential"


def test_export_then_third_party_verify_with_pubkey(tmp_path):
    _run("init")
    ledger.record("push", {"repo": "me/model"}, ts=T0)
    code, out, _ = _run("export", str(tmp_path / "audit"))
    assert code == 0 and out["blocks"] == 2 and (tmp_path / "audit" / "ledger.pub").is_file()
    code, v, _ = _run("verify", "--dir", str(tmp_path / "audit"))
    assert code == 0 and v["ok"] and v["blocks"] == 2
    # an explicit foreign key: the genesis signer is unknown
    other = "ab" * 32
    code, v, _ = _run("verify", "--dir", str(tmp_path / "audit"), "--pubkey", other)
    assert code == 1 and v["kind"] == "unknown_signer" and v["first_bad"] == 0
    code, _, errs = _run("export", str(tmp_path / "audit"))
    assert code == 2 and errs[0]["error"]["code"] == "carl.validation"
    code, _, errs = _run("verify", "--pubkey", "nothex")
    assert code == 2


def test_evaluate_exit_0_with_decision_and_errors(tmp_path, monkeypatch):
    action = {"kind": "remote.submit", "backend": "hf", "flavor": "a10g-large", "estimated_usd": 3.2}
    code, d, _ = _run("evaluate", "--action", json.dumps(action))
    assert code == 0 and d["decision"] == "needs_approval" and d["rule"] == "paid_needs_approval"
    assert set(d) == {"decision", "rule", "reason", "kind", "context"}
    code, d, _ = _run("evaluate", "--action", "-", stdin=json.dumps({**action, "approved": True}))
    assert code == 0 and d["decision"] == "allow"
    code, d, _ = _run("evaluate", "--action", json.dumps({**action, "estimated_usd": 40, "approved": True}),
                      "--set", "budget.max_usd_per_job=50")
    assert code == 0 and (d["decision"], d["rule"]) == ("deny", "budget.max_usd_per_day")
    (tmp_path / "carl.yaml").write_text("policy:\n  allowed_backends: [runpod]\n")
    monkeypatch.chdir(tmp_path)
    code, d, _ = _run("evaluate", "--action", json.dumps(action))
    assert code == 0 and d["rule"] == "allowed_backends"
    (tmp_path / "carl.yaml").write_text("policy:\n  allowed_backend: [runpod]\n")
    code, _, errs = _run("evaluate", "--action", json.dumps(action))
    assert code == 2 and errs[0]["error"]["code"] == "carl.config" and "policy.allowed_backend" in errs[0]["error"]["message"]
    code, _, errs = _run("evaluate", "--action", "{not json")
    assert code == 2 and errs[0]["error"]["code"] == "carl.validation"
    assert not Ledger().segments()  # evaluate never appends


def test_rotate_key_and_usage_errors():
    code, _, errs = _run("rotate-key")
    assert code == 2  # empty ledger: nothing to rotate
    _run("init")
    code, out, _ = _run("rotate-key")
    assert code == 0 and out["signer"] != out["previous"] and out["block"]["action"] == "key.rotate"
    ledger.record("run.start", {"run_id": "x"})
    assert _run("verify")[0] == 0
    assert _run()[0] == 2  # missing subcommand
    assert _run("show", "--last", "0")[0] == 2


def test_real_process_exit_codes_and_no_heavy_imports():
    env = {**os.environ}
    probe = ("import sys, json; from carl_tui.cli import main; code = main(['--batch','ledger','status']); "
             "heavy=[m for m in ('torch','transformers','textual','trl') if m in sys.modules]; "
             "print(json.dumps({'code': code, 'heavy': heavy}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last == {"code": 0, "heavy": []}
