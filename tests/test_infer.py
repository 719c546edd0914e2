"""engine.infer on the built-in tiny model (real transformers weights, real from_pretrained): the per-token field
of generation equals the probe's on the same logits and an independent float64 reference; scoring the greedy
output reproduces generation; sampling, top-p, streaming, cancellation, the warm LRU, and model resolution
(paths, adapters, run ids → final/ or the latest checkpoint, exactly the layout a completed run leaves)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from engine import infer
from engine.errors import RunNotFound, ValidationError
from tests._tiny_fixture import SFT_STEPS, tiny_cache, tiny_env  # noqa: F401

PROMPT = "12+7="


# ── shared helpers (the CLI and panel tests import these) ──────────────────────────────────────────────

def tiny_path(cache: Path) -> Path:
    from engine.trainer.tiny import tiny_dir

    return tiny_dir(cache, int(SFT_STEPS))


def make_run(home_runs: Path, run_id: str, *, final: Path | None = None, checkpoints: dict[int, Path] | None = None,
             model: str = "builtin:tiny") -> Path:
    """A run directory as engine.runs + engine.trainer.worker leave it: meta.json, config.yaml, checkpoints/
    checkpoint-<step>/ (model or adapter files + tokenizer + trainer_state.json) and final/ once completed."""
    d = home_runs / run_id
    (d / "checkpoints").mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"run_id": run_id, "status": "completed" if final else "stopped",
                                             "backend": "local", "pid": None, "last_step": max(checkpoints or {0: 0})}))
    (d / "config.yaml").write_text(f"model:\n  name_or_path: {model}\n")
    for step, src in (checkpoints or {}).items():
        ck = d / "checkpoints" / f"checkpoint-{step}"
        shutil.copytree(src, ck)
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if final is not None:
        shutil.copytree(final, d / "final")
    return d


def save_random_lora(base: Path, out: Path, seed: int = 0) -> Path:
    """A LoRA adapter on the tiny model with random (non-zero) B matrices, so it changes the outputs; saved with
    the tokenizer, as trainer.save_model + tok.save_pretrained leave a LoRA run's final/."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", init_lora_weights=False,
                                            task_type="CAUSAL_LM"))
    peft.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    return out


@pytest.fixture
def tiny(tiny_env):  # noqa: F811
    infer.clear_cache()
    yield tiny_path(tiny_env)
    infer.clear_cache()


@pytest.fixture
def lm(tiny):
    return infer.load(infer.resolve(str(tiny)), device="cpu")


def ref_field(logits: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent float64 reference: Phi = 1 - H/log V, H = -Σ p log p, selected_prob = p[token]."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    return 1.0 - h / np.log(x.shape[1]), h, p[np.arange(len(ids)), ids]


# ── the field of generation ───────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("sampling", [infer.Sampling(max_new_tokens=8, greedy=True),
                                      infer.Sampling(max_new_tokens=8, temperature=1.5, seed=4)],
                         ids=["greedy", "sampled"])
