"""The trainer callback never swallows a tracking failure: it is said in the worker log and as a run event."""

from __future__ import annotations

import json


class _FailingTracker:
    """Fault injection: a tracker whose flush fails (what a full disk or a dead trackio server does)."""

    def __init__(self) -> None:
        self.logged: list[dict] = []

    def log(self, metrics, step=None):
        raise OSError("No space left on device")

    def finish(self):
        raise OSError("No space left on device")


def _callback(tmp_path, events):
    from engine.trainer.callbacks import make_callback

    return make_callback(tmp_path, state_ref=lambda: None, should_stop=lambda: False, on_event=events.append)


def test_a_failed_trackio_finish_is_a_run_event_and_a_log_line(tmp_path, capsys):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    events: list[dict] = []
    cb = _callback(tmp_path, events)
    cb.trackio = _FailingTracker()
    state = TrainerState()
    state.global_step = 7
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    cb.on_train_end(args, state, TrainerControl())
    assert events == [{"name": "tracking_error", "step": 7, "op": "trackio.finish",
                       "error": "OSError: No space left on device"}]
    assert "carl: trackio finish failed at step 7: OSError: No space left on device" in capsys.readouterr().out


def test_a_failing_trackio_log_is_said_once_as_an_event_every_time_in_the_log(tmp_path, capsys):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    events: list[dict] = []
    cb = _callback(tmp_path, events)
    cb.trackio = _FailingTracker()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], logging_steps=1)
    state = TrainerState()
    for step in (1, 2):
        state.global_step = step
        cb.on_log(args, state, TrainerControl(), logs={"loss": 0.5, "reward": 0.25})
    assert [e["op"] for e in events] == ["trackio.log"]
    assert events[0]["step"] == 1
    out = capsys.readouterr().out
    assert out.count("carl: trackio log failed") == 2
    frames = [json.loads(x) for x in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert [f["step"] for f in frames] == [1, 2]  # the frames still reach frames.jsonl
