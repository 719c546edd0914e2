"""Real architectures at their real vocabulary sizes (engine.trainer.families): Qwen2, Qwen3, Llama 3, Gemma 3 and
Qwen3-MoE, random-init and tiny, with a chat template each, saved and loaded through ``from_pretrained``.

Each goes through a 2-step LoRA GRPO run (the worker, in process), the eval gate on its final adapter, infer
(generate and score) on the run, and the generation-capture field equal to the memory-bounded forward field on
left-padded prompts of unequal length. Per-family LoRA targets (attention only for MoE) and the quantization
refusals are checked too.
"""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from engine.trainer.families import ATTENTION, FAMILIES, build_tiny, lora_targets  # noqa: E402

NAMES = list(FAMILIES)


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "carl-families"
    return {name: build_tiny(name, root / name, hidden=16, layers=2) for name in NAMES}


@pytest.fixture
def ledger_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CARL_LEDGER_PASSPHRASE", "test")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(path)).eval(), AutoTokenizer.from_pretrained(str(path))


@pytest.mark.parametrize("name", NAMES)
def test_real_vocab_and_chat_template_round_trip(family_dir, name):
    model, tok = _load(family_dir[name])
    fam = FAMILIES[name]
    assert model.config.vocab_size == fam.vocab_size == len(tok)
    assert model.get_output_embeddings().weight.shape[0] == fam.vocab_size
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                                   tokenize=False, add_generation_prompt=True)
    assert "Be brief." in text and "2+2?" in text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # special tokens are single tokens; the rest round-trips character by character
    assert tok.convert_tokens_to_ids(fam.eos) == tok.eos_token_id
    gen = model.generation_config.eos_token_id  # as the real checkpoints ship it
    assert ([gen] if isinstance(gen, int) else gen) == [tok.convert_tokens_to_ids(t) for t in fam.gen_eos or [fam.eos]]


@pytest.mark.parametrize("name", NAMES)
def test_capture_equals_bounded_forward_on_left_padded_prompts(family_dir, name):
    from transformers import LogitsProcessorList

    from engine import memory
    from engine.rewards import GenerationCapture, field_from_forward

    model, tok = _load(family_dir[name])
    prompts = ["12+7=", "a much longer prompt of 40 characters!!", "x"]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)  # left padding
    assert (enc["attention_mask"][:, 0] == 0).any()
    cap = GenerationCapture()
    cap.active = True
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=6,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             logits_processor=LogitsProcessorList([cap]))
    width = enc["input_ids"].shape[1]
    comps = []
    for row in out[:, width:].tolist():
        c = []
        for t in row:
            c.append(t)
            if t == tok.eos_token_id:
                break
        comps.append(c)
    p_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    got = cap.field(comps)
    assert got is not None
    phi_c, sel_c, mask_c = got
    # a budget of 5 positions: rows and positions in several forwards, logits_to_keep per row
    budget = 5 * memory.bytes_per_position(FAMILIES[name].vocab_size) / 2**20
    phi_f, sel_f, mask_f = field_from_forward(model, p_ids, comps, tok.pad_token_id, budget_mb=budget)
    w = mask_f.shape[1]
    assert torch.equal(mask_c[:, :w], mask_f)
    assert torch.allclose(phi_c[:, :w][mask_f], phi_f[mask_f], atol=1e-4)
    assert torch.allclose(sel_c[:, :w][mask_f], sel_f[mask_f], atol=1e-4)


def test_lora_targets_per_family(family_dir):
    from peft import LoraConfig, get_peft_model

    for name in NAMES:
        model, _ = _load(family_dir[name])
        targets = lora_targets(model, "all-linear")
        assert lora_targets(model, "auto") == targets and lora_targets(model, ["q_proj"]) == ["q_proj"]
        peft = get_peft_model(model, LoraConfig(r=2, target_modules=targets, task_type="CAUSAL_LM"))
        wrapped = {n.rsplit(".", 1)[0] for n, _ in peft.named_modules() if n.endswith("lora_A")}
        leaves = {w.rsplit(".", 1)[-1] for w in wrapped}
        if name == "qwen3_moe":
            assert targets == list(ATTENTION) and leaves == set(ATTENTION)
            assert not any(".mlp." in w or "expert" in w or "gate" in w for w in wrapped)
        else:
            assert targets == "all-linear" and {"q_proj", "o_proj", "up_proj", "down_proj"} <= leaves
            assert "lm_head" not in leaves


