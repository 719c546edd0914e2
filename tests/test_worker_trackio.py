"""Trackio in the worker: its store lives under CARL_HOME (RunStore.spawn sets TRACKIO_DIR in the worker's
environment, so it is there before trackio is imported), and a finished run's last log line says where the
metrics are, not "Uploading logs to Trackio"."""

from __future__ import annotations

import subprocess
import sys


# What the worker does around trackio, in a process of its own started with the worker's environment: the carl
# callback's on_train_begin (trackio.init), one logged step, on_train_end (trackio.finish).
SCRIPT = """
import sys
from transformers import TrainerControl, TrainerState, TrainingArguments
from engine.trainer.callbacks import make_callback
run = sys.argv[1]
cb = make_callback(run, state_ref=lambda: None, should_stop=lambda: False, on_event=lambda e: None,
                   trackio_project="demo", run_name="r1")
state = TrainerState(); state.global_step = 1
args = TrainingArguments(output_dir=run + "/out", use_cpu=True, report_to=[])
cb.on_train_begin(args, state, TrainerControl())
cb.trackio.log({"reward": 0.5}, step=1)
cb.on_train_end(args, state, TrainerControl())
"""


def _spawn_env(monkeypatch) -> dict:
    """The environment RunStore.spawn gives a worker (Popen's env, captured; nothing is started)."""
    import subprocess as sp

    from engine.runs import RunStore

    seen: dict = {}

    class _Stop(Exception):
        pass

    def fake_popen(cmd, **kw):
        seen.update(kw["env"])
        raise _Stop

    store = RunStore()
    run_id = store.create("grpo:\n  max_steps: 1\n", {})
    with monkeypatch.context() as mp:
        mp.setattr(sp, "Popen", fake_popen)
        try:
            store.spawn(run_id)
        except _Stop:
            pass
    return seen


def test_spawn_puts_trackio_under_carl_home_unless_set(tmp_path, monkeypatch):
    monkeypatch.setenv("CARL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    assert _spawn_env(monkeypatch)["TRACKIO_DIR"] == str(tmp_path / "home" / "trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "mine"))  # one the user chose is kept
    assert _spawn_env(monkeypatch)["TRACKIO_DIR"] == str(tmp_path / "mine")


def test_a_finished_run_writes_trackio_in_carl_home_and_ends_without_an_upload_line(tmp_path, monkeypatch):
    home, user = tmp_path / "home", tmp_path / "user"
    user.mkdir()
    monkeypatch.setenv("CARL_HOME", str(home))
    monkeypatch.setenv("HOME", str(user))
    for name in ("TRACKIO_DIR", "HF_HOME", "TRACKIO_SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    env = _spawn_env(monkeypatch)  # exactly what a spawned worker gets
    run = tmp_path / "run"
    run.mkdir()
    log = run / "stdout.log"
    with open(log, "wb") as out:
        rc = subprocess.run([sys.executable, "-c", SCRIPT, str(run)], stdout=out, stderr=subprocess.STDOUT,
                            env=env, cwd=tmp_path, timeout=240).returncode
    text = log.read_text(errors="replace")
    assert rc == 0, text[-2000:]
    lines = [x for x in text.splitlines() if x.strip()]
    assert "Uploading logs to Trackio" not in text
    assert lines[-1] == f"carl: trackio metrics saved in {home / 'trackio'}"
    assert any((home / "trackio").rglob("*.db")), sorted(p.name for p in (home / "trackio").rglob("*"))
    assert not (user / ".cache" / "huggingface" / "trackio").exists()
    # and observe finds it there without being told: `trackio:demo` reads CARL_HOME/trackio when TRACKIO_DIR is unset
    from engine.observe.sources.trackio import TrackioLocalSource

    src = TrackioLocalSource("demo")
    assert src.trackio_dir == home / "trackio"
    frames, _ = src.load()
    assert [f.step for f in frames] == [1] and src.run == "r1"
