"""A run pulled with `run pull` opens in every screen that opens a local run, driven by keys only: the train
screen (a attaches, y tries its model, x on a remote run that is still going says where to stop it), observe
(picker → Enter; space marks it for an overlay with a local run), the try panel, and the batch verbs `run show`,
`run diff`, `observe --run`, `infer --run`, `eval --run`, `probe --run`. Snapshots of the train, observe and try
screens on it (80×24, 120×40).

The run is shaped in a "container" directory like the worker leaves it (the tiny model as its checkpoint and final
model, frames with the container's hardware, paths of the container in meta/plan/events), uploaded by the worker's
own uploader (engine.remote.sync.OutputSync) to the loopback Hub, the container directory deleted (the remote
machine is gone), and pulled by `carl --batch run pull` — the transport is the real one; only the training is
left out (tests/test_remote_roundtrip.py trains for real)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from carl_tui.app import CarlApp
from engine import infer
from engine.frames import FrameWriter
from engine.home import CarlHome
from engine.remote import store
from engine.remote.sync import OutputSync
from engine.runs import read_json
from screens.context import WorkbenchContext
from tests._tiny_fixture import tiny_cache, tiny_env  # noqa: F401  (fixtures)
from tests.test_infer import PROMPT, tiny_path
from tests.test_jobs_cli import carl
from tests.test_observe_view_screen import settle_underline, until
from tests.test_train_screen import GPU_BOX, PLAN, frame
from tests.test_train_screen import make_run as make_local_run

SIZES = [(80, 24), (120, 40)]
RID = "hf-20261201-120000-abc123"
REPO = "alice/pulled-out"
STEPS = 8


def container_run(root: Path, tiny: Path, *, status: str) -> Path:
    """The job's run directory inside its container, as engine.runs + the worker leave it."""
    d = root / ".carl" / "runs" / "20261201-120005-c0de"
    (d / "checkpoints").mkdir(parents=True)
    ck = d / "checkpoints" / "checkpoint-4"
    shutil.copytree(tiny, ck)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 4, "best_model_checkpoint": None}))
    if status == "completed":
        shutil.copytree(tiny, d / "final")
    (d / "config.yaml").write_text("project: {name: pulled}\nmodel: {name_or_path: builtin:tiny}\n"
                                   f"grpo: {{max_steps: {STEPS}}}\ntrain: {{output_repo: {REPO}}}\n")
    (d / "plan.json").write_text(json.dumps({**PLAN, "config": str(root / "tmp" / "carl-job.yaml"),
                                             "grpo": {**PLAN["grpo"], "max_steps": STEPS},
                                             "command": [str(root / "venv/bin/python"), "-m", "engine.trainer.worker",
                                                         str(d)]}))
    last = STEPS if status == "completed" else 5
    meta = {"run_id": d.name, "status": status, "backend": "local", "pid": 77, "pid_start": 1.0,
            "config_path": str(root / "tmp" / "carl-job.yaml"), "max_steps": STEPS, "last_step": last,
            "started_at": 1_700_000_000.0, "heartbeat": 1_700_000_000.0 + last,
            "eval": {"before": {"task_metric": 0.31}, **({"after": {"task_metric": 0.52}}
                                                        if status == "completed" else {})}}
    (d / "meta.json").write_text(json.dumps(meta))
    with FrameWriter(d / "frames.jsonl") as w:
        for s in range(1, last + 1):
            f = frame(s)
            f.system = GPU_BOX  # the container's machine, as its worker measured it
            w.write(f)
    with open(d / "events.jsonl", "w") as fh:
        fh.write(json.dumps({"name": "eval", "phase": "before", "step": 0, "task_metric": 0.31}) + "\n")
        fh.write(json.dumps({"name": "checkpoint", "step": 4, "path": str(ck)}) + "\n")
    (d / "stdout.log").write_text("[12:00:00] run started: device cuda ×1\n"
                                  "[12:00:01] before: held-out exact 0.310\n"
                                  f"7 files to {REPO}/runs/{RID} (carl: {RID} checkpoint 4)\n")
    return d


def pull(capsys, tiny: Path, tmp: Path, *, status: str = "completed") -> Path:
    """Upload the container's run with the worker's uploader, remove the container, `run pull` it."""
    root = tmp / "container"
    d = container_run(root, tiny, status=status)
    store.save({"run_id": RID, "backend": "hf", "remote_id": "job-1", "status": "running", "output_repo": REPO,
                "submitted_ts": 1_700_000_000.0})
    sync = OutputSync(d, REPO, run_id=RID, log=lambda m: None)
    assert sync.checkpoint(4, d / "checkpoints" / "checkpoint-4")
    if status == "completed":
        assert sync.finish("completed", final_allowed=True, reason="eval gate passed")
    shutil.rmtree(root)  # the remote machine is gone: nothing may point there
    code, out, err = carl(capsys, "run", "pull", RID)
    assert code == 0, err
    assert out[0]["status"] == status and out[0]["has_final"] == (status == "completed")
    return CarlHome.from_env().runs / RID


