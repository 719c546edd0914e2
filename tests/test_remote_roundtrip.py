"""A remote job's full round trip on loopback, no mocks on the path: `jobs submit` builds carl's wheel and ships
it through a private repo on the loopback Hub → the loopback HF Jobs server really runs the job's command in a
venv that has carl's dependencies but not carl (tests/_job_container.py) → the job downloads and installs the
wheel, trains the tiny demo and uploads checkpoints, frames, events, meta, config and (after the eval gate) the
final model to train.output_repo → `jobs logs --follow` puts the frames into the local run while the job runs →
`run pull` brings the run home → `run show`, `observe`, `infer --run` and the train screen work on it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests._job_container import LocalContainer, make_deps_venv
from tests._tiny_fixture import SFT_STEPS, tiny_cache, tiny_env  # noqa: F401  (fixtures)
from tests.test_jobs_cli import FAST_RETRIES, carl

REPO_ID = "alice/roundtrip-out"
STEPS, SAVE = 4, 2


def config(tmp_path: Path, **train: object) -> Path:
    data = {
        "project": {"name": "roundtrip"},
        "grpo": {"max_steps": STEPS, "save_steps": SAVE, "batch_size": 8, "num_generations": 4,
                 "max_completion_length": 5, "learning_rate": 1e-3},
        "compute": {"device": "cpu"},
        "tracking": {"trackio": False},
        # a gate any finite eval passes: this test is about the final model reaching the repo after it
        "eval": {"threshold": 0.0, "phi_min": 0.0, "min_distinct": 0.0, "max_top_share": 1.0},
        "train": {"output_repo": REPO_ID, **train},
        "remote": {"hf": {"flavor": "cpu-basic"}, "hours": 0.1, "retries": FAST_RETRIES, "poll_interval_s": 0.05},
    }
    p = tmp_path / "carl.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


@pytest.mark.slow
def test_submit_train_upload_follow_pull_infer(hub, tiny_env, tmp_path, capsys):  # noqa: F811
    venv = make_deps_venv(tmp_path / "container")
    no_carl = subprocess.run([str(venv / "bin" / "python"), "-c", "import engine"], capture_output=True,
                             cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert no_carl.returncode != 0, "the job's venv must not have carl before the job installs it"
    hub.executor = LocalContainer(venv, tmp_path / "jobs", extra_env={
        "CARL_TINY_CACHE": str(tiny_env), "CARL_TINY_SFT_STEPS": SFT_STEPS, "CARL_LEDGER_PASSPHRASE": "test"})
    cfg_path = config(tmp_path)

    code, out, err = carl(capsys, "jobs", "submit", "--config", str(cfg_path), "--approve")
    assert code == 0, err
    job = out[0]
    rid, jid = job["run_id"], job["remote_id"]
    assert job["ship"] == "wheel" and job["output_repo"] == REPO_ID and jid in hub.procs

    # follow the job: every frame is in the local run's frames.jsonl while the job is still running
    from engine.config import validate_dict
    from engine.frames import read_frames
    from engine.home import CarlHome
    from engine.remote.jobs import job_logs, job_status

    cfg = validate_dict(yaml.safe_load(cfg_path.read_text()))
    local = CarlHome.from_env().runs / rid
    _, lines = job_logs(rid, cfg, follow=True)
    seen_live, log = [], []
    for line in lines:
        log.append(line)
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("type") == "frame":
            if hub.jobs[jid]["status"]["stage"] == "RUNNING":
                stored = [f.step for f in read_frames(local / "frames.jsonl")[0]]
                assert obj["step"] in stored
                seen_live.append(obj["step"])
    def story() -> str:
        return (f"client saw {len(log)} lines, the job printed {len(hub.logs[jid])}, stage "
                f"{hub.jobs[jid]['status']}; last job lines:\n" + "\n".join(hub.logs[jid][-30:]))

    assert job_status(rid, cfg)["status"] == "completed", story()
    assert seen_live, "no frame reached the local run while the job ran: " + story()
    assert [f.step for f in read_frames(local / "frames.jsonl")[0]] == list(range(1, STEPS + 1))

    # the repo holds the run: checkpoints, bookkeeping and the final model (the gate passed)
    files = hub.repos[REPO_ID].files
    assert hub.repos[REPO_ID].private and len(hub.repos[REPO_ID].commits) >= 3
    pre = f"runs/{rid}/"
    for name in ("meta.json", "config.yaml", "frames.jsonl", "events.jsonl", "final/config.json",
                 f"checkpoints/checkpoint-{SAVE}/trainer_state.json",
                 f"checkpoints/checkpoint-{STEPS}/trainer_state.json"):
        assert pre + name in files, sorted(files)
    assert any(p.startswith(pre + "final/") and p.endswith(".safetensors") for p in files)
    meta = json.loads(files[pre + "meta.json"])
    assert meta["status"] == "completed" and meta["output"]["final_uploaded"] is True
    assert "passed" in meta["output"]["final_reason"]

    # bring it home: every local tool works on it
    code, out, err = carl(capsys, "run", "pull", rid)
    assert code == 0, err
    pulled = out[0]
    assert pulled["has_final"] and pulled["status"] == "completed" and pulled["last_step"] == STEPS
    assert pulled["last_checkpoint"] == STEPS and pulled["backend"] == "hf"
    code, out, _ = carl(capsys, "run", "show", rid)
    assert code == 0 and out[0]["status"] == "completed" and out[0]["backend"] == "hf"
    code, out, _ = carl(capsys, "observe", "--run", rid)
    assert code == 0 and out, "observe reads the pulled run"
    code, out, err = carl(capsys, "infer", "--run", rid, "--prompt", "12+34=", "--greedy", "--max-new-tokens", "4")
    assert code == 0, err
    res = out[-1]
    assert isinstance(res["text"], str) and res["tokens"], res
    assert str(local / "final") in json.dumps(res)
    # the pulled run opens in the workbench like a local one (each screen: tests/test_remote_pulled.py)
    import asyncio

    asyncio.run(open_in_train_screen(rid, local))
    from tests.test_jobs_cli import assert_no_secret_under

    assert_no_secret_under(CarlHome.from_env().root, hub.token)


async def open_in_train_screen(rid: str, local: Path) -> None:
    """Keys only: the train screen, a (attach to the newest run) — the pulled run, with all its frames, its final
    eval and its config here (not the container's)."""
    from carl_tui.app import CarlApp
    from engine.home import CarlHome
    from screens.context import WorkbenchContext
    from tests.test_observe_view_screen import until
    from tests.test_remote_pulled import settle

    app = CarlApp(ctx=WorkbenchContext(home=CarlHome.from_env(), cwd=local.parent), screen="train")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("a")
        screen = app.screen
        await until(pilot, lambda: screen.run_id == rid and len(screen.frames) == STEPS)
        assert screen.meta["status"] == "completed" and not screen.following
        assert str(local / "config.yaml") in str(screen.query_one("#plan").render())
        assert "held-out" in str(screen.query_one("#status").render())
