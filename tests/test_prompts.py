"""Prompts as the model expects them (engine/prompts.py) and the config fields that must tell the truth (#13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import preset, validate_dict
from engine.errors import ConfigError
from engine.prompts import PromptFormat, as_text, encode, messages, model_input, render, truncate_left
from tests._chat_fixture import NO_SYSTEM_TEMPLATE, build_chat_tokenizer, chat_model, write_jsonl  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "Answer with a number."
ROWS = [{"question": f"What is {a} plus {b}? Think first.", "answer": f"so #### {a + b}"}
        for a, b in ((3, 4), (10, 22), (7, 7), (12, 5), (2, 9), (31, 1), (8, 8), (5, 6))]


def carl(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", *args], capture_output=True, text=True,
                       cwd=cwd, timeout=300)
    return p.returncode, p.stdout, p.stderr


# ------------------------------------------------------------------------------------------ rendering
def test_templated_prompt_is_system_then_user_then_the_generation_prompt():
    tok = build_chat_tokenizer()
    fmt = PromptFormat(system_prompt=SYSTEM)
    assert model_input("2+2?", tok, fmt) == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "2+2?"}]
    assert render("2+2?", tok, fmt) == f"<bos><|system|>{SYSTEM}<|end|><|user|>2+2?<|end|><|assistant|>"
    ids = encode("2+2?", tok, fmt)
    # tokenized as TRL does: the template's own BOS, nothing added, and the text round-trips
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids) == render("2+2?", tok, fmt)
    assert render("2+2?", tok, PromptFormat()) == "<bos><|user|>2+2?<|end|><|assistant|>"  # no system prompt


def test_none_and_a_tokenizer_without_template_give_the_raw_text():
    tok = build_chat_tokenizer()
    assert render("2+2?", tok, PromptFormat(chat_template="none")) == "2+2?"
    assert render("2+2?", tok, PromptFormat(chat_template="none", system_prompt=SYSTEM)) == f"{SYSTEM}\n\n2+2?"
    plain = build_chat_tokenizer(template=None)
    assert render("2+2?", plain, PromptFormat(chat_template="auto", system_prompt=SYSTEM)) == f"{SYSTEM}\n\n2+2?"
    assert encode("2+2?", plain, PromptFormat()) == plain(text="2+2?")["input_ids"]


def test_a_template_without_system_role_gets_the_system_prompt_in_the_user_message():
    tok = build_chat_tokenizer(NO_SYSTEM_TEMPLATE)
    msgs = messages("2+2?", tok, PromptFormat(system_prompt=SYSTEM))
    assert msgs == [{"role": "user", "content": f"{SYSTEM}\n\n2+2?"}]
    assert render("2+2?", tok, PromptFormat(system_prompt=SYSTEM)) == \
        f"<bos><|user|>{SYSTEM}\n\n2+2?<|end|><|assistant|>"


def test_conversational_rows_keep_their_messages_and_gain_the_system_prompt():
    tok = build_chat_tokenizer()
    row = [{"role": "user", "content": "hi"}]
    assert model_input(row, tok, PromptFormat(system_prompt=SYSTEM))[0] == {"role": "system", "content": SYSTEM}
    assert as_text(row) == "hi"


def test_max_prompt_length_trims_the_user_text_never_the_template():
    tok = build_chat_tokenizer()
    q = "a long question " * 4
    fmt = PromptFormat(system_prompt=SYSTEM)
    full = encode(q, tok, fmt)
    overhead = len(encode("", tok, fmt))  # bos, headers, the system prompt, the generation prompt
    cut = encode(q, tok, PromptFormat(system_prompt=SYSTEM, max_prompt_length=overhead + 10))
    assert len(full) > overhead + 10 and len(cut) == overhead + 10 and truncate_left([1, 2, 3], None) == [1, 2, 3]
    # the system prompt whole, the user text's last 10 characters, the generation prompt
    assert tok.decode(cut) == f"<bos><|system|>{SYSTEM}<|end|><|user|>{q[-10:]}<|end|><|assistant|>"
    with pytest.raises(ConfigError, match="row 3") as e:  # a limit below the template's own cost names the row
        encode(q, tok, PromptFormat(system_prompt=SYSTEM, max_prompt_length=overhead - 1), row=3)
    assert e.value.context["template_tokens"] == overhead
    folded = build_chat_tokenizer(NO_SYSTEM_TEMPLATE)  # the system prompt folded into the user message stays too
    cut = encode(q, folded, PromptFormat(system_prompt=SYSTEM, max_prompt_length=overhead + 10))
    assert folded.decode(cut).startswith(f"<bos><|user|>{SYSTEM}\n\n") and folded.decode(cut).endswith(
        f"{q[-(overhead + 10 - len(encode('', folded, fmt))):]}<|end|><|assistant|>")


# ------------------------------------------------------------------------------------------ --dry-run
def _project(tmp_path: Path, model: Path, **dataset) -> Path:
    data = write_jsonl(tmp_path / "data.jsonl", ROWS)
    cfg = {"model": {"name_or_path": str(model)},
           "dataset": {"source": str(data), "prompt_field": "question", "eval_fraction": 0.25, **dataset},
           "grpo": {"max_prompt_length": 256}, "compute": {"device": "cpu"}}
    import yaml

    (tmp_path / "carl.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return tmp_path / "carl.yaml"


def _first_train_prompt(path: Path) -> str:
    from engine.config import load_config
    from engine.trainer.data import load_rows

    cfg, _ = load_config(path)
    return load_rows(cfg)[0][0]["prompt"]


def test_dry_run_shows_the_first_prompt_rendered_by_the_chat_template(tmp_path, chat_model):
    path = _project(tmp_path, chat_model, system_prompt=SYSTEM)
    rc, out, err = carl("train", "--dry-run", "--config", str(path), cwd=tmp_path)
    assert rc == 0, err
    plan = json.loads(out)
    q = _first_train_prompt(path)
    assert plan["templated"] is True
    assert plan["example_prompt"] == f"<bos><|system|>{SYSTEM}<|end|><|user|>{q}<|end|><|assistant|>"
    assert plan["example_prompt_tokens"] == len(encode(q, build_chat_tokenizer(), PromptFormat(system_prompt=SYSTEM)))
    assert not (tmp_path / "carl-home" / "runs").exists()


def test_dry_run_raw_with_chat_template_none_and_truncated_when_long(tmp_path, chat_model):
    path = _project(tmp_path, chat_model, system_prompt=SYSTEM, chat_template="none")
    rc, out, err = carl("train", "--dry-run", "--config", str(path), cwd=tmp_path)
    assert rc == 0, err
    plan = json.loads(out)
    q = _first_train_prompt(path)
    assert plan["templated"] is False and plan["example_prompt"] == f"{SYSTEM}\n\n{q}"
    assert plan["example_prompt_tokens"] == len(f"{SYSTEM}\n\n{q}")  # one token per character
    head = len(f"{SYSTEM}\n\n")
    rc, out, err = carl("train", "--dry-run", "--config", str(path), "--set", f"grpo.max_prompt_length={head + 12}",
                        cwd=tmp_path)
    plan = json.loads(out)
    assert plan["example_prompt"] == f"{SYSTEM}\n\n{q[-12:]}" and plan["example_prompt_tokens"] == head + 12
    assert plan["example_prompt_truncated_from"] == len(f"{SYSTEM}\n\n{q}")
    assert plan["prompt_lengths"]["trimmed"] >= 1 and "system prompt stay whole" in plan["prompt_warning"]
    rc, out, err = carl("train", "--dry-run", "--config", str(path), "--set", "grpo.max_prompt_length=12",
                        cwd=tmp_path)
    assert rc == 2 and out == ""
    error = json.loads(err.strip().splitlines()[-1])["error"]
    assert error["code"] == "carl.config" and "row 0" in error["message"]


def test_dry_run_shows_a_system_prompt_whole_under_a_short_limit(tmp_path, chat_model):
    path = _project(tmp_path, chat_model, system_prompt=SYSTEM)
    rc, out, err = carl("train", "--dry-run", "--config", str(path), "--set", "grpo.max_prompt_length=35",
                        cwd=tmp_path)
    assert rc == 0, err
    plan = json.loads(out)
    q = _first_train_prompt(path)
    assert plan["example_prompt"] == f"<bos><|system|>{SYSTEM}<|end|><|user|>{q[-8:]}<|end|><|assistant|>"
    assert plan["example_prompt_tokens"] == 35 and plan["prompt_lengths"]["trimmed"] == plan["prompt_lengths"]["checked"]


def test_dry_run_offline_hub_model_says_why_there_is_no_example(tmp_path):
    rc, out, err = carl("train", "--dry-run", "--set", "model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct",
                        cwd=tmp_path)
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["example_prompt"] is None and plan["example_prompt_error"].startswith("carl.network")


def test_the_gpu_presets_use_a_system_prompt_and_boxed_extraction():
    for name in ("lora-7b", "full-gpu"):
        cfg = preset(name)
        assert cfg.dataset.chat_template == "auto" and "\\boxed{}" in cfg.dataset.system_prompt
        assert cfg.task.rewards[0].kind == "numeric" and cfg.task.rewards[0].extract == "boxed"


# ------------------------------------------------------------------------------------------ training
RECORDED: list = []


def record_prompts(prompts, completions, **kwargs):
    RECORDED.extend(prompts)
    return [0.0] * len(completions)


def test_training_gets_chat_messages_and_fitted_prompt_ids(tmp_path, chat_model):
    """TRL renders the conversational rows, fitted to grpo.max_prompt_length with the template whole."""
    from engine.cascade import Cascade
    from engine.trainer import grpo
    from engine.trainer.data import load_rows

    data = write_jsonl(tmp_path / "data.jsonl", ROWS)
    cfg = validate_dict({
        "model": {"name_or_path": str(chat_model)},
        "dataset": {"source": str(data), "prompt_field": "question", "system_prompt": SYSTEM, "eval_fraction": 0.25},
        "task": {"rewards": [{"kind": "python", "function": "tests.test_prompts:record_prompts"}]},
        "grpo": {"max_steps": 1, "batch_size": 4, "num_generations": 2, "max_prompt_length": 35,
                 "max_completion_length": 3, "save_steps": 50},
        "cascade": {"mode": "off"}, "compute": {"device": "cpu"}, "tracking": {"trackio": False}})
    model, tok = grpo.load_model_and_tokenizer(cfg, "cpu")
    rows, _ = load_rows(cfg)
    RECORDED.clear()
    trainer, state = grpo.build_trainer(cfg, tmp_path / "run", model, tok, rows,
                                        Cascade.from_config(cfg, grpo.task_metric_name(cfg)))
    trainer.train()
    assert RECORDED and all(p[0] == {"role": "system", "content": SYSTEM} and p[1]["role"] == "user"
                            for p in RECORDED)
    fmt = PromptFormat(system_prompt=SYSTEM, max_prompt_length=35)
    assert all(len(encode(r["prompt"], tok, PromptFormat(system_prompt=SYSTEM))) > 35 for r in rows)
    fitted = [encode(r["prompt"], tok, fmt) for r in rows]
    assert state.prompt_ids and all(len(p) == 35 for p in state.prompt_ids)
    assert all(p in fitted for p in state.prompt_ids)  # exactly what engine.prompts gives eval and infer
    assert all(tok.decode(p).startswith(f"<bos><|system|>{SYSTEM}<|end|><|user|>") for p in state.prompt_ids)
    assert state.capture_hits + state.forward_hits >= 1


# ------------------------------------------------------------------------------------------ eval and infer
def test_eval_gate_renders_prompts_like_training(chat_model):
    from engine.trainer.evalgate import greedy_completions, load_for_eval

    model, tok = load_for_eval(chat_model, validate_dict({}))
    prompts = [r["question"] for r in ROWS[:3]]
    fmt = PromptFormat(system_prompt=SYSTEM, max_prompt_length=35)
    _, p_ids, _ = greedy_completions(model, tok, prompts, 2, fmt=fmt)
    assert p_ids == [encode(p, tok, fmt) for p in prompts] and all(len(x) == 35 for x in p_ids)
    _, raw_ids, _ = greedy_completions(model, tok, prompts, 2)
    assert raw_ids == [tok(text=p)["input_ids"] for p in prompts]


def test_evaluate_uses_the_configured_format(tmp_path, chat_model):
    from engine.trainer.evalgate import evaluate, load_for_eval

    model, tok = load_for_eval(chat_model, validate_dict({}))
    rows = [{"prompt": r["question"], "answer": r["answer"]} for r in ROWS[:2]]
    seen: list = []
    orig = tok.apply_chat_template

    def spy(conversation, *a, **kw):
        seen.append(conversation)
        return orig(conversation, *a, **kw)

    tok.apply_chat_template = spy
    evaluate(model, tok, rows, validate_dict({"dataset": {"system_prompt": SYSTEM},
                                              "grpo": {"max_completion_length": 2}}))
    assert any(c[0] == {"role": "system", "content": SYSTEM} for c in seen if isinstance(c, list))
    seen.clear()
    evaluate(model, tok, rows, validate_dict({"dataset": {"chat_template": "none"},
                                              "grpo": {"max_completion_length": 2}}))
    assert seen == []


def test_infer_renders_with_the_chat_template_and_reports_it(chat_model):
    from engine import infer

    lm = infer.load(infer.resolve(str(chat_model)), device="cpu")
    fmt = PromptFormat(system_prompt=SYSTEM)
    res = lm.generate("2+2?", infer.Sampling(max_new_tokens=2, greedy=True), fmt=fmt)
    assert res.prompt_tokens == len(encode("2+2?", lm.tokenizer, fmt)) and res.templated
    assert res.to_dict()["system_prompt"] == SYSTEM
    raw = lm.score("2+2?", "4", fmt=PromptFormat(chat_template="none"))
    assert raw.prompt_tokens == len("2+2?") and not raw.templated


def test_a_remote_job_ships_the_prompt_format_its_worker_renders_with():
    """The job runs `carl --batch train` on the shipped config, so the same rendering happens remotely."""
    import yaml

    from engine.remote.jobs import submit_job

    cfg = validate_dict({"dataset": {"system_prompt": SYSTEM, "chat_template": "none"},
                         "grpo": {"max_prompt_length": 48}})
    out = submit_job(cfg, "runpod", dry_run=True)
    shipped = validate_dict(yaml.safe_load(out["request"]["json"]["env"]["CARL_CONFIG_YAML"]))
    assert PromptFormat.from_config(shipped) == PromptFormat.from_config(cfg) == \
        PromptFormat(chat_template="none", system_prompt=SYSTEM, max_prompt_length=48)


@pytest.mark.slow
def test_a_chat_model_trains_evaluates_and_infers_with_its_template_end_to_end(tmp_path, chat_model):
    """`carl --batch train` (worker process) on the chat model, then `infer --run`: the run's final/ keeps the
    template, so the run's own config renders the prompt the same way at every stage."""
    path = _project(tmp_path, chat_model, system_prompt=SYSTEM)
    sets = ["grpo.max_steps=2", "grpo.batch_size=4", "grpo.num_generations=2", "grpo.max_completion_length=3",
            "grpo.save_steps=2", "tracking.trackio=false", "eval.n_samples=2"]
    rc, out, err = carl("train", "--config", str(path), *[a for s in sets for a in ("--set", s)], cwd=tmp_path)
    assert rc == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    done = lines[-1]
    assert done["type"] == "done" and done["status"] == "completed", done
    assert [x["phase"] for x in lines if x.get("name") == "eval"] == ["before", "after"]
    rc, out, err = carl("infer", "--run", done["run_id"], "--prompt", "2+2?", "--max-new-tokens", "2", "--greedy",
                        "--device", "cpu", cwd=tmp_path)
    assert rc == 0, err
    res = json.loads(out)
    assert res["templated"] and res["system_prompt"] == SYSTEM and res["settings_from"] == f"run {done['run_id']}"