@pytest.fixture
def pulled(hub, tiny_env, tmp_path_factory, capsys):  # noqa: F811
    """A completed remote run pulled into the current CARL_HOME (request it after ``snap_home``)."""
    infer.clear_cache()
    yield pull(capsys, tiny_path(tiny_env), tmp_path_factory.mktemp("remote"))
    infer.clear_cache()


def make_app(root: Path, screen: str) -> CarlApp:
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=root, clock=lambda: 1_700_000_000.0)
    return CarlApp(ctx=ctx, screen=screen)


async def settle(pilot) -> None:
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def attach(pilot, n: int = STEPS):
    """Train screen: wait for its own start-up (plan, this machine), then a attaches to the newest run."""
    from screens.train import TrainScreen
    from screens.widgets.charts import MetricChart

    await settle(pilot)
    await pilot.press("a")
    screen = pilot.app.screen
    assert isinstance(screen, TrainScreen)
    await until(pilot, lambda: screen.run_id == RID and len(screen.frames) == n)
    for chart in screen.query(MetricChart):
        chart.flush()
    await pilot.pause()
    return screen


async def open_in_observe(pilot, n: int = STEPS):
    from screens.observe import ObserveScreen

    screen = pilot.app.screen
    assert isinstance(screen, ObserveScreen)
    await until(pilot, lambda: screen.query_one("#obs-runs").option_count >= 1)
    await pilot.press("down", "enter")
    await until(pilot, lambda: screen.source is not None and screen.source.run == RID and len(screen.frames) == n
                and not screen.loading and screen.summary_current)
    await settle_underline(pilot, screen)
    screen.flush()
    await pilot.pause()
    return screen


async def try_prompt(pilot):
    from screens.try_panel import TryScreen

    await pilot.press("y")
    await until(pilot, lambda: isinstance(pilot.app.screen, TryScreen))
    screen = pilot.app.screen
    await settle(pilot)
    await pilot.press("slash", *PROMPT, "enter")
    await until(pilot, lambda: screen.results[0] is not None and not screen._generating)
    await settle(pilot)
    return screen


# ── the pulled run's files point at this machine ──────────────────────────────────────────────────────

def test_a_pulled_run_points_here_and_every_batch_verb_reads_it(pulled, capsys, tmp_path):
    meta, plan = read_json(pulled / "meta.json"), read_json(pulled / "plan.json")
    assert meta["config_path"] == str(pulled / "config.yaml") and plan["config"] == str(pulled / "config.yaml")
    assert meta["remote"]["in_container"]["config_path"].endswith("tmp/carl-job.yaml")
    events = [json.loads(x) for x in (pulled / "events.jsonl").read_text().splitlines()]
    ck = next(e for e in events if e["name"] == "checkpoint")
    assert ck["path"] == str(pulled / "checkpoints" / "checkpoint-4") and Path(ck["path"]).is_dir()

    code, out, _ = carl(capsys, "run", "show", RID)
    assert code == 0 and out[0]["status"] == "completed" and out[0]["backend"] == "hf"
    assert out[0]["last_checkpoint"] == 4 and out[0]["last_step"] == STEPS
    make_local_run(CarlHome.from_env().root, "20250101-120000-local", range(1, 41))
    code, out, err = carl(capsys, "run", "diff", RID, "20250101-120000-local")
    assert code == 0, err
    code, out, _ = carl(capsys, "observe", "--run", RID)
    assert code == 0 and out[0]["run"] == RID and out[0]["n_frames"] == STEPS and out[0]["last_step"] == STEPS
    code, out, err = carl(capsys, "infer", "--run", RID, "--prompt", PROMPT, "--greedy", "--max-new-tokens", "4")
    assert code == 0, err
    assert str(pulled / "final") in json.dumps(out[-1]) and out[-1]["tokens"]
    code, out, err = carl(capsys, "eval", "--run", RID, "--n", "4", "--threshold", "0")
    assert out, err  # exit 0 (gate passed) or 1 (failed): either way the pulled model and its config were read
    assert code in (0, 1) and out[0]["run_id"] == RID and out[0]["model_path"] == str(pulled / "final")
    assert out[0]["metrics"]["n"] == 4
    import numpy as np

    np.save(tmp_path / "logits.npy", np.random.default_rng(0).normal(size=(6, 32)).astype("float32"))
    code, out, err = carl(capsys, "probe", "--logits", str(tmp_path / "logits.npy"), "--run", RID)
    assert code == 0, err
    assert out[0]["weights_from"] == f"run {RID}"