def test_quantization_is_refused_where_it_cannot_load():
    from engine.config import validate_dict
    from engine.errors import ConfigError
    from engine.trainer.families import check_quantization
    from engine.trainer.plan import plan

    cfg = validate_dict({"model": {"quantization": "4bit"}, "lora": {"enabled": True}, "compute": {"device": "cpu"}})
    with pytest.raises(ConfigError) as ei:
        plan(cfg, None)
    assert ei.value.code == "carl.config" and ei.value.context["field"] == "model.quantization"
    assert "CUDA" in ei.value.message
    full = validate_dict({"model": {"quantization": "8bit"}, "compute": {"device": "cuda"}})
    with pytest.raises(ConfigError, match="lora.enabled"):
        check_quantization(full, "cuda")
    check_quantization(validate_dict({}), "cpu")  # none: nothing to check
    with pytest.raises(ConfigError):
        validate_dict({"model": {"quantization": "3bit"}})


def _write_dataset(path, n=12):
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n")


@pytest.mark.parametrize("name", NAMES)
def test_lora_train_eval_infer(family_dir, name, tmp_path, ledger_env):
    from engine import infer
    from engine.config import validate_dict
    from engine.runs import RunStore
    from engine.trainer.evalgate import evaluate, load_for_eval
    from engine.trainer.plan import plan
    from engine.trainer.worker import Worker

    data = tmp_path / "data.jsonl"
    _write_dataset(data)
    cfg = validate_dict({
        "model": {"name_or_path": str(family_dir[name]), "dtype": "float32"},
        "dataset": {"source": str(data), "eval_fraction": 0.25},
        "grpo": {"max_steps": 2, "batch_size": 4, "num_generations": 2, "max_completion_length": 3,
                 "save_steps": 10, "learning_rate": 1e-3},
        "lora": {"enabled": True, "r": 4, "alpha": 8},
        "cascade": {"mode": "off"}, "compute": {"device": "cpu", "logits_budget_mb": 16},
        "eval": {"n_samples": 2}, "tracking": {"trackio": False},
    })
    store = RunStore()
    run_id = store.create(cfg.to_yaml(), plan(cfg, None))
    d = store.run_dir(run_id)
    assert Worker(d).run() == "completed"
    frames = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]
    assert [f["step"] for f in frames] == [1, 2]
    assert all(0.0 <= f["phi"] <= 1.0 for f in frames)
    adapter = json.loads((d / "final" / "adapter_config.json").read_text())
    if name == "qwen3_moe":
        assert set(adapter["target_modules"]) == set(ATTENTION)
    # the eval gate on the saved adapter (base + LoRA through from_pretrained), memory-bounded
    model, tok = load_for_eval(d / "final", cfg)
    _, rows = __import__("engine.trainer.data", fromlist=["load_rows"]).load_rows(cfg)
    m = evaluate(model, tok, rows, cfg, n=2)
    assert m["n"] == 2 and math.isfinite(m["phi_mean"]) and 0.0 <= m["phi_mean"] <= 1.0
    # infer on the run: generate, then score what it generated
    infer.clear_cache()
    lm = infer.load(infer.resolve(run=run_id), device="cpu")
    assert lm.ref.adapter is not None
    g = lm.generate("3+3=", infer.Sampling(max_new_tokens=4, greedy=True))
    assert g.vocab_size == FAMILIES[name].vocab_size and len(g.phi) == len(g.token_ids) >= 1
    s = lm.score("3+3=", token_ids=g.token_ids, budget_mb=2 * 4 * FAMILIES[name].vocab_size * 20 / 2**20)
    assert s.token_ids == g.token_ids
    assert s.phi == pytest.approx(g.phi, abs=1e-4) and s.selected_prob == pytest.approx(g.selected_prob, abs=1e-4)
    infer.clear_cache()


