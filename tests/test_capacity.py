"""What this machine can load (engine.capacity) and doctor's load row."""

from __future__ import annotations

import pytest

from engine.capacity import BYTES_PER_PARAM, GPU_USABLE, TRAIN_FACTOR, estimate


def test_estimate_follows_the_documented_rule():
    cap = estimate("cuda", 80.0, quantization=True, logits_budget_mb=8192)
    room = (80.0 * GPU_USABLE - 8.0) * 2**30
    assert set(cap.precisions) == {"bfloat16", "8bit", "4bit"}
    assert cap.precisions["bfloat16"]["infer_b"] == pytest.approx(room / 2 / 1e9, abs=0.5)
    assert cap.precisions["4bit"]["lora_b"] == pytest.approx(room / (BYTES_PER_PARAM["4bit"] * TRAIN_FACTOR) / 1e9,
                                                             abs=0.5)
    assert cap.precisions["4bit"]["lora_b"] > cap.precisions["8bit"]["lora_b"] > cap.precisions["bfloat16"]["lora_b"]
    # a 7B model in bf16 LoRA fits an 80 GB GPU; on a 16 GB one it needs 4-bit
    assert cap.precisions["bfloat16"]["lora_b"] >= 7
    small = estimate("cuda", 16.0, quantization=True, logits_budget_mb=2048)
    assert small.precisions["bfloat16"]["lora_b"] < 7 <= small.precisions["4bit"]["lora_b"]
    cpu = estimate("cpu", 20.0, quantization=False, logits_budget_mb=512)
    assert set(cpu.precisions) == {"float32", "bfloat16"} and "needs CUDA" in cpu.note
    assert cpu.to_dict()["device"] == "cpu" and "float32" in cpu.summary()


def test_doctor_reports_what_this_machine_can_load():
    from engine.doctor import check_load, run_checks

    row = check_load()
    assert row.name == "load" and row.status in ("ok", "warn")
    assert "LoRA" in row.detail and "infer" in row.detail
    assert "load" in [c.name for c in run_checks()]


def test_gpu_check_refuses_without_cuda(capsys, monkeypatch):
    import json
    import runpy
    from pathlib import Path

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: bench/gpu_check.py would run for real")
    script = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"
    # the script as `python bench/gpu_check.py` runs it (as __main__, no arguments), in this process
    monkeypatch.setattr("sys.argv", [str(script)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    res = capsys.readouterr()
    assert exit_.value.code == 2, res.err
    out = json.loads(res.out)
    assert out["ran"] is False and "CUDA" in out["reason"] and set(out) == {"bench", "ran", "reason", "hint"}
