"""`carl --batch observe`: summaries per the contract, --follow on a growing run, --export, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carl_tui.batch import main as batch_main
from engine.frames import FrameWriter
from tests._signals import default_sigint
from tests.conftest import REPO

TRL_STATE = Path(__file__).parent / "data" / "trl_grpo" / "trainer_state.json"
CONTRACT_KEYS = {"source", "run", "n_frames", "first_step", "last_step", "metrics", "phi", "phase",
                 "crystallization_step", "health", "skipped_lines"}


def observe(capsys, *argv):
    code = batch_main(["observe", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_run(home: Path, run_id: str, n: int, *, status: str | None = None) -> Path:
    d = home / "runs" / run_id
    with FrameWriter(d / "frames.jsonl") as w:
        for s in range(n):
            w.write({"step": s, "phi": 0.35 if s >= 10 else 0.05, "entropy": 2.0, "reward_mean": 0.01 * s,
                     "task_reward": 0.01 * s, "carl_reward": 0.5, "gate": "A" if s < 10 else "B", "loss": 0.3,
                     "timestamp": 1000.0 + s})
    if status:
        (d / "meta.json").write_text(json.dumps({"run_id": run_id, "status": status}))
    return d


def test_summary_of_a_carl_run_by_prefix(capsys, _isolated_home):
    write_run(_isolated_home, "20250101-120000-abcd", 30, status="completed")
    with open(_isolated_home / "runs" / "20250101-120000-abcd" / "frames.jsonl", "ab") as fh:
        fh.write(b"garbage\n{\"step\": 30, \"ph")  # a garbage line and a torn tail
    code, out, err = observe(capsys, "--run", "20250101")
    assert code == 0, err
    res = json.loads(out)
    assert CONTRACT_KEYS <= set(res)
    assert res["run"] == "20250101-120000-abcd" and res["kind"] == "carl"
    assert res["n_frames"] == 30 and res["first_step"] == 0 and res["last_step"] == 29
    assert res["phase"] == "knowing" and res["crystallization_step"] == 10  # where Φ rose from its start
    assert res["phi"]["first"] == 0.05 and res["phi"]["last"] == 0.35
    assert res["skipped_lines"] == 2 and res["health"]["status"] == "ok"
    assert res["metrics"][:3] == ["phi", "entropy", "reward_mean"]


def test_summary_of_a_real_trl_trainer_state(capsys):
    code, out, _ = observe(capsys, "--file", str(TRL_STATE))
    res = json.loads(out)
    assert code == 0 and res["n_frames"] == 8 and res["first_step"] == 1 and res["last_step"] == 8
    assert res["phi"] is None and res["phase"] is None and res["kind"] == "trainer_state"
    assert "rewards/has_seven" in res["metrics"] and "kl" in res["metrics"]
    # that tiny run really did clip most completions at max_completion_length=8
    assert [f["code"] for f in res["health"]["findings"]] == ["clipped_completions"]


PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" + \
    "".join(f"user{i}:x:{1000 + i}:{1000 + i}::/home/user{i}:/bin/sh\n" for i in range(22))


@pytest.mark.parametrize("content,skipped", [(PASSWD, 24), ("", 0)], ids=["foreign", "empty"])
def test_a_source_with_no_frames_is_empty_and_exits_2(capsys, tmp_path, content, skipped):
    p = tmp_path / "passwd"
    p.write_text(content)
    code, out, err = observe(capsys, "--file", str(p))
    res = json.loads(out)  # the summary is still printed, and says empty — never ok
    assert code == 2
    assert res["n_frames"] == 0 and res["skipped_lines"] == skipped and res["health"] == {"status": "empty",
                                                                                          "findings": []}
    error = json.loads(err.strip().splitlines()[-1])["error"]
    assert error["code"] == "carl.validation.empty_source" and error["context"]["skipped_lines"] == skipped
    assert str(p) in error["message"] and "***" not in error["message"]


def test_following_a_source_that_stays_empty_exits_2(capsys, tmp_path):
    p = tmp_path / "later.jsonl"
    p.write_text("")
    code, out, _ = observe(capsys, "--file", str(p), "--follow", "--poll", "0.02", "--idle-timeout", "0.1")
    summary = json.loads(out.splitlines()[-1])
    assert code == 2 and summary["type"] == "summary" and summary["health"]["status"] == "empty"


def test_export_writes_csv_and_pngs(capsys, tmp_path, _isolated_home):
    d = write_run(_isolated_home, "r1", 25)
    code, out, _ = observe(capsys, "--file", str(d / "frames.jsonl"), "--export", str(tmp_path / "exp"))
    res = json.loads(out)
    assert code == 0
    rows = list(csv.DictReader(open(res["export"]["csv"])))
    assert len(rows) == 25 and rows[12]["phi"] == "0.35" and rows[3]["gate"] == "A" and rows[20]["gate"] == "B"
    names = sorted(Path(p).name for p in res["export"]["charts"])
    assert names == ["entropy.png", "loss.png", "phi.png", "reward.png"]
    for p in res["export"]["charts"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 5000


def test_bad_input_is_a_json_error_with_exit_2(capsys, tmp_path):
    code, out, err = observe(capsys)
    assert code == 2 and out == "" and json.loads(err)["error"]["code"] == "carl.validation"
    code, _, err = observe(capsys, "--file", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "missing.jsonl" in json.loads(err)["error"]["message"]
    code, _, err = observe(capsys, "--run", "nope")
    assert code == 2 and json.loads(err)["error"]["code"] == "carl.run.not_found"
    code, _, err = observe(capsys, "--file", "a", "--trackio", "b")
    assert code == 2


def _spawn(*argv, env=None):
    # default SIGINT in the child even when the suite runs as a background job (which ignores SIGINT)
    return subprocess.Popen([sys.executable, "-m", "carl_tui", "--batch", "observe", *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})), preexec_fn=default_sigint)


def _read_lines(proc, n, timeout=60.0):
    lines = []
    deadline = time.monotonic() + timeout
    while len(lines) < n and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(json.loads(line))
    return lines


def test_follow_streams_a_growing_run_until_it_ends(_isolated_home):
    d = write_run(_isolated_home, "live-run", 3)
    proc = _spawn("--run", "live-run", "--follow", "--poll", "0.05")
    try:
        first = _read_lines(proc, 3)  # the history is replayed first
        assert [x["step"] for x in first] == [0, 1, 2] and all(x["type"] == "frame" for x in first)
        with FrameWriter(d / "frames.jsonl") as w:
            for s in range(3, 6):
                w.write({"step": s, "phi": 0.1})
        with open(d / "frames.jsonl", "ab") as fh:  # a writer mid-line: held back until its newline
            fh.write(b'{"step": 6, "phi"')
        more = _read_lines(proc, 3)
        assert [x["step"] for x in more] == [3, 4, 5] and more[0]["run"] == "live-run"
        with open(d / "frames.jsonl", "ab") as fh:
            fh.write(b': 0.2}\n')
        (d / "meta.json").write_text(json.dumps({"status": "completed"}))
        rest = _read_lines(proc, 2)
        assert rest[0]["step"] == 6 and rest[0]["phi"] == 0.2
        assert rest[1]["type"] == "summary" and rest[1]["n_frames"] == 7 and rest[1]["ended"] is True
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_follow_stops_on_sigint_with_exit_130(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 0, "phi": 0.1}\n')
    proc = _spawn("--file", str(p), "--follow", "--poll", "0.05")
    try:
        assert _read_lines(proc, 1)[0]["step"] == 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        err = proc.stderr.read()
        assert json.loads(err.strip().splitlines()[-1])["error"]["code"] == "carl.interrupted"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_follow_idle_timeout_and_new_only(capsys, tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 0}\n{"step": 1}\n')
    code, out, _ = observe(capsys, "--file", str(p), "--follow", "--poll", "0.02", "--idle-timeout", "0.1",
                           "--new-only")
    lines = [json.loads(x) for x in out.splitlines()]
    assert code == 0 and len(lines) == 1 and lines[0]["type"] == "summary" and lines[0]["n_frames"] == 2
    assert lines[0]["ended"] is False


@pytest.mark.parametrize("argv", [["--help"]])
def test_help_is_fast_and_mentions_sources(argv):
    out = subprocess.run([sys.executable, "-c", "import sys\nfrom carl_tui.batch import main\n"
                          "try:\n    main(['observe', '--help'])\nexcept SystemExit:\n    pass\n"
                          "print(sorted(m for m in ('torch','textual','trackio','matplotlib') if m in sys.modules))"],
                         cwd=REPO, capture_output=True, text=True)
    assert "--trackio" in out.stdout and "--follow" in out.stdout and "--export" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"
