"""The hash chain: appends, verification, every kind of tampering caught at the right index, concurrency,
segment rotation, redaction."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import ledger
from engine.errors import LedgerBrokenChain, LedgerLocked, ValidationError
from engine.home import CarlHome
from engine.ledger import Ledger, chain, keys
from engine.ledger.canonical import canonical, normalise
from tests.conftest import REPO

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z


def _fill(led: Ledger, n: int, *, t0: float = T0) -> list[dict]:
    led.init(seed="alice", ts=t0)
    return led.append_many([("run.start" if i % 3 == 0 else "checkpoint",
                             {"run_id": f"run-{i % 4}", "step": i, "loss": 0.5 / (i + 1), "note": "é ✓ 1e-07"},
                             t0 + i + 1) for i in range(n)])


def _lines(led: Ledger) -> list[bytes]:
    return b"".join(p.read_bytes() for p in led.segments()).splitlines(keepends=True)


def _rewrite(led: Ledger, lines: list[bytes]) -> None:
    for p in led.segments():
        p.unlink()
    (led.dir / "segment-000000.jsonl").write_bytes(b"".join(lines))


# ------------------------------------------------------------------------------------------- basics
def test_record_auto_initialises_key_and_genesis_and_returns_the_block():
    home = CarlHome.from_env()
    assert not keys.has_key(home)
    b = ledger.record("run.start", {"run_id": "r1", "config": {"lr": 0.0002}}, ts=T0)
    assert set(b) == set(chain.BLOCK_FIELDS)
    assert b["index"] == 1 and b["ts"] == "2025-06-15T15:06:40.000Z"
    first = next(Ledger(home).iter_blocks())
    assert first["index"] == 0 and first["action"] == "ledger.genesis" and first["prev_hash"] == "0" * 64
    assert b["prev_hash"] == first["hash"]
    assert b["signer"] == keys.load_signer(home).public
    # the stored line is the canonical encoding, byte for byte
    assert _lines(Ledger(home))[1] == canonical(b) + b"\n"
    res = ledger.verify()
    assert res.ok and res.blocks == 2 and res.first_bad is None and res.head == b["hash"]


def test_hashes_follow_the_documented_formula():
    import hashlib

    b = ledger.record("eval", {"run_id": "r", "pass": True, "metrics": {"acc": 0.75}}, ts=T0)
    enc = json.dumps(b["payload"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert b["payload_hash"] == hashlib.sha256(enc).hexdigest()
    body = {k: b[k] for k in chain.BODY_FIELDS}
    enc = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert b["hash"] == hashlib.sha256(enc).hexdigest()
    assert keys.verify_signature(b["signer"], b["hash"].encode("ascii"), b["signature"])


def test_module_clock_is_injectable(monkeypatch):
    monkeypatch.setattr(chain, "clock", lambda: T0 + 0.25)
    assert ledger.record("run.stop", {"run_id": "r"})["ts"] == "2025-06-15T15:06:40.250Z"


def test_bad_action_names_and_payloads_are_validation_errors():
    for bad in ("", "Run.Start", "run..start", "run start", 5):
        with pytest.raises(ValidationError):
            ledger.record(bad, {})  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ledger.record("run.start", ["not", "a", "dict"])  # type: ignore[arg-type]
    for reserved in ("key.rotate", "ledger.genesis"):
        with pytest.raises(ValidationError):
            ledger.record(reserved, {})


def test_record_nowait_returns_a_future_in_order():
    futs = [ledger.record_nowait("chat.tool_call", {"name": "list_runs", "i": i}, ts=T0 + i) for i in range(5)]
    blocks = [f.result(timeout=30) for f in futs]
    assert [b["payload"]["i"] for b in blocks] == list(range(5))
    assert [b["index"] for b in blocks] == [1, 2, 3, 4, 5]
    assert ledger.verify().ok


def test_show_filters_by_action_and_run():
    led = Ledger()
    _fill(led, 12)
    assert {b["action"] for b in led.blocks(action="run.start")} == {"run.start"}
    assert len(led.blocks(action="run.")) == 4
    assert all(b["payload"]["run_id"] == "run-1" for b in led.blocks(run="run-1"))
    assert [b["index"] for b in led.blocks(last=3)] == [10, 11, 12]


# ------------------------------------------------------------------------------------------- redaction
def test_no_secret_reaches_disk():
    secrets = ["hf_AbCdEfGhIjKlMnOpQrSt", "sk-ant-api03-SECRETSECRETSECRET", "rpa_ZYXWVUTSRQPONM", "hunter2hunter2"]
    ledger.record("job.submit", {
        "backend": "hf", "job_id": "j1", "estimated_usd": 1.5,
        "env": {"HF_TOKEN": secrets[0], "ANTHROPIC_API_KEY": secrets[1]},
        "command": f"curl -H 'Authorization: Bearer {secrets[2]}' --password={secrets[3]}",
        "args": ["--token", secrets[0]],
    }, ts=T0)
    ledger.record("chat.tool_call", {"name": "submit", "input": {"api_key": secrets[1]}, "ok": True}, ts=T0)
    home = CarlHome.from_env()
    raw = b"".join(p.read_bytes() for p in Ledger(home).segments())
    for s in secrets:
        assert s.encode() not in raw, s
    shown = Ledger(home).blocks(action="job.submit")[0]["payload"]
    assert shown["env"]["HF_TOKEN"] == "***" and shown["job_id"] == "j1" and shown["estimated_usd"] == 1.5
    assert ledger.verify().ok


# ------------------------------------------------------------------------------------------- canonical
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.floats(-1e-3, 1e-3) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonical_is_byte_identical_to_the_documented_json_dumps_form(value):
    v = normalise(value)
    expected = json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert canonical(v) == expected
    assert canonical(normalise(json.loads(expected))) == expected  # round trip is stable


def test_canonical_floats_at_every_magnitude():
    for e in range(-325, 309):
        for m in (1.0, 1.5, 2.5e-3, 7.1850441006303285, 9.999999999999998):
            try:
                f = m * 10.0 ** e
            except OverflowError:
                continue
            if f != f or f in (float("inf"), float("-inf")):
                continue
            v = {"f": [f, -f]}
            assert canonical(v) == json.dumps(v, sort_keys=True, separators=(",", ":")).encode(), f
    assert canonical(normalise([float("nan"), float("inf"), 1e-05])) == b"[null,null,1e-05]"


# ------------------------------------------------------------------------------------------- tampering
def _pristine() -> tuple[Path, list[str]]:
    """A ledger of 13 blocks across several segments (small cap), built once; returns (dir, public keys)."""
    if not hasattr(_pristine, "cache"):
        d = Path(tempfile.mkdtemp(prefix="carl-ledger-pristine-"))
        led = Ledger(CarlHome(d), segment_bytes=2500)
        _fill(led, 12)
        assert len(led.segments()) >= 3
        _pristine.cache = (d, led.public_keys())  # type: ignore[attr-defined]
    return _pristine.cache  # type: ignore[attr-defined]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_flipping_any_single_byte_fails_verification_at_that_block(data, tmp_path_factory):
    src, pubs = _pristine()
    segs = chain._segments_in(src / "ledger")
    blobs = [p.read_bytes() for p in segs]
    total = sum(map(len, blobs))
    pos = data.draw(st.integers(0, total - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="xor")
    work = tmp_path_factory.mktemp("flip")
    seen = 0
    for p, blob in zip(segs, blobs):
        if seen <= pos < seen + len(blob):
            buf = bytearray(blob)
            buf[pos - seen] ^= mask
            blob = bytes(buf)
        (work / p.name).write_bytes(blob)
        seen += len(p.read_bytes())
    expected_index = b"".join(blobs)[:pos].count(b"\n")
    res = chain.verify_dir(work, pubs)
    assert not res.ok
    assert res.first_bad == expected_index, (res, pos, mask)


def test_pristine_copy_verifies_and_export_verifies_with_public_keys_alone(tmp_path):
    src, pubs = _pristine()
    assert chain.verify_dir(src / "ledger", pubs).ok
    out = Ledger(CarlHome(src)).export(tmp_path / "exp")
    assert out["blocks"] == 13 and len(out["segments"]) >= 3
    res = chain.verify_dir(tmp_path / "exp")  # reads exp/ledger.pub
    assert res.ok and res.blocks == 13
    assert not any(p.name == keys.KEY_FILE for p in (tmp_path / "exp").iterdir())


def test_truncated_tail_is_a_torn_block():
    led = Ledger()
    _fill(led, 6)
    seg = led.segments()[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[:-40])
    res = led.verify()
    assert not res.ok and res.first_bad == 6 and res.kind == "torn_block"
    # appending onto a torn tail is refused, not silently forked
    with pytest.raises(LedgerBrokenChain):
        led.append("run.stop", {"run_id": "r"})


def test_deleted_middle_block_is_a_broken_link():
    led = Ledger()
    _fill(led, 8)
    lines = _lines(led)
    del lines[4]
    _rewrite(led, lines)
    res = led.verify()
    assert not res.ok and res.first_bad == 4 and res.kind == "broken_link"


def test_swapped_blocks_and_edited_payload():
    led = Ledger()
    _fill(led, 8)
    lines = _lines(led)
    lines[3], lines[5] = lines[5], lines[3]
    _rewrite(led, lines)
    assert led.verify().first_bad == 3
    lines = _lines(led)
    lines[3], lines[5] = lines[5], lines[3]
    b = json.loads(lines[6])
    b["payload"]["step"] = 999
    lines[6] = canonical(b) + b"\n"
    _rewrite(led, lines)
    res = led.verify()
    assert res.first_bad == 6 and res.kind == "payload_hash_mismatch"


def _resign(block: dict, signer: keys.Signer, *, claim: str | None = None) -> dict:
    b = dict(block)
    b["payload"] = {**b["payload"], "step": -1}
    b["payload_hash"] = chain.sha256_hex(canonical(b["payload"]))
    b["signer"] = claim or signer.public
    body = {k: b[k] for k in chain.BODY_FIELDS}
    b["hash"] = chain.sha256_hex(canonical(body))
    b["signature"] = signer.sign(b["hash"].encode()).hex()
    return b


def test_block_resigned_with_a_foreign_key():
    led = Ledger()
    _fill(led, 8)
    mallory = keys.signer_from_seed("mallory")
    lines = _lines(led)
    # last block rewritten and signed by a foreign key that names itself: unknown signer
    lines[-1] = canonical(_resign(json.loads(lines[-1]), mallory)) + b"\n"
    _rewrite(led, lines)
    res = led.verify()
    assert not res.ok and res.first_bad == 8 and res.kind == "unknown_signer"
    # the same, but claiming to be the real signer: bad signature
    real = keys.load_signer(led.home).public
    lines[-1] = canonical(_resign(json.loads(lines[-1]), mallory, claim=real)) + b"\n"
    _rewrite(led, lines)
    res = led.verify()
    assert res.first_bad == 8 and res.kind == "bad_signature"
    # a middle block re-signed: caught there even though every later link is intact for the attacker
    lines = _lines(led)[:-1]
    lines[3] = canonical(_resign(json.loads(lines[3]), mallory)) + b"\n"
    _rewrite(led, lines)
    assert led.verify().first_bad == 3


def test_old_key_signing_after_rotation_is_refused():
    led = Ledger()
    _fill(led, 3)
    led.rotate_key(seed="bob", ts=T0 + 100)
    led.append("run.start", {"run_id": "x"}, ts=T0 + 101)
    lines = _lines(led)
    alice = keys.signer_from_seed("alice")
    b = json.loads(lines[-1])
    b["signer"] = alice.public
    body = {k: b[k] for k in chain.BODY_FIELDS}
    b["hash"] = chain.sha256_hex(canonical(body))
    b["signature"] = alice.sign(b["hash"].encode()).hex()
    lines[-1] = canonical(b) + b"\n"
    _rewrite(led, lines)
    res = led.verify()
    assert res.first_bad == 5 and res.kind == "unknown_signer"


def test_empty_ledger_verifies_and_missing_public_key_is_a_credential_error():
    assert ledger.verify().to_dict() == {"ok": True, "blocks": 0, "first_bad": None, "reason": None,
                                         "kind": None, "segment": None, "head": None}
    led = Ledger()
    _fill(led, 2)
    shutil.rmtree(led.home.keys)
    from engine.errors import CredentialError

    with pytest.raises(CredentialError):
        led.verify()


# ------------------------------------------------------------------------------------------- segments
def test_segment_rotation_keeps_the_chain_continuous():
    led = Ledger(segment_bytes=1500)
    blocks = _fill(led, 20)
    segs = led.segments()
    assert len(segs) >= 5
    assert [p.name for p in segs][:2] == ["segment-000000.jsonl", "segment-000001.jsonl"]
    for p in segs:
        assert p.stat().st_size <= 1500 or p.read_bytes().count(b"\n") == 1
    # one-at-a-time appends rotate too, and link to the previous segment's tail
    more = [led.append("run.stop", {"run_id": "r", "i": i}, ts=T0 + 100 + i) for i in range(5)]
    assert more[0]["prev_hash"] == blocks[-1]["hash"]
    res = led.verify()
    assert res.ok and res.blocks == 26
    # deleting a whole middle segment breaks the link at the first missing index
    gone = led.segments()[1]
    first_missing = json.loads(gone.read_bytes().splitlines()[0])["index"]
    gone.unlink()
    res = led.verify()
    assert not res.ok and res.first_bad == first_missing and res.kind == "broken_link"


# ------------------------------------------------------------------------------------------- concurrency
WRITER = """
import sys
from engine import ledger
n, tag = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    ledger.record("chat.tool_call", {"writer": tag, "i": i})
"""


@pytest.mark.slow
def test_two_processes_appending_500_each_make_one_valid_chain():
    home = CarlHome.from_env()
    env = {**os.environ, "CARL_HOME": str(home.root), "CARL_LEDGER_SEGMENT_BYTES": "65536",
           "CARL_LEDGER_LOCK_TIMEOUT": "60"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, "500", tag], cwd=REPO, env=env,
                              stderr=subprocess.PIPE) for tag in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    led = Ledger(home)
    res = led.verify()
    assert res.ok, res
    assert res.blocks == 1001  # genesis (exactly one, whoever came first) + 1000
    blocks = list(led.iter_blocks())
    assert sum(b["action"] == "ledger.genesis" for b in blocks) == 1
    for tag in ("a", "b"):
        assert [b["payload"]["i"] for b in blocks if b["payload"].get("writer") == tag] == list(range(500))
    assert len(led.segments()) > 1
    assert len(keys.public_keys(home)) == 1


def test_lock_timeout_is_ledger_locked():
    led = Ledger(lock_timeout=0.2)
    led.init(seed="alice")
    other = Ledger(lock_timeout=0.2)
    with led.locked():
        with pytest.raises(LedgerLocked) as ei:
            other.append("run.start", {})
    assert ei.value.code == "carl.ledger.locked"
    assert other.append("run.start", {})["index"] == 1


def test_verify_while_another_process_appends_never_sees_a_torn_block():
    home = CarlHome.from_env()
    Ledger(home).init(seed="alice")
    env = {**os.environ, "CARL_HOME": str(home.root), "CARL_LEDGER_LOCK_TIMEOUT": "60"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, "300", "w"], cwd=REPO, env=env, stderr=subprocess.PIPE)
    results = []
    while proc.poll() is None:
        results.append(Ledger(home).verify())
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert results and all(r.ok for r in results), [r for r in results if not r.ok][:1]
    assert Ledger(home).verify().blocks == 301