def test_a_followed_replay_after_a_pull_appends_no_event_twice(pulled):
    """`jobs logs --follow` after `run pull`: the job's replayed checkpoint event still names the container's
    path, and is recognised as the one already stored."""
    from engine.remote.mirror import LocalMirror

    before = (pulled / "events.jsonl").read_text()
    m = LocalMirror(RID)
    assert m.feed({"type": "event", "name": "checkpoint", "step": 4,
                   "path": "/job/.carl/runs/20261201-120005-c0de/checkpoints/checkpoint-4"}) is None
    assert m.feed({"type": "frame", "step": 3, "phi": 0.1}) is None
    assert (pulled / "events.jsonl").read_text() == before


# ── screens (pilot) ───────────────────────────────────────────────────────────────────────────────────

@pytest.mark.anyio
async def test_train_screen_attaches_to_a_pulled_run_and_tries_its_model(pulled, tmp_path):
    app = make_app(tmp_path, "train")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await attach(pilot)
        assert not screen.following and screen.meta["status"] == "completed" and screen.meta["backend"] == "hf"
        plan = str(screen.query_one("#plan").render())
        assert str(pulled / "config.yaml") in plan and "carl-job.yaml" not in plan
        assert screen.hardware_text().startswith("hw at step 8: ") and "H200" in screen.hardware_text()
        assert "held-out 0.310 → 0.520" in str(screen.query_one("#status").render())
        try_screen = await try_prompt(pilot)
        assert try_screen.refs[0].run_id == RID and str(pulled / "final") in str(try_screen.refs[0].model)
        ref = infer.load(infer.resolve(run=RID)).generate(PROMPT, infer.Sampling(max_new_tokens=32, greedy=True))
        assert try_screen.results[0].token_ids == ref.token_ids


@pytest.mark.anyio
async def test_a_pulled_run_still_going_is_followed_and_stopped_through_its_job(hub, tiny_env, tmp_path,  # noqa: F811
                                                                                capsys):
    d = pull(capsys, tiny_path(tiny_env), tmp_path / "r", status="running")
    app = make_app(tmp_path, "train")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = pilot.app.screen  # a run still going: the screen attaches to it by itself, and follows it
        await until(pilot, lambda: screen.run_id == RID and len(screen.frames) == 5)
        assert screen.following and screen.meta["status"] == "running"
        await pilot.press("x")
        await until(pilot, lambda: "jobs stop" in screen.message_text)
        assert "runs on hf" in screen.message_text and not (d / "stop.request").exists()
        await pilot.press("d")  # detach: the follow thread ends with the app
    code, out, err = carl(capsys, "run", "stop", RID)
    assert code == 2 and err["code"] == "carl.validation" and "jobs stop" in err["hint"]


@pytest.mark.anyio
async def test_observe_opens_a_pulled_run(pulled, tmp_path):
    app = make_app(tmp_path, "observe")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_in_observe(pilot)
        assert [f.step for f in screen.frames] == list(range(1, STEPS + 1)) and screen.ended
        assert screen.frames[-1].system["gpus"][0]["name"] == "NVIDIA H200"


@pytest.mark.anyio
async def test_observe_overlays_a_pulled_run_with_a_local_one(pulled, tmp_path):
    import os

    local = make_local_run(CarlHome.from_env().root, "20250101-120000-local", range(1, 41))
    for f in (*local.iterdir(), local):  # older than the pulled run: the picker lists the newest first
        os.utime(f, (1_700_000_000, 1_700_000_000))
    app = make_app(tmp_path, "observe")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = pilot.app.screen
        await until(pilot, lambda: screen.query_one("#obs-runs").option_count == 2)
        await pilot.press("space", "down", "space", "enter")  # the picker opens in the list: the newest (pulled) run first
        await until(pilot, lambda: not screen.overlay_pending and len(screen.overlay_runs) == 1
                    and len(screen.frames) == STEPS)
        assert [label for label, _ in screen._overlay_all()] == [RID, "20250101-120000-local"]
        assert [len(frames) for _, frames in screen._overlay_all()] == [STEPS, 40]


# ── snapshots ─────────────────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_train_screen_on_a_pulled_run_snapshot(snap_compare, snap_home, snap_env, pulled, size):
    async def run_before(pilot):
        await attach(pilot)

    assert snap_compare(make_app(snap_home, "train"), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_observe_on_a_pulled_run_snapshot(snap_compare, snap_home, snap_env, pulled, size):
    async def run_before(pilot):
        await open_in_observe(pilot)

    assert snap_compare(make_app(snap_home, "observe"), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_try_panel_on_a_pulled_run_snapshot(snap_compare, snap_home, snap_env, pulled, size):
    async def run_before(pilot):
        await attach(pilot)
        await try_prompt(pilot)

    assert snap_compare(make_app(snap_home, "train"), terminal_size=size, run_before=run_before)