def test_per_token_phi_equals_the_probe_on_the_generation_logits(lm, sampling):
    import torch

    from engine.probe import CoherenceProbe, carl_reward

    r = lm.generate(PROMPT, sampling, keep_logits=True)
    assert len(r.token_ids) >= 1 and r.logits.shape == (len(r.token_ids), r.vocab_size)
    assert len(r.tokens) == len(r.phi) == len(r.entropy) == len(r.selected_prob) == len(r.token_ids)
    snap = CoherenceProbe().measure(r.logits, torch.tensor(r.token_ids))
    np.testing.assert_allclose(r.phi, snap.field.phi[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.entropy, snap.field.entropy[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(r.selected_prob, snap.field.selected_prob[0], rtol=0, atol=1e-6)
    # and an independent float64 computation on the same logits
    phi, h, sel = ref_field(r.logits.numpy(), r.token_ids)
    np.testing.assert_allclose(r.phi, phi, atol=1e-5)
    np.testing.assert_allclose(r.entropy, h, atol=1e-5)
    np.testing.assert_allclose(r.selected_prob, sel, atol=1e-5)
    assert r.rewards == pytest.approx(carl_reward(r.phi, r.selected_prob))
    assert snap.rewards.carl == pytest.approx(r.rewards["carl"], abs=1e-6)
    # greedy picks the argmax of those very logits
    if sampling.is_greedy:
        assert r.token_ids == r.logits.argmax(dim=1).tolist()


def test_generation_logits_are_the_models_own_distribution(lm):
    """The KV-cached decoding loop sees the same logits as one full forward over prompt + completion."""
    import torch

    r = lm.generate(PROMPT, infer.Sampling(max_new_tokens=6, temperature=2.0, seed=1), keep_logits=True)
    ids = torch.tensor([lm.encode_prompt(PROMPT) + r.token_ids])
    with torch.no_grad():
        full = lm.model(input_ids=ids).logits[0].float()
    p = len(lm.encode_prompt(PROMPT))
    torch.testing.assert_close(r.logits, full[p - 1: p - 1 + len(r.token_ids)], atol=1e-4, rtol=1e-4)


def test_scoring_the_greedy_output_equals_generating_it(lm):
    g = lm.generate(PROMPT, infer.Sampling(max_new_tokens=10, greedy=True))
    s = lm.score(PROMPT, g.text, add_eos=g.finish_reason == "eos")
    assert s.mode == "score" and s.finish_reason == "scored"
    assert s.token_ids == g.token_ids and s.tokens == g.tokens and s.text == g.text
    np.testing.assert_allclose(s.phi, g.phi, atol=1e-5)
    np.testing.assert_allclose(s.entropy, g.entropy, atol=1e-5)
    np.testing.assert_allclose(s.selected_prob, g.selected_prob, atol=1e-5)
    for k in ("coherence", "cloud", "discontinuity", "carl"):
        assert s.rewards[k] == pytest.approx(g.rewards[k], abs=1e-5)


def test_score_a_text_the_model_did_not_write(lm):
    import torch

    s = lm.score(PROMPT, "19", keep_logits=True)
    assert s.tokens == ["1", "9"] and s.prompt_tokens == 5
    p = torch.softmax(s.logits.double(), dim=1)
    assert s.selected_prob == pytest.approx(p[[0, 1], s.token_ids].tolist(), abs=1e-6)
    assert all(0.0 <= v <= 1.0 for v in s.phi)
    empty = lm.score(PROMPT, "")
    assert empty.token_ids == [] and empty.rewards["coherence"] == 0.5


def test_seeded_sampling_is_reproducible_and_top_p_tiny_is_greedy(lm):
    s = infer.Sampling(max_new_tokens=8, temperature=3.0, seed=7)
    a, b = lm.generate(PROMPT, s), lm.generate(PROMPT, s)
    assert a.token_ids == b.token_ids and a.phi == b.phi
    draws = {tuple(lm.generate(PROMPT, infer.Sampling(max_new_tokens=8, temperature=3.0, seed=k)).token_ids)
             for k in range(6)}
    assert len(draws) > 1  # the seed matters
    greedy = lm.generate(PROMPT, infer.Sampling(max_new_tokens=8, greedy=True))
    nucleus = lm.generate(PROMPT, infer.Sampling(max_new_tokens=8, temperature=3.0, top_p=1e-6, seed=3))
    assert nucleus.token_ids == greedy.token_ids
    assert lm.generate(PROMPT, infer.Sampling(max_new_tokens=8, temperature=0)).token_ids == greedy.token_ids


def test_stream_yields_each_token_and_cancel_stops_it(lm):
    gen = lm.stream(PROMPT, infer.Sampling(max_new_tokens=20, temperature=3.0, seed=2))
    steps = []
    for step in gen:
        steps.append(step)
        assert gen.result is None  # still running: tokens arrive one at a time
        gen.cancel()
    assert len(steps) == 1 and steps[0].index == 0
    assert gen.result.finish_reason == "cancelled" and gen.result.token_ids == [steps[0].token_id]
    # cancelled before it starts: nothing generated
    ev = threading.Event()
    ev.set()
    r = lm.generate(PROMPT, infer.Sampling(max_new_tokens=5), cancel=ev)
    assert r.token_ids == [] and r.finish_reason == "cancelled"


def test_context_limit_and_settings_are_checked(lm):
    long_prompt = (PROMPT * 6)[:29]  # 29 of the tiny model's 32 positions
    r = lm.generate(long_prompt, infer.Sampling(max_new_tokens=50, temperature=3.0, seed=0))
    assert len(r.token_ids) <= 3 and r.finish_reason in ("eos", "context")
    with pytest.raises(ValidationError, match="context"):
        lm.generate(PROMPT * 7, infer.Sampling(max_new_tokens=5))
    for bad in (dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValidationError):
            infer.Sampling(**bad).check()


def test_models_stay_warm_in_an_lru(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CARL_INFER_CACHE", "1")
    ref = infer.resolve(str(tiny))
    a = infer.load(ref, device="cpu")
    assert infer.load(ref, device="cpu") is a  # kept warm
    other = tmp_path / "copy"
    shutil.copytree(tiny, other)
    b = infer.load(infer.resolve(str(other)), device="cpu")
    assert infer.cached() == [(str(other), None, str(other), "cpu", "auto")]
    assert infer.load(ref, device="cpu") is not a and b is not a  # evicted, loaded again


# ── naming models: paths, adapters, runs ──────────────────────────────────────────────────────────────

def test_missing_paths_and_unknown_runs_are_typed_errors(tmp_path):
    with pytest.raises(ValidationError, match="model path not found") as e:
        infer.resolve("/nonexistent/model")
    assert e.value.code == "carl.validation" and e.value.exit_code == 2
    with pytest.raises(RunNotFound) as e:
        infer.resolve(run="nope")
    assert e.value.code == "carl.run.not_found"
    with pytest.raises(ValidationError, match="not both"):
        infer.resolve("x", adapter="a", run="r")
    with pytest.raises(ValidationError, match="no model"):
        infer.resolve()
    with pytest.raises(ValidationError, match="adapter not found"):
        infer.resolve(str(tmp_path), adapter=str(tmp_path / "none"))


def test_a_hub_id_not_in_the_cache_fails_fast_offline():
    from engine.errors import NetworkError

    with pytest.raises(NetworkError, match="HF_HUB_OFFLINE"):  # conftest: HF_HUB_OFFLINE=1 (tests/test_models.py)
        infer.resolve("carl-test/definitely-not-cached")


def test_run_resolves_to_final_else_latest_checkpoint(tiny, _isolated_home):
    runs = _isolated_home / "runs"
    d = make_run(runs, "20250101-000000-aaaa", checkpoints={2: tiny, 4: tiny})
    ref = infer.resolve(run="20250101-000000-a")  # a prefix
    assert (ref.run_id, ref.checkpoint, ref.model) == ("20250101-000000-aaaa", "checkpoint-4",
                                                      str(d / "checkpoints" / "checkpoint-4"))
    shutil.copytree(tiny, d / "final")
    ref = infer.resolve(run="20250101-000000-aaaa")
    assert ref.checkpoint == "final" and ref.model == str(d / "final") and ref.label == "20250101-000000-aaaa/final"
    r = infer.load(ref, device="cpu").generate(PROMPT, infer.Sampling(max_new_tokens=6, greedy=True))
    base = infer.load(infer.resolve(str(tiny)), device="cpu").generate(PROMPT, infer.Sampling(max_new_tokens=6,
                                                                                             greedy=True))
    assert r.token_ids == base.token_ids and r.phi == pytest.approx(base.phi)
    empty = make_run(runs, "20250101-000000-bbbb")
    with pytest.raises(ValidationError, match="no model yet"):
        infer.resolve(run=empty.name)
    make_run(runs, "20250101-000000-bbbc")
    with pytest.raises(ValidationError, match="ambiguous"):
        infer.resolve(run="20250101-000000-bb")


def test_lora_run_loads_base_plus_adapter(tiny, tmp_path, _isolated_home):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = save_random_lora(tiny, tmp_path / "adapter")
    d = make_run(_isolated_home / "runs", "20250101-000000-lora", final=adapter)
    ref = infer.resolve(run="20250101-000000-lora")
    assert ref.adapter == str(d / "final") and ref.model == str(tiny) and ref.tokenizer == str(d / "final")
    r = infer.load(ref, device="cpu").generate(PROMPT, infer.Sampling(max_new_tokens=6, greedy=True),
                                               keep_logits=True)
    # the same adapter applied by hand gives the same logits; and it differs from the bare base
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny)), str(adapter)).eval()
    ids = torch.tensor([infer.load(ref).encode_prompt(PROMPT)])
    with torch.no_grad():
        first = m(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(r.logits[0], first, atol=1e-4, rtol=1e-4)
    base = infer.load(infer.resolve(str(tiny)), device="cpu").score(PROMPT, token_ids=r.token_ids)
    assert not np.allclose(base.phi, r.phi, atol=1e-4)
    # --model + --adapter names the same thing
    direct = infer.resolve(str(tiny), adapter=str(adapter))
    assert direct.adapter == str(adapter.resolve()) and direct.model == str(tiny)


def test_adapter_whose_base_moved_falls_back_to_the_runs_model(tiny, tmp_path, _isolated_home):
    adapter = save_random_lora(tiny, tmp_path / "adapter")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone" / "tiny")
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    make_run(_isolated_home / "runs", "20250101-000000-move", final=adapter, model="builtin:tiny")
    ref = infer.resolve(run="20250101-000000-move")
    assert ref.model == str(tiny)  # builtin:tiny from the run's config, served from the tiny cache


def test_parse_spec_forms(tiny, _isolated_home):
    make_run(_isolated_home / "runs", "20250101-000000-spec", final=tiny)
    assert infer.parse_spec("run:20250101-000000-spec").run_id == "20250101-000000-spec"
    assert infer.parse_spec("20250101-000000-s").checkpoint == "final"  # a bare run id prefix
    assert infer.parse_spec(str(tiny)).model == str(tiny)
    assert infer.parse_spec("builtin:tiny").model == str(tiny)
    with pytest.raises(ValidationError):
        infer.parse_spec("  ")
    with pytest.raises(RunNotFound):
        infer.parse_spec("run:zzz")


def test_result_dict_shape(lm):
    d = lm.generate(PROMPT, infer.Sampling(max_new_tokens=4, greedy=True)).to_dict()
    for k in ("text", "tokens", "token_ids", "phi", "entropy", "selected_prob", "rewards", "finish_reason",
              "n_tokens", "phi_mean", "vocab_size", "settings", "model", "run_id", "checkpoint"):
        assert k in d, k
    assert set(d["rewards"]) == {"coherence", "cloud", "discontinuity", "carl"}
    assert d["n_tokens"] == len(d["phi"]) and d["settings"]["greedy"] is True
    json.dumps(d)


def test_models_without_a_kv_cache_reread_the_sequence(lm, monkeypatch):
    s = infer.Sampling(max_new_tokens=8, temperature=2.0, seed=5)
    cached = lm.generate(PROMPT, s)
    forward = lm._forward

    def no_cache(input_ids, cache=None, last_only=False):
        logits, _ = forward(input_ids, None, last_only)
        return logits, None  # what a model that returns no cache looks like to the loop

    monkeypatch.setattr(lm, "_forward", no_cache)
    plain = lm.generate(PROMPT, s)
    assert plain.token_ids == cached.token_ids
    np.testing.assert_allclose(plain.phi, cached.phi, atol=1e-5)
