"""Observe sources on real files written by the real libraries: TRL's trainer_state.json (committed, made by
tests/data/make_trainer_state.py), trackio projects written with trackio.log, and a real trackio dashboard
started on 127.0.0.1 (HTTP API, no mocks)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import NetworkError, RunNotFound, ValidationError
from engine.frames import FrameWriter
from engine.observe import (JsonlSource, TrackioLocalSource, TrackioRemoteSource, TrainerStateSource, file_source,
                            list_runs, normalize_metrics, open_source, parse_source_spec, resolve_run)
from engine.observe.sources import split_dashboard_url
from tests.conftest import REPO

DATA = Path(__file__).parent / "data"
TRL_STATE = DATA / "trl_grpo" / "trainer_state.json"


# ── JSONL of metric dicts ──────────────────────────────────────────────────────────────────────────────


def test_metric_aliases_are_normalised():
    f = normalize_metrics({"train/global_step": 7.0, "train/phi_mean": 0.2, "train/reward": 0.5,
                           "rewards/acc/mean": 0.4, "rewards/acc/std": 0.1, "rewards/fmt": 1.0,
                           "learning_rate": 1e-5, "completions/mean_length": 31.0, "objective/kl": 0.02,
                           "carl/coherence": 0.7, "grad_norm": 2.0, "note": "text", "timestamp": "2024-01-01T00:00:00Z"})
    assert f.step == 7 and f.phi == 0.2 and f.reward_mean == 0.5 and f.lr == 1e-5 and f.kl == 0.02
    assert f.rewards == {"acc": 0.4, "fmt": 1.0} and f.carl_components == {"coherence": 0.7}
    assert f.completion_length == 31.0 and f.extra == {"rewards/acc/std": 0.1, "grad_norm": 2.0}
    assert f.timestamp == 1704067200.0
    with pytest.raises(ValueError):
        normalize_metrics({"loss": 1.0})


def test_jsonl_of_metric_dicts_with_garbage(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"global_step": 1, "phi": 0.1, "reward": 0.2}\nnot json\n\n{"loss": 3}\n'
                 '{"step": 2, "phi_mean": 0.3}\n{"step": 3, "ph')
    src = file_source(p)
    assert isinstance(src, JsonlSource) and src.kind == "jsonl"
    frames, skipped = src.load()
    assert [(f.step, f.phi) for f in frames] == [(1, 0.1), (2, 0.3)]
    assert frames[0].reward_mean == 0.2
    assert skipped == 3  # garbage, no step, torn last line


def test_carl_run_resolution_by_prefix_and_end_of_run(tmp_path):
    from engine.home import CarlHome

    home = CarlHome(tmp_path / "home")
    for rid in ("20250101-aaaa", "20250101-aabb", "20250202-cccc"):
        with FrameWriter(home.runs / rid / "frames.jsonl") as w:
            w.write({"step": 0, "phi": 0.1})
    assert resolve_run("20250202", home) == home.runs / "20250202-cccc" / "frames.jsonl"
    assert resolve_run("20250101-aaaa", home).parent.name == "20250101-aaaa"
    with pytest.raises(RunNotFound, match="ambiguous"):
        resolve_run("20250101-aa", home)
    with pytest.raises(RunNotFound):
        resolve_run("nope", home)
    src = open_source(run="20250202", home=home)
    assert src.kind == "carl" and src.run == "20250202-cccc" and not src.ended()
    (home.runs / "20250202-cccc" / "meta.json").write_text(json.dumps({"status": "completed"}))
    assert src.ended()
    assert {r["run_id"] for r in list_runs(home)} == {"20250101-aaaa", "20250101-aabb", "20250202-cccc"}
    assert parse_source_spec("20250202", home).run == "20250202-cccc"
    with pytest.raises(ValidationError):
        open_source(file="a", trackio="b")


# ── TRL trainer_state.json ─────────────────────────────────────────────────────────────────────────────


def test_real_trl_trainer_state():
    raw = json.loads(TRL_STATE.read_text())["log_history"]
    frames, skipped = TrainerStateSource(TRL_STATE).load()
    assert skipped == 0 and len(frames) == len(raw) == 8
    for f, e in zip(frames, raw):
        assert f.step == e["step"] and f.reward_mean == e["reward"] and f.kl == e["kl"]
        assert f.entropy == e["entropy"] and f.lr == e["learning_rate"]
        assert f.completion_length == e["completions/mean_length"]
        assert f.clipped_ratio == e["completions/clipped_ratio"]
        assert f.frac_reward_zero_std == e["frac_reward_zero_std"]
        assert f.rewards == {"has_seven": e["rewards/has_seven/mean"], "short": e["rewards/short/mean"]}


def test_checkpoint_dir_picks_the_latest_and_poll_sees_growth(tmp_path):
    state = json.loads(TRL_STATE.read_text())
    running = json.loads(TRL_STATE.read_text())  # as a mid-run checkpoint: the trainer has not stopped
    running["stateful_callbacks"]["TrainerControl"]["args"]["should_training_stop"] = False
    out = tmp_path / "out"
    for n, k in (("checkpoint-4", 4), ("checkpoint-10", 8)):  # numeric order, not lexical
        (out / n).mkdir(parents=True)
        s = dict(state, log_history=state["log_history"][:k], global_step=k)
        (out / n / "trainer_state.json").write_text(json.dumps(s))
    src = file_source(out)
    assert isinstance(src, TrainerStateSource)
    frames, _ = src.load()
    assert len(frames) == 8 and src.state_path().parent.name == "checkpoint-10"
    assert src.ended()  # global_step == max_steps
    one = tmp_path / "one" / "trainer_state.json"
    one.parent.mkdir()
    one.write_text(json.dumps(dict(running, log_history=state["log_history"][:3], global_step=3)))
    src = TrainerStateSource(one)
    assert len(src.load()[0]) == 3 and not src.ended()
    one.write_text(json.dumps(dict(running, log_history=state["log_history"][:5] + [{"step": 5, "eval_loss": 0.5}],
                                   global_step=5)))
    new, _, reset = src.poll()
    assert [f.step for f in new] == [4, 5] and not reset
    assert new[-1].extra["eval_loss"] == 0.5 and new[-1].loss is not None  # merged by step


def test_not_a_trainer_state(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"a": 1}')
    with pytest.raises(ValidationError, match="log_history"):
        file_source(p).load()


# ── trackio, local and remote ──────────────────────────────────────────────────────────────────────────

WRITE_TRACKIO = """
import sys, trackio
steps = int(sys.argv[1])
for name, scale in (("run-a", 1.0), ("run-b", 2.0)):
    trackio.init(project="carl-obs", name=name)
    for s in range(steps):
        trackio.log({"train/phi": 0.02 * s * scale, "reward": 0.1 * s, "rewards/acc/mean": 0.05 * s,
                     "loss": 1.0 / (s + 1), "completions/mean_length": 10.0 + s}, step=s)
    trackio.finish()
