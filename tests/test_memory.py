"""Bounded memory for per-token fields (engine.memory): chunk plans, chunked forwards equal to one unbounded
forward, logits never larger than the budget, infer scoring in chunks, and a real out-of-memory as
carl.resource.oom."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine import memory  # noqa: E402
from engine.errors import ResourceOOM  # noqa: E402
from engine.rewards import field_from_forward  # noqa: E402


def _model(vocab: int = 40, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model


def _budget_for(positions: int, vocab: int) -> float:
    """A budget (MB) that holds exactly ``positions`` positions of float32 logits."""
    return positions * memory.bytes_per_position(vocab, 4) / 2**20


def test_plan_groups_rows_and_splits_long_ones():
    plan = memory.plan_chunks([3, 3, 3, 10, 2, 1, 1], cap=6)
    assert plan == [([0, 1], 0, 3), ([2], 0, 3), ([3], 0, 6), ([3], 6, 10), ([4, 5, 6], 0, 2)]
    covered = {}
    for rows, lo, hi in plan:
        assert len(rows) * (hi - lo) <= 6
        for r in rows:
            covered.setdefault(r, []).append((lo, hi))
    assert sorted(covered) == list(range(7))
    assert memory.positions_per_chunk(_budget_for(7, 1000), 1000) == 7
    assert memory.generation_batch(_budget_for(7, 1000), 1000) == 7
    assert memory.generation_batch(10_000, 1000) == 64  # capped by the caller's batch limit


def test_default_budget_per_device_and_config_field():
    from engine.config import Config, validate_dict
    from engine.errors import ConfigError

    assert memory.budget_mb(None, "cpu") == memory.CPU_DEFAULT_MB
    assert memory.budget_from(Config(), "cpu") == memory.CPU_DEFAULT_MB
    cfg = validate_dict({"compute": {"logits_budget_mb": 64}})
    assert memory.budget_from(cfg, "cpu") == 64
    with pytest.raises(ConfigError) as ei:
        validate_dict({"compute": {"logits_budget_mb": 1}})
    assert ei.value.context["errors"][0]["field"] == "compute.logits_budget_mb"


@pytest.mark.parametrize("cap", [1, 5, 12, 10_000])
def test_chunked_field_equals_one_forward_and_logits_stay_in_budget(cap):
    vocab = 40
    model = _model(vocab)
    prompts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12], [13], [14, 15, 16, 17]]
    comps = [[20, 21, 22], [23, 24, 25, 26, 27, 28, 29], [], [30], [31, 32, 33, 34, 35, 36, 37, 38, 39]]
    seen: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.shape[0] * o.shape[1]))
    phi, sel, mask, ent = field_from_forward(model, prompts, comps, 0, budget_mb=_budget_for(cap, vocab),
                                             entropy=True)
    hook.remove()
    assert max(seen) <= cap  # never more positions of logits than the budget holds
    if cap < 9:
        assert len(seen) > 1
    assert mask.sum(1).tolist() == [len(c) for c in comps]
    for i, (p, c) in enumerate(zip(prompts, comps)):  # one unbounded forward per row, full logits
        if not c:
            assert not mask[i].any()
            continue
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1: len(p) - 1 + len(c)].double()
        lp = torch.log_softmax(logits, -1)
        h = -(lp.exp() * lp).sum(-1)
        want_phi = 1 - h / np.log(vocab)
        want_sel = lp.exp()[torch.arange(len(c)), torch.tensor(c)]
        assert torch.allclose(phi[i, : len(c)].double(), want_phi, atol=2e-5)
        assert torch.allclose(ent[i, : len(c)].double(), h, atol=5e-5)
        assert torch.allclose(sel[i, : len(c)].double(), want_sel, atol=2e-5)


def test_empty_batches_and_empty_completions():
    model = _model()
    phi, sel, mask = field_from_forward(model, [], [], 0)
    assert phi.shape == sel.shape == mask.shape == (0, 1)
    phi, sel, mask = field_from_forward(model, [[3, 4], [5]], [[], []], 0)
    assert phi.shape == (2, 1) and not mask.any() and float(phi.abs().sum()) == 0.0


def test_model_without_logits_to_keep_is_chunked_by_rows():
    vocab = 40
    inner = _model(vocab)

    class NoKeep(torch.nn.Module):  # a remote-code style model whose forward knows no logits_to_keep
        def __init__(self, m):
            super().__init__()
            self.m = m

        def get_output_embeddings(self):
            return self.m.lm_head

        def forward(self, input_ids, attention_mask=None):
            return self.m(input_ids=input_ids, attention_mask=attention_mask)

    wrapped = NoKeep(inner).eval()
    prompts, comps = [[3, 4], [5, 6, 7], [8]], [[9, 10, 11], [12], [13, 14]]
    a = field_from_forward(wrapped, prompts, comps, 0, budget_mb=_budget_for(4, vocab))
    b = field_from_forward(inner, prompts, comps, 0, budget_mb=_budget_for(10_000, vocab))
    for x, y in zip(a, b):
        assert torch.allclose(x.float(), y.float(), atol=1e-5)


def test_a_real_out_of_memory_is_carl_resource_oom():
    with pytest.raises(ResourceOOM) as ei:
        with memory.oom_guard("the per-token field forward", 512, rows=3):
            torch.empty(2**45, dtype=torch.float32)  # 128 TiB: the allocator refuses it outright
    err = ei.value.to_dict()["error"]
    assert err["code"] == "carl.resource.oom" and ei.value.exit_code == 1
    assert "compute.logits_budget_mb=256" in err["hint"] and err["context"]["logits_budget_mb"] == 512
    with pytest.raises(ValueError):  # anything else passes through untouched
        with memory.oom_guard("x", 512):
            raise ValueError("not memory")


def test_infer_score_in_chunks_equals_one_forward(tmp_path):
    from engine import infer
    from engine.trainer.tiny import build_tokenizer

    tok = build_tokenizer()
    model = _model(len(tok))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    infer.clear_cache()
    lm = infer.load(infer.resolve(str(tmp_path / "m")), device="cpu")
    text = "12+34=46+1=47+2=49"
    whole = lm.score("7+8=", text, keep_logits=True, budget_mb=10_000)
    for cap in (1, 3, 7):
        part = lm.score("7+8=", text, budget_mb=_budget_for(cap, len(tok)))
        assert part.token_ids == whole.token_ids and part.logits is None
        np.testing.assert_allclose(part.phi, whole.phi, atol=1e-5)
        np.testing.assert_allclose(part.entropy, whole.entropy, atol=1e-5)
        np.testing.assert_allclose(part.selected_prob, whole.selected_prob, atol=1e-5)
    p = len(lm.encode_prompt("7+8="))
    with torch.no_grad():
        full = model(input_ids=torch.tensor([lm.encode_prompt("7+8=") + whole.token_ids])).logits[0].float()
    torch.testing.assert_close(whole.logits, full[p - 1: p - 1 + len(whole.token_ids)], atol=1e-4, rtol=1e-4)
    infer.clear_cache()


def test_infer_cli_logits_budget_flag(tmp_path, capsys):
    import json

    from carl_tui.batch import main as batch_main
    from engine import infer
    from engine.trainer.tiny import build_tokenizer

    tok = build_tokenizer()
    _model(len(tok)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    infer.clear_cache()
    outs = []
    for extra in ([], ["--logits-budget-mb", "0.0001"]):  # 0.0001 MB holds one position: one chunk per token
        rc = batch_main(["infer", "--model", str(tmp_path / "m"), "--prompt", "7+8=", "--score", "15+1=16", *extra])
        assert rc == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["token_ids"] == outs[1]["token_ids"]
    np.testing.assert_allclose(outs[0]["phi"], outs[1]["phi"], atol=1e-5)
    rc = batch_main(["infer", "--model", str(tmp_path / "m"), "--prompt", "x", "--score", "y",
                     "--logits-budget-mb", "0"])
    assert rc == 2 and json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]["code"] == "carl.validation"
    infer.clear_cache()