# ------------------------------------------------------------------------------------------ one prompt, one stop
MATRIX = ["qwen2", "qwen3", "llama", "gemma3", "mistral"]
SYSTEM = "Answer with the number only."
END_OF_TURN = {"qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "llama": "<|eot_id|>", "gemma3": "<end_of_turn>",
               "mistral": "</s>"}


class _GenerateSpy:
    """Records what a stage hands ``model.generate``: the prompt ids (left pads dropped) and the stop ids."""

    def __init__(self, model):
        self.prompts: list[list[int]] = []
        self.eos: list = []
        self._orig = model.generate

        def generate(*args, **kwargs):
            ids, attn = kwargs["input_ids"], kwargs["attention_mask"]
            self.prompts += [[int(t) for t, a in zip(r, m) if a] for r, m in zip(ids.tolist(), attn.tolist())]
            self.eos.append(kwargs.get("eos_token_id"))
            return self._orig(*args, **kwargs)

        model.generate = generate


def _matrix_config(path, data):
    from engine.config import validate_dict

    return validate_dict({
        "model": {"name_or_path": str(path), "dtype": "float32"},
        "dataset": {"source": str(data), "eval_fraction": 0.25, "system_prompt": SYSTEM},
        "grpo": {"max_steps": 1, "batch_size": 4, "num_generations": 2, "max_completion_length": 3},
        "cascade": {"mode": "off"}, "compute": {"device": "cpu"}, "tracking": {"trackio": False}})


