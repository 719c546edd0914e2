"""Config fields that tell the truth (#13): each test fails if its field is ignored or does something else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.cascade import Cascade, CrystallizationGate, PercentileGate, make_gate
from engine.config import CascadeSection, validate_dict
from engine.errors import ConfigError
from engine.trainer import task_rewards as tr
from tests._chat_fixture import chat_model  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
SKEWED = {"coherence": 0.0, "cloud": 1.0, "discontinuity": 0.0}


# ------------------------------------------------------------------------------------------ compute.device
def test_device_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    import torch

    from engine import infer
    from engine.trainer.grpo import resolve_device

    auto = validate_dict({})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device(auto) == "mps" and infer._default_device() == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(auto) == "cuda" and infer._default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device(auto) == "cpu"
    assert resolve_device(validate_dict({"compute": {"device": "mps"}})) == "mps"


# ------------------------------------------------------------------------------------------ cascade fields
def test_warmup_steps_ramps_the_carl_weight_after_the_gate_opens():
    c = Cascade(make_gate(CascadeSection(mode="fixed", fixed_step=3), "exact"), weight=2.0, warmup_steps=4)
    for step in range(1, 3):
        c.observe(step, {})
        assert c.carl_weight(step) == 0.0
    c.observe(3, {})
    assert [c.carl_weight(s) for s in (3, 4, 5, 6, 7)] == [0.5, 1.0, 1.5, 2.0, 2.0]
    assert Cascade(make_gate(CascadeSection(mode="off"), "exact"), weight=2.0, warmup_steps=0).carl_weight(1) == 0.0


def test_min_steps_is_the_number_of_metric_values_before_a_threshold_exists():
    g = PercentileGate("exact", q=0.6, min_steps=7, window=3, min_above=1)
    opened = [g.observe(s, {"exact": 1.0 if s != 2 else float("nan")}) for s in range(1, 10)]
    # step 2's NaN is no value: the 7th value arrives at step 8
    assert opened.index(True) + 1 == 8 and g.threshold == 1.0
    assert CascadeSection.model_fields["min_steps"].description.startswith("mode=metric/percentile")


def test_crystallization_threshold_is_a_sum_over_the_window():
    g = CrystallizationGate(window=3, threshold=1.0)
    assert [g.observe(s, {"crystallization": 0.4}) for s in (1, 2, 3)] == [False, False, True]
    g = CrystallizationGate(window=2, threshold=1.0)  # 0.4 + 0.4 never reaches 1.0 in a window of 2
    assert not any(g.observe(s, {"crystallization": 0.4}) for s in range(1, 10))


def test_the_default_mode_is_evidence_in_config_code_and_docs():
    assert CascadeSection().mode == "evidence" and make_gate(CascadeSection(), "exact").mode == "evidence"
    import engine.cascade

    assert "``metric`` (default)" not in engine.cascade.__doc__
    row = next(ln for ln in (REPO / "docs" / "config.md").read_text().splitlines() if ln.startswith("| `cascade`"))
    assert "(**evidence**" in row and "(metric)" not in row


# ------------------------------------------------------------------------------------------ answer extraction
@pytest.mark.parametrize("extract,completion,answer,score", [
    ("gsm8k", "3 apples and 4 more makes 7.\n#### 7", "#### 7", 1.0),
    ("gsm8k", "the answer is 7", "#### 7", 0.0),  # no marker: nothing to judge
    ("boxed", r"so $x = \boxed{\frac{3}{4}}$ … or \boxed{18}", "#### 18", 1.0),
    ("boxed", "18", "#### 18", 0.0),
    ("last_number", "first 3, then 1,234.", "1234", 1.0),
    ("answer_tag", "<think>5? no, 6</think><answer> 6 </answer>", "6", 1.0),
    ("answer_tag", "6", "6", 0.0),
])
def test_numeric_extractors(extract, completion, answer, score):
    assert tr.make_numeric(1e-6, extract)(None, [completion], answer=[answer]) == [score]


def test_exact_and_regex_judge_the_extracted_answer_and_auto_keeps_the_old_rules():
    assert tr.make_exact("boxed")(None, [r"\boxed{Paris} (I think)"], answer=["Paris"]) == [1.0]
    assert tr.make_exact("auto")(None, [r"\boxed{Paris} (I think)"], answer=["Paris"]) == [0.0]
    assert tr.make_exact("auto")(None, ["working\n82"], answer=["82"]) == [1.0]
    assert tr.make_regex(r"^\d+$", "answer_tag")(None, ["text <answer>42</answer>"]) == [1.0]
    assert tr.make_numeric(1e-6)(None, ["7 #### 8"], answer=["#### 8"]) == [1.0]
    name, fn = tr.build(validate_dict({"task": {"rewards": [{"kind": "numeric", "extract": "boxed"}]}}).task.rewards[0])
    assert fn(None, [r"\boxed{5}", "5"], answer=["5", "5"]) == [1.0, 0.0]


def test_extract_on_a_kind_that_has_no_answer_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        validate_dict({"task": {"rewards": [{"kind": "tool_json", "extract": "boxed"}]}})
    assert "task.rewards[0].extract" in str(e.value)


# ------------------------------------------------------------------------------------------ CARL weights
def _logits(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "l.npy"
    np.save(path, (rng.standard_normal((24, 50)) * 3).astype(np.float32))
    return path


def _probe(tmp_path: Path, *args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", "probe", "--logits", str(_logits(tmp_path)),
                        *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _run_with_weights(home: Path, weights: dict, model: str = "builtin:tiny", final: Path | None = None) -> str:
    from engine.home import CarlHome
    from engine.runs import RunStore

    store = RunStore(CarlHome(home))
    cfg = validate_dict({"model": {"name_or_path": model}, "rewards": {"carl": {"weights": weights}}})
    run_id = store.create(cfg.to_yaml(), {})
    if final is not None:
        import shutil

        shutil.copytree(final, store.run_dir(run_id) / "final")
    return run_id


def test_probe_verb_uses_the_project_weights_then_the_runs(tmp_path):
    default = _probe(tmp_path)
    assert default["weights_from"] == "default" and default["weights"]["coherence"] == 0.5
    (tmp_path / "carl.yaml").write_text(yaml.safe_dump({"rewards": {"carl": {"weights": SKEWED}}}))
    project = _probe(tmp_path)
    assert project["weights"] == SKEWED and project["weights_from"].endswith("carl.yaml")
    assert project["rewards"]["carl"] == pytest.approx(project["rewards"]["cloud"])
    assert project["rewards"]["carl"] != pytest.approx(default["rewards"]["carl"])
    run_id = _run_with_weights(tmp_path / "carl-home", {"coherence": 1.0, "cloud": 0.0, "discontinuity": 0.0})
    run = _probe(tmp_path, "--run", run_id[:8])
    assert run["weights_from"] == f"run {run_id}"
    assert run["rewards"]["carl"] == pytest.approx(run["rewards"]["coherence"])


def test_chat_probe_tool_uses_the_project_weights(tmp_path):
    from engine.chat.tools import ToolContext, build_registry
    from engine.home import CarlHome

    _logits(tmp_path)
    (tmp_path / "carl.yaml").write_text(yaml.safe_dump({"rewards": {"carl": {"weights": SKEWED}}}))
    ctx = ToolContext(home=CarlHome(tmp_path / "carl-home"), cwd=tmp_path)
    out = build_registry().call("probe_logits", {"logits": "l.npy"}, ctx)
    assert out.ok, out
    result = out.result if isinstance(out.result, dict) else json.loads(out.result)
    assert result["weights"] == SKEWED and result["rewards"]["carl"] == pytest.approx(result["rewards"]["cloud"])


def test_infer_run_scores_with_the_runs_weights(tmp_path, chat_model, monkeypatch):
    from carl_tui.batch import main as batch_main

    home = tmp_path / "carl-home"
    monkeypatch.setenv("CARL_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    run_id = _run_with_weights(home, SKEWED, model=str(chat_model), final=chat_model)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = batch_main(["infer", "--run", run_id, "--prompt", "2+2?", "--max-new-tokens", "4", "--greedy",
                         "--device", "cpu"])
    assert rc == 0
    res = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert res["carl_weights"] == SKEWED and res["settings_from"] == f"run {run_id}"
    assert res["rewards"]["carl"] == pytest.approx(res["rewards"]["cloud"])
    assert res["templated"] is True  # the chat model's template rendered the prompt


def test_infer_model_follows_the_projects_carl_yaml_and_flags_override(tmp_path, chat_model, monkeypatch):
    import contextlib
    import io

    from carl_tui.batch import main as batch_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "carl.yaml").write_text(yaml.safe_dump({"rewards": {"carl": {"weights": SKEWED}},
                                                        "dataset": {"system_prompt": "Be brief."}}))

    def infer(*extra: str) -> dict:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert batch_main(["infer", "--model", str(chat_model), "--prompt", "2+2?", "--max-new-tokens", "2",
                               "--greedy", "--device", "cpu", *extra]) == 0
        return json.loads(buf.getvalue().strip().splitlines()[-1])

    res = infer()
    assert res["settings_from"].endswith("carl.yaml") and res["carl_weights"] == SKEWED
    assert res["templated"] and res["system_prompt"] == "Be brief."
    # <bos><|system|>Be brief.<|end|><|user|>2+2?<|end|><|assistant|>: 1 + 1 + 9 + 1 + 1 + 4 + 1 + 1 tokens
    assert res["prompt_tokens"] == 19
    raw = infer("--chat-template", "none", "--system-prompt", "")
    assert not raw["templated"] and raw["prompt_tokens"] == len("2+2?")
