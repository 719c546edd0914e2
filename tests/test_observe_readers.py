"""observe's readers on files the real tools wrote: TRL console logs (a public one and one made by
tests/data/make_real_formats.py), a W&B offline run (wandb's own core wrote the .wandb file), a trainer_state.json
with bare Infinity/NaN (transformers wrote it), a public MLflow file store, verl's file-logger JSONL. Each one
also read live: torn tails wait, appended data arrives with poll()."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from carl_tui.batch import main as batch_main
from engine.observe import file_source, summarize
from engine.observe.sources.console import ConsoleLogSource, ConsoleParser, looks_like_console
from engine.observe.sources.mlflow import MlflowSource
from engine.observe.sources.wandb import WandbSource

DATA = Path(__file__).parent / "data"
REAL = DATA / "real"
CONSOLE = DATA / "trl_grpo_console" / "train.log"
WANDB_DIR = DATA / "trl_grpo_wandb"
NAN_STATE = next((DATA / "trl_grpo_nan").glob("checkpoint-*/trainer_state.json"))
MLRUNS = REAL / "mlflow_llm_self_training" / "mlruns"


def observe(capsys, *argv):
    code = batch_main(["observe", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


# ── console logs ───────────────────────────────────────────────────────────────────────────────────────


def test_trl_console_log_values_as_strings_steps_from_the_bar(capsys):
    code, out, _ = observe(capsys, "--file", str(CONSOLE))
    assert code == 0 and out["reader"] == "console"
    # 8 logging steps; the final {'train_runtime': …} summary is not a frame; tqdm/warnings are not garbage
    assert (out["n_frames"], out["first_step"], out["last_step"], out["skipped_lines"]) == (8, 1, 8, 0)
    assert {"reward_mean", "kl", "entropy", "frac_reward_zero_std", "clipped_ratio", "clip_ratio/region_mean",
            "grad_norm"} <= set(out["metrics"])


def test_public_console_log_without_step_takes_the_bar_counter():
    """A real Qwen2.5-VL-3B GRPO run's tee'd console (JuncyLu/trl_DAPO, see tests/data/real/SOURCES.md): dicts
    printed every 10 steps among tqdm bars that share lines with them."""
    src = file_source(REAL / "trl_dapo_vl3b_181457.console.log")
    assert isinstance(src, ConsoleLogSource)
    frames, skipped = src.load()
    assert [f.step for f in frames] == [10, 20, 30] and skipped == 0
    assert [round(f.clipped_ratio, 4) for f in frames] == [0.2969, 0.9656, 0.9953]
    assert frames[0].completion_length == pytest.approx(142.7390625)


def test_console_parser_numbers_nan_tensors_eval_and_ansi():
    p = ConsoleParser()
    text = ("\x1b[32mINFO\x1b[0m starting\n"
            "  10%|#         | 1/10 [00:01<00:09]{'loss': 0.5, 'reward': tensor(0.25, device='cuda:0'), "
            "'grad_norm': nan, 'learning_rate': '1e-05'}\n"
            "{'eval_loss': 0.7, 'epoch': 0.1}\n"
            "Map: 100%|####| 1400/1400 [00:00<00:00]\n"
            "  20%|##        | 2/10 [00:02<00:08]\n{'loss': inf, 'reward': 0.5}\n"
            "{'role': 'user', 'content': 'x'}\n")
    rows, skipped = p.feed(text.encode())
    assert skipped == 0
    assert [r["step"] for r in rows] == [1, 1, 2]  # the eval dict takes its train step; the Map bar is not one
    assert rows[0]["reward"] == 0.25 and rows[0]["learning_rate"] == 1e-05 and rows[0]["grad_norm"] != rows[0]["grad_norm"]
    assert rows[2]["loss"] == float("inf")
    assert looks_like_console(text.encode()) and not looks_like_console(b'{"step": 1, "loss": 0.1}\n')


def test_verl_console_lines():
    rows, _ = ConsoleParser().feed(b"(main_task pid=1) step:3 - actor/entropy:0.61 - critic/score/mean:0.4 - "
                                   b"response_length/mean:210.5 - actor/kl_loss:0.002\n")
    assert rows == [{"step": 3, "actor/entropy": 0.61, "critic/score/mean": 0.4, "response_length/mean": 210.5,
                     "actor/kl_loss": 0.002}]


def test_console_follow_torn_dict_waits_for_its_newline(tmp_path):
    text = CONSOLE.read_bytes()
    cut = text.index(b"{'loss'", len(text) // 2) + 40  # inside a printed dict
    p = tmp_path / "train.log"
    p.write_bytes(text[:cut])
    src = file_source(p)
    assert isinstance(src, ConsoleLogSource)
    first, skipped = src.load()
    assert skipped == 0 and 0 < len(first) < 8
    with open(p, "ab") as fh:
        fh.write(text[cut:])
    more, skipped, reset = src.poll()
    assert not reset and skipped == 0
    assert [f.step for f in first + more] == list(range(1, 9))


# ── W&B ────────────────────────────────────────────────────────────────────────────────────────────────


def test_wandb_offline_run_dir_with_trl_prefixes(capsys):
    code, out, _ = observe(capsys, "--file", str(WANDB_DIR))
    assert code == 0 and out["reader"] == "wandb" and out["run"] == "trl-grpo-offline"
    # steps are TRL's train/global_step (wandb's own _step counts every log call, timers included)
    assert (out["n_frames"], out["first_step"], out["last_step"]) == (8, 1, 8)
    assert {"reward_mean", "kl", "entropy", "frac_reward_zero_std", "clipped_ratio"} <= set(out["metrics"])
    assert not any(m.startswith(("profiling/", "_runtime")) for m in out["metrics"])
    src = file_source(WANDB_DIR)
    src.load()
    assert src.ended()  # the exit record


def test_wandb_file_torn_tail_then_growth(tmp_path):
    whole = next(WANDB_DIR.glob("*/run-*.wandb")).read_bytes()
    p = tmp_path / "run-x.wandb"
    p.write_bytes(whole[: len(whole) // 2 + 13])  # cut mid-record
    src = file_source(p)
    assert isinstance(src, WandbSource)
    first, skipped = src.load()
    assert skipped == 0 and not src.ended()
    with open(p, "ab") as fh:
        fh.write(whole[len(whole) // 2 + 13:])
    more, skipped, _ = src.poll()
    assert skipped == 0 and src.ended()
    assert [f.step for f in first + more] == list(range(1, 9))


def test_wandb_corrupt_record_is_counted_not_fatal(tmp_path):
    whole = bytearray(next(WANDB_DIR.glob("*/run-*.wandb")).read_bytes())
    whole[2000] ^= 0xFF  # flip a byte inside an early record: its CRC no longer matches
    p = tmp_path / "run-y.wandb"
    p.write_bytes(bytes(whole))
    frames, skipped = file_source(p).load()
    assert skipped >= 1 and len(frames) >= 7


# ── NaN / Infinity JSON ────────────────────────────────────────────────────────────────────────────────


def test_trainer_state_with_bare_infinity_opens_and_is_bad(capsys):
    assert b"Infinity" in NAN_STATE.read_bytes()  # transformers wrote it with allow_nan
    code, out, _ = observe(capsys, "--file", str(NAN_STATE))
    assert code == 0 and out["reader"] == "trainer_state" and out["n_frames"] == 6
    f = {x["code"]: x for x in out["health"]["findings"]}["nonfinite_reward"]
    assert f["severity"] == "bad" and f["first_step"] == 4 and out["health"]["status"] == "bad"


def test_jsonl_with_nan_and_infinity(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1, "loss": 0.5, "grad_norm": 1.0}\n{"step": 2, "loss": NaN, "grad_norm": Infinity}\n'
                 '{"step": 3, "loss": -Infinity}\n')
    frames, skipped = file_source(p).load()
    assert skipped == 0 and [f.step for f in frames] == [1, 2, 3]
    codes = {x["code"] for x in summarize(frames, source="m", run="m")["health"]["findings"]}
    assert {"nonfinite_loss", "nonfinite_grad"} <= codes


# ── MLflow ─────────────────────────────────────────────────────────────────────────────────────────────


def test_public_mlflow_file_store(capsys):
    code, out, _ = observe(capsys, "--file", str(MLRUNS))
    assert code == 0 and out["reader"] == "mlflow"
    assert out["run"] == "iteration_3" and out["n_frames"] == 1 and out["last_step"] == 3
    assert {"acceptance_rate", "avg_quality_score"} <= set(out["metrics"])
    assert file_source(MLRUNS).ended()  # status 3 = FINISHED


def test_mlflow_follow_appended_metric_lines(tmp_path):
    store = tmp_path / "mlruns"
    shutil.copytree(MLRUNS, store)
    src = file_source(store)
    assert isinstance(src, MlflowSource)
    run_dir = src.run_dir
    meta = (run_dir / "meta.yaml").read_text()
    (run_dir / "meta.yaml").write_text(meta.replace("status: 3", "status: 1"))  # running again
    src.load()
    metric = run_dir / "metrics" / "acceptance_rate"
    with open(metric, "a") as fh:
        fh.write("1777311700000 0.5 4\n1777311700001 0.6 5\n1777311700002 0.7")  # last line torn
    frames, _, _ = src.poll()
    assert [f.step for f in frames] == [4]  # 5 is the newest step: its other metrics may still come
    with open(metric, "a") as fh:
        fh.write(" 6\n")
    (run_dir / "meta.yaml").write_text(meta)  # finished
    frames, _, _ = src.poll()
    assert [f.step for f in frames] == [5, 6] and src.ended()


# ── verl ───────────────────────────────────────────────────────────────────────────────────────────────


def test_verl_file_logger_jsonl(capsys, tmp_path):
    p = tmp_path / "exp.jsonl"
    rows = [{"step": s, "data": {"actor/entropy": 1.0 - 0.01 * s, "critic/score/mean": 0.1 * s,
                                 "response_length/mean": 300.0, "response_length/clip_ratio": 0.01,
                                 "actor/kl_loss": 0.001 * s}} for s in range(1, 6)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = observe(capsys, "--file", str(p))
    assert code == 0 and out["reader"] == "verl" and out["n_frames"] == 5
    assert {"entropy", "reward_mean", "completion_length", "clipped_ratio", "kl"} <= set(out["metrics"])