@pytest.mark.parametrize("name", MATRIX)
def test_every_stage_reads_the_same_prompt_ids_and_stops_on_the_same_ids(family_dir, name, tmp_path):
    """train's dry run, GRPO (TRL's own tokenization and stop ids), the SFT stage (TRL's SFTTrainer), the eval gate,
    infer and best-of: one rendering (system prompt, template, generation prompt) and one stop set per family."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from engine import infer
    from engine.bestof import sample_batch
    from engine.cascade import Cascade
    from engine.models import stop_ids
    from engine.prompts import PromptFormat, encode
    from engine.trainer import grpo
    from engine.trainer.data import load_rows, to_dataset
    from engine.trainer.evalgate import greedy_completions
    from engine.trainer.preview import preview
    from engine.trainer.sft import completion_rows

    data = tmp_path / "data.jsonl"
    _write_dataset(data, n=8)
    cfg = _matrix_config(family_dir[name], data)
    fmt = PromptFormat.from_config(cfg)
    rows, _ = load_rows(cfg)
    rows = rows[:2]
    model, tok = grpo.load_model_and_tokenizer(cfg, "cpu")  # the worker's load
    want = [encode(r["prompt"], tok, fmt) for r in rows]
    text0 = tok.decode(want[0])
    assert SYSTEM in text0 and rows[0]["prompt"] in text0
    stops = stop_ids(model, tok)
    eot = tok.convert_tokens_to_ids(END_OF_TURN[name])
    assert eot in stops and tok.eos_token_id in stops
    if name == "gemma3":  # <end_of_turn> is not the tokenizer's eos: the generation config (and template) say so
        assert tok.eos_token_id != eot

    # train --dry-run: the example prompt, exactly
    pv = preview(cfg)
    assert pv["templated"] and tok(pv["example_prompt"], add_special_tokens=False)["input_ids"] == want[0]
    assert pv["example_prompt_tokens"] == len(want[0])

    # GRPO: TRL tokenizes the dataset's prompts itself, and stops on its own union of eos ids
    trainer, _ = grpo.build_trainer(cfg, tmp_path / "run", model, tok, rows,
                                    Cascade.from_config(cfg, grpo.task_metric_name(cfg)))
    trl_ids = trainer._tokenize_prompts(list(to_dataset(rows, tok, fmt)["prompt"]))[0]
    assert [list(x) for x in trl_ids] == want
    assert sorted(trainer.eos_token_ids) == stops

    # the SFT stage: TRL's SFTTrainer on the same rows; the prompt part is the same ids, the answer ends its turn
    sft = SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path / "sft"), report_to="none", use_cpu=True,
                                                 max_length=None, completion_only_loss=True, dataset_num_proc=None),
                     train_dataset=datasets.Dataset.from_list(completion_rows(rows, tok, fmt)), processing_class=tok)
    for r, w in zip(sft.train_dataset, want):
        first = next(i for i, x in enumerate(r["labels"]) if x != -100)  # the loss starts at the completion
        assert r["input_ids"][:first] == w
        assert any(t in stops for t in r["input_ids"][first:])  # SFT teaches the end training stops on

    # the eval gate and best-of hand generate the same ids and the same stops
    model.eval()
    spy = _GenerateSpy(model)
    greedy_completions(model, tok, [r["prompt"] for r in rows], 2, fmt=fmt)
    sample_batch(model, tok, [r["prompt"] for r in rows], 2, 2, seed=0, fmt=fmt)
    assert spy.prompts[:2] == want and spy.prompts[2:] == want
    assert all(sorted(e) == stops for e in spy.eos)

    # infer (and the try panel, which loads through it): the one loader, the same ids and stops
    infer.clear_cache()
    lm = infer.load(infer.resolve(str(family_dir[name])), device="cpu")
    assert [lm.encode_prompt(r["prompt"], fmt) for r in rows] == want and sorted(lm.eos_ids) == stops
    infer.clear_cache()


def _ends_turn_at(model, eot: int, k: int) -> None:
    """A model whose k-th generated token is ``eot`` (a hook on the output layer; greedy decoding, KV cache)."""
    calls = {"n": 0}

    def start(module, args, kwargs):  # a new prompt (prefill: more than one input position) restarts the count
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            calls["n"] = 0

    def hook(module, args, out):  # one call per generated token (the prefill makes the first)
        calls["n"] += 1
        if calls["n"] == k:
            out = out.clone()
            out[..., -1, :] = -1e4
            out[..., -1, eot] = 1e4
        return out

    model.register_forward_pre_hook(start, with_kwargs=True)
    model.get_output_embeddings().register_forward_hook(hook)


def test_a_gemma_eval_stops_at_end_of_turn(family_dir, tmp_path):
    """Gemma 3: the tokenizer's eos is <eos>; the turn ends at <end_of_turn> (generation config). The eval gate,
    best-of and infer stop there instead of decoding past the end of the turn."""
    from engine import infer
    from engine.bestof import sample_batch
    from engine.config import validate_dict
    from engine.prompts import PromptFormat
    from engine.trainer.evalgate import evaluate, load_for_eval

    path = family_dir["gemma3"]
    cfg = validate_dict({"model": {"name_or_path": str(path)}, "grpo": {"max_completion_length": 8},
                         "compute": {"device": "cpu"}})
    model, tok = load_for_eval(path, cfg)
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert tok.eos_token_id != eot
    _ends_turn_at(model, eot, 3)
    m = evaluate(model, tok, [{"prompt": "2+2=", "answer": "4"}, {"prompt": "1+1=", "answer": "2"}], cfg)
    assert m["completion_length"] == 3  # two tokens, then <end_of_turn>; 8 without the stop
    rows = sample_batch(model, tok, ["2+2="], 2, 8, seed=0, fmt=PromptFormat())
    assert [len(r["phi"]) for r in rows[0]] == [3, 3]
    lm = infer.LoadedModel(infer.ModelRef(str(path)), model, tok, "cpu")
    r = lm.generate("2+2=", infer.Sampling(max_new_tokens=8, greedy=True))
    assert r.finish_reason == "eos" and r.token_ids[-1] == eot and len(r.token_ids) == 3
