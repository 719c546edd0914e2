"""engine.frames: round trip, torn/garbage lines, NaN, growing files, truncation and rotation."""

from __future__ import annotations

import math
import os
import threading

from engine.frames import FRAME_FIELDS, Frame, FrameTail, FrameWriter, JsonlTail, parse_line, read_frames


def test_round_trip_keeps_every_field(tmp_path):
    p = tmp_path / "frames.jsonl"
    f = Frame(step=3, phi=0.2, entropy=1.5, reward_mean=0.4, task_reward=0.3, carl_reward=0.5,
              rewards={"acc": 0.3}, carl_components={"coherence": 0.6}, gate="B", carl_weight=0.5, loss=0.1,
              lr=1e-5, kl=0.01, completion_length=42.0, clipped_ratio=0.1, frac_reward_zero_std=0.25,
              step_time=0.7, timestamp=1.0, sample="hello", extra={"grad_norm": 1.2})
    with FrameWriter(p) as w:
        w.write(f)
        w.write({"step": 4, "phi": 0.25})
    frames, skipped = read_frames(p)
    assert skipped == 0
    assert frames[0] == f
    assert frames[1].step == 4 and frames[1].phi == 0.25 and frames[1].timestamp is not None
    assert set(FRAME_FIELDS) >= {"step", "phi", "rewards", "extra", "sample"}


def test_nan_loss_survives_and_unknown_numeric_keys_go_to_extra(tmp_path):
    p = tmp_path / "f.jsonl"
    with FrameWriter(p) as w:
        w.write({"step": 1, "loss": float("nan"), "kl": float("inf"), "grad_norm": 2.0, "run_id": "x"})
    (fr,), skipped = read_frames(p)
    assert skipped == 0 and math.isnan(fr.loss) and fr.kl == math.inf
    assert fr.extra == {"grad_norm": 2.0}
    assert math.isnan(parse_line(b'{"a": NaN}')["a"])


def test_torn_blank_and_garbage_lines_are_skipped_and_counted(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_bytes(b'{"step":1,"phi":0.1}\n\n   \nnot json\n[1,2]\n{"phi":0.3}\n{"step":"x"}\n'
                  b'{"type":"event","name":"gate_open","step":2}\n{"type":"frame","step":2,"phi":0.2}\n'
                  b'{"step":3,"ph')
    frames, skipped = read_frames(p)
    assert [f.step for f in frames] == [1, 2]
    # garbage, a list, no step, a non-integer step, the torn last line; blank lines and events are not errors
    assert skipped == 5


def test_read_while_a_writer_appends(tmp_path):
    p = tmp_path / "f.jsonl"
    n = 2000
    done = threading.Event()

    def writer():
        with FrameWriter(p) as w:
            for i in range(n):
                w.write({"step": i, "phi": i / n})
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    tail = FrameTail(p)
    got: list[Frame] = []
    while True:
        finished = done.is_set()
        frames, skipped, reset = tail.poll()
        assert skipped == 0 and not reset
        got += frames
        if finished and not frames:
            break
    t.join()
    assert [f.step for f in got] == list(range(n))


def test_tail_holds_back_a_partial_line_until_its_newline(tmp_path):
    p = tmp_path / "f.jsonl"
    tail = JsonlTail(p)
    assert tail.poll() == ([], False)  # missing file: nothing yet, no error
    p.write_bytes(b'{"step":1}\n{"step":2,"ph')
    lines, _ = tail.poll()
    assert lines == [b'{"step":1}'] and tail.pending == b'{"step":2,"ph'
    with open(p, "ab") as fh:
        fh.write(b'i":0.5}\n')
    lines, _ = tail.poll()
    assert lines == [b'{"step":2,"phi":0.5}'] and tail.pending == b""


def test_tail_detects_truncation_and_rotation(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_bytes(b'{"step":1}\n{"step":2}\n')
    tail = FrameTail(p)
    assert [f.step for f in tail.poll()[0]] == [1, 2]
    p.write_bytes(b'{"step":10}\n')  # truncated and rewritten (shorter)
    frames, _, reset = tail.poll()
    assert reset and [f.step for f in frames] == [10]
    rotated = tmp_path / "f.jsonl.1"
    os.rename(p, rotated)
    p.write_bytes(b'{"step":20}\n{"step":21}\n{"step":22}\n')  # a new file (new inode), longer than before
    frames, _, reset = tail.poll()
    assert reset and [f.step for f in frames] == [20, 21, 22]
    assert tail.tail.resets == 2
