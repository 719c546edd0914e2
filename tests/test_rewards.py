"""CARL reward on the policy's own distributions: against the probe's numpy path, conditioned on the prompt,
and the generation-logit capture equal to the no-grad forward. Plus the built-in task rewards."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine import probe  # noqa: E402
from engine.rewards import GenerationCapture, carl_from_field, field_from_forward, phi_and_selected  # noqa: E402
from engine.trainer import task_rewards  # noqa: E402


def _probe_row(logits_row: np.ndarray, tokens_row: np.ndarray, weights=None) -> dict[str, float]:
    """The probe's numpy path on one sequence."""
    phi, _ = probe.phi_from_logits(logits_row, backend="numpy")
    x = logits_row.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    sel = p[np.arange(len(tokens_row)), tokens_row]
    return probe.carl_reward(phi, sel, weights)


@pytest.mark.parametrize("weights", [None, {"coherence": 0.2, "cloud": 0.5, "discontinuity": 0.3}])
def test_carl_reward_matches_probe_numpy_on_same_logits(weights):
    rng = np.random.default_rng(0)
    b, t, v = 5, 11, 37
    logits = rng.normal(size=(b, t, v)).astype(np.float32) * rng.uniform(0.5, 6, size=(b, t, 1)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, t))
    lengths = [11, 7, 1, 4, 9]
    mask = torch.tensor([[i < n for i in range(t)] for n in lengths])
    phi, sel = phi_and_selected(torch.from_numpy(logits), torch.from_numpy(tokens))
    got = carl_from_field(phi, sel, mask, weights)
    for row, n in enumerate(lengths):
        want = _probe_row(logits[row, :n], tokens[row, :n], weights)
        for k in ("coherence", "cloud", "discontinuity", "carl"):
            assert got[k][row].item() == pytest.approx(want[k], abs=2e-5), (row, k)
        phi_np, _ = probe.phi_from_logits(logits[row, :n], backend="numpy")
        assert got["phi_mean"][row].item() == pytest.approx(float(np.mean(phi_np)), abs=1e-5)
        assert got["crystallizations"][row].item() == len(probe.crystallizations(phi_np))


def _tiny_random_model(vocab: int = 16):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # peaked distributions, so the field varies visibly with the context
        model.lm_head.weight.mul_(40.0)
    return model


def test_field_from_forward_is_conditioned_on_the_prompt():
    model = _tiny_random_model()
    prompts = [[3, 4, 5, 6], [7, 8]]
    comps = [[9, 10, 11], [12, 13, 14, 15, 3]]
    phi, sel, mask = field_from_forward(model, prompts, comps, pad_id=0)
    assert phi.shape == (2, 5) and mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    for i, (p, c) in enumerate(zip(prompts, comps)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0]
        rows = logits[len(p) - 1: len(p) - 1 + len(c)]
        want_phi, want_sel = phi_and_selected(rows, torch.tensor(c))
        assert torch.allclose(phi[i, : len(c)], want_phi, atol=1e-5)
        assert torch.allclose(sel[i, : len(c)], want_sel, atol=1e-5)
    # without its prompt the same completion gets a different field: conditioning matters
    with torch.no_grad():
        bare = model(input_ids=torch.tensor([comps[0]])).logits[0]
    bare_phi, _ = phi_and_selected(bare[:-1], torch.tensor(comps[0][1:]))
    assert (phi[0, 1:3] - bare_phi).abs().max() > 1e-3


def test_generation_capture_equals_forward_field():
    from transformers import LogitsProcessorList

    model = _tiny_random_model()
    torch.manual_seed(1)
    prompts = torch.tensor([[3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14]])
    cap = GenerationCapture()
    cap.active = True
    with torch.no_grad():
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=6, pad_token_id=0,
                             eos_token_id=1, logits_processor=LogitsProcessorList([cap]))
    comp = []
    for row in out[:, 3:].tolist():
        c = []
        for tkn in row:
            c.append(tkn)
            if tkn == 1:
                break
        comp.append(c)
    got = cap.field(comp)
    assert got is not None
    phi_c, sel_c, mask_c = got
    phi_f, sel_f, mask_f = field_from_forward(model, prompts.tolist(), comp, pad_id=0)
    width = mask_f.shape[1]
    assert torch.equal(mask_c[:, :width], mask_f)
    assert torch.allclose(phi_c[:, :width][mask_f], phi_f[mask_f], atol=1e-4)
    assert torch.allclose(sel_c[:, :width][mask_f], sel_f[mask_f], atol=1e-4)
    assert cap.field(comp[:2]) is None  # a batch that does not match the capture is refused


def test_task_rewards_builtins(tmp_path, monkeypatch):
    c = ["42", " 42\n", "41", "the answer is 1,000.5", "", "x"]
    a = ["42", "42", "42", "1000.5", "3", "x"]
    assert task_rewards.exact(None, c, answer=a) == [1, 1, 0, 0, 0, 1]
    assert task_rewards.make_numeric(0.01)(None, c, answer=a) == [1, 1, 0, 1, 0, 0]
    assert task_rewards.make_numeric(1.0)(None, ["41.5"], answer=["42"]) == [1]
    assert task_rewards.make_regex(r"^\s*\d+\s*$")(None, c) == [1, 1, 1, 0, 0, 0]
    calls = ['{"name": "search", "arguments": {"q": "x"}}', '<tool_call>{"name": "f", "arguments": {}}</tool_call>',
             '```json\n{"name": "f"}\n```', '{"name": 3}', "not json", '{"arguments": {}}']
    assert task_rewards.tool_json(None, calls) == [1, 1, 1, 0, 0, 0]
    concise = task_rewards.make_concise(4)
    assert concise(None, ["a"] * 3, completion_ids=[[1, 2], [1] * 4, [1] * 8]) == [1.0, 1.0, 0.5]
    (tmp_path / "myrewards.py").write_text("def score(prompts, completions, **kw):\n"
                                           "    return [float(len(c)) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from engine.config import TaskSection

    built = task_rewards.build_all(TaskSection(rewards=[{"kind": "python", "function": "myrewards:score"},
                                                        {"kind": "exact"}, {"kind": "exact", "weight": 0.5}]))
    assert [(n, w) for n, w, _ in built] == [("score", 1.0), ("exact", 1.0), ("exact_2", 0.5)]
    assert built[0][2](None, ["ab", "c"]) == [2.0, 1.0]
    sys.modules.pop("myrewards", None)


def test_python_reward_that_does_not_exist_is_a_config_error():
    from engine.errors import ConfigError

    with pytest.raises(ConfigError) as ei:
        task_rewards.load_function("no_such_module_xyz:f")
    assert ei.value.code == "carl.config"
    with pytest.raises(ConfigError):
        task_rewards.make_regex("(unclosed")


def test_generation_capture_never_leaves_the_device_while_generating():
    """Each decoding step is one kernel pass and no host sync: on the meta device (no data) any .cpu(), .item()
    or bool() of a tensor raises, so __call__ passing three steps proves it copies nothing to the host."""
    import torch

    from engine.rewards import GenerationCapture

    cap = GenerationCapture()
    cap.active = True
    scores = torch.empty(4, 50, device="meta")
    ids = torch.zeros(4, 3, dtype=torch.long, device="meta")
    for _ in range(3):
        assert cap(ids, scores) is scores
    assert len(cap.phi) == 3 and len(cap.sel) == 2
    assert all(t.device.type == "meta" for t in cap.phi + cap.sel)
    with pytest.raises(NotImplementedError):
        torch.empty(2, device="meta").cpu()  # the premise: a host copy of a meta tensor fails