"""


def _env(trackio_dir: Path) -> dict[str, str]:
    env = dict(os.environ, TRACKIO_DIR=str(trackio_dir), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               TRACKIO_LOG_SYSTEM_METRICS="0")
    env.pop("TRACKIO_DATASET_ID", None)
    env.pop("TRACKIO_SPACE_ID", None)
    return env


@pytest.fixture(scope="module")
def trackio_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("trackio")
    out = subprocess.run([sys.executable, "-c", WRITE_TRACKIO, "12"], env=_env(d), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (d / "carl-obs.db").exists()
    return d


def test_trackio_local_read_only_sqlite(trackio_store):
    src = TrackioLocalSource("carl-obs", run="run-a", trackio_dir=trackio_store)
    frames, skipped = src.load()
    assert src.via == "sqlite-ro" and skipped == 0
    assert [f.step for f in frames] == list(range(12))
    assert frames[5].phi == pytest.approx(0.1) and frames[5].rewards == {"acc": pytest.approx(0.25)}
    assert frames[5].completion_length == 15.0 and frames[5].timestamp is not None
    latest = TrackioLocalSource("carl-obs", trackio_dir=trackio_store)
    assert latest.load()[0][5].phi == pytest.approx(0.2) and latest.run == "run-b"  # newest run by default
    with pytest.raises(RunNotFound):
        TrackioLocalSource("carl-obs", run="nope", trackio_dir=trackio_store).load()
    with pytest.raises(RunNotFound):
        TrackioLocalSource("no-such-project", trackio_dir=trackio_store).load()


def test_trackio_local_through_trackio_api_matches_sqlite(trackio_store):
    """In a process where trackio's TRACKIO_DIR is the store, carl reads through trackio's own API."""
    out = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", "observe", "--trackio", "carl-obs",
                          "--run", "run-a"], cwd=REPO, env=_env(trackio_store), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["via"] == "trackio-api" and res["n_frames"] == 12 and res["run"] == "run-a"
    assert res["phi"]["last"] == pytest.approx(0.22)
    assert "rewards/acc" in res["metrics"] and "completion_length" in res["metrics"]


def test_trackio_reader_never_locks_out_a_live_writer(tmp_path):
    d = tmp_path / "live"
    writer = subprocess.Popen([sys.executable, "-c", "import time, trackio\n"
                               "trackio.init(project='live', name='r')\n"
                               "for s in range(40):\n"
                               "    trackio.log({'phi': s / 100}, step=s); time.sleep(0.02)\n"
                               "trackio.finish()\n"], env=_env(d), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    src = TrackioLocalSource("live", trackio_dir=d)
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while writer.poll() is None and time.monotonic() < deadline:
        try:
            new, _, _ = src.poll()
            seen += [f.step for f in new]
        except RunNotFound:  # the db or the first row does not exist yet
            pass
        time.sleep(0.01)
    assert writer.wait(timeout=60) == 0, writer.stderr.read()[-2000:]
    new, _, _ = src.poll()
    seen += [f.step for f in new]
    assert seen == list(range(40))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHOW = """
import sys, time, trackio
app, url, share, full = trackio.show(open_browser=False, block_thread=False, host="127.0.0.1",
                                     server_port=int(sys.argv[1]))
print("READY", url, flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture(scope="module")
def dashboard(trackio_store):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", SHOW, str(port)], env=_env(trackio_store),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("READY") or not line and proc.poll() is not None:
                break
        assert line.startswith("READY"), proc.stderr.read()[-2000:] if proc.poll() is not None else line
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_trackio_remote_dashboard_over_http(dashboard, trackio_store):
    src = TrackioRemoteSource(dashboard + "?project=carl-obs&write_token=SECRETSECRET", run="run-a")
    assert "SECRETSECRET" not in src.label and src.project == "carl-obs"
    frames, skipped = src.load()
    local, _ = TrackioLocalSource("carl-obs", run="run-a", trackio_dir=trackio_store).load()
    assert skipped == 0
    assert [(f.step, f.phi, f.reward_mean, f.rewards) for f in frames] == \
        [(f.step, f.phi, f.reward_mean, f.rewards) for f in local]
    # the only project is found without --project; the newest run without --run
    src2 = TrackioRemoteSource(dashboard)
    assert src2.load()[0][-1].phi == pytest.approx(0.44) and src2.run == "run-b"
    assert src2.poll()[0] == []
    with pytest.raises(RunNotFound):
        TrackioRemoteSource(dashboard, run="nope", project="carl-obs").load()


def test_trackio_remote_batch_cli_hides_the_write_token(dashboard):
    url = dashboard + "?write_token=SECRETSECRET"
    out = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", "observe", "--url", url, "--project",
                          "carl-obs", "--run", "run-b"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SECRETSECRET" not in out.stdout + out.stderr
    res = json.loads(out.stdout)
    assert res["kind"] == "trackio-remote" and res["run"] == "run-b" and res["n_frames"] == 12
    assert res["phi"]["last"] == pytest.approx(0.44)


def test_unreachable_dashboard_is_a_network_error():
    src = TrackioRemoteSource(f"http://127.0.0.1:{_free_port()}/", run="r", project="p", timeout=2, retries=2)
    with pytest.raises(NetworkError) as ei:
        src.load()
    assert ei.value.exit_code == 4
    assert split_dashboard_url("user/my_space")[0] == "https://user-my-space.hf.space/"
    with pytest.raises(ValidationError):
        split_dashboard_url("not a url")

