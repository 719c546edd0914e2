"""Best-of-N (engine.bestof, engine.infer.best_of, `infer --best-of N --select …`) on the tiny model."""

from __future__ import annotations

import json
import math

import pytest

from carl_tui.batch import main
from engine import infer
from engine.bestof import Candidate, choose, score_candidates
from tests._tiny_fixture import tiny_cache, tiny_env  # noqa: F401
from tests.test_infer import PROMPT, tiny_path


def test_selections_on_known_candidates():
    c = [Candidate(0, "12", [0.9, 0.9], [0.5, 0.5]), Candidate(1, " 19 ", [0.2, 0.4], [0.9, 0.9]),
         Candidate(2, "19", [0.3, 0.3], [0.6, 0.6]), Candidate(3, "7", [0.95, 0.1], [0.1, 0.2])]
    score_candidates(c)
    assert c[1].answer == c[2].answer == "19" and c[1].scores["votes"] == 2.0
    assert choose(c, "phi") == 0  # mean Phi 0.9
    assert choose(c, "logprob") == 1  # mean log 0.9
    assert choose(c, "majority") == 1  # "19" twice: its first candidate
    assert c[0].scores["logprob"] == pytest.approx(math.log(0.5))
    from engine.probe import carl_reward

    assert c[3].scores["carl"] == pytest.approx(carl_reward([0.95, 0.1], [0.1, 0.2])["carl"])
    assert choose(c, "carl") == max(range(4), key=lambda i: c[i].scores["carl"])
    picks = {choose(c, "random", seed=s) for s in range(40)}
    assert picks == {0, 1, 2, 3} and choose(c, "random", seed=5) == choose(c, "random", seed=5)
    from engine.errors import ValidationError

    with pytest.raises(ValidationError):
        choose(c, "vibes")


@pytest.fixture
def tiny(tiny_env):  # noqa: F811
    infer.clear_cache()
    yield tiny_path(tiny_env)
    infer.clear_cache()


def test_best_of_through_the_cli(tiny, capsys):
    rc = main(["infer", "--model", str(tiny), "--prompt", PROMPT, "--best-of", "4", "--select", "phi",
               "--seed", "3", "--max-new-tokens", "5"])
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0 and len(out) == 1
    d = out[0]
    assert d["best_of"] == 4 and d["select"] == "phi" and len(d["candidates"]) == 4
    assert [c["seed"] for c in d["candidates"]] == [3, 4, 5, 6]
    scores = [c["scores"]["phi"] for c in d["candidates"]]
    assert d["chosen"] == scores.index(max(scores))
    chosen = d["candidates"][d["chosen"]]
    assert d["result"]["text"] == chosen["text"] and d["result"]["settings"]["seed"] == chosen["seed"]
    assert chosen["scores"]["phi"] == pytest.approx(d["result"]["phi_mean"])
    # each candidate is exactly the single generation with its seed
    lm = infer.load(infer.resolve(str(tiny)), device="cpu")
    one = lm.generate(PROMPT, infer.Sampling(max_new_tokens=5, seed=4))
    assert d["candidates"][1]["text"] == one.text
    # greedy best-of-N is refused with a typed error
    rc = main(["infer", "--model", str(tiny), "--prompt", PROMPT, "--best-of", "4", "--greedy"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and json.loads(err)["error"]["code"].startswith("carl.")


def test_stream_and_best_of_carry_self_certainty_as_published(tiny):
    """Each generated token's self_certainty is logsumexp(z) - mean(z) - log V of that step's raw logits, and the
    best-of candidate's score is its token mean; --select self_certainty picks the highest."""
    import torch

    lm = infer.load(infer.resolve(str(tiny)), device="cpu")
    r = lm.generate(PROMPT, infer.Sampling(max_new_tokens=5, seed=2), keep_logits=True)
    z = r.logits.double()
    want = (torch.logsumexp(z, -1) - z.mean(-1) - math.log(z.shape[-1])).tolist()
    assert r.self_certainty == pytest.approx(want, abs=1e-5)
    assert [s.self_certainty for s in r.steps] == r.self_certainty
    assert r.to_dict()["scores"]["self_certainty"] == pytest.approx(sum(want) / len(want), abs=1e-5)
    out = infer.best_of(lm, PROMPT, 3, "self_certainty", infer.Sampling(max_new_tokens=5, seed=2))
    sc = [c["scores"]["self_certainty"] for c in out["candidates"]]
    assert out["candidates"][0]["scores"]["self_certainty"] == pytest.approx(sum(want) / len(want), abs=1e-5)
    assert out["chosen"] == sc.index(max(sc))


def test_eval_best_of_borda_is_the_engine_selection(tiny, capsys, tmp_path, monkeypatch):
    """`eval --best-of N --select borda` reports the task metric of exactly the completions engine.bestof picks
    (same seed, same sampling), with the Borda power it used."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.bestof import best_of_texts
    from engine.trainer.tiny import rows, split_pairs

    monkeypatch.chdir(tmp_path)  # no ./carl.yaml: the demo's defaults
    rc = main(["eval", "--adapter", str(tiny), "--n", "6", "--threshold", "0", "--best-of", "4", "--select", "borda",
               "--borda-p", "1"])
    out = json.loads(capsys.readouterr().out)
    assert rc in (0, 1)
    bo = out["metrics"]["best_of"]
    assert bo["n"] == 4 and bo["select"] == "borda" and bo["borda_p"] == 1.0
    held = rows(split_pairs()[1])[:6]
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    tok = AutoTokenizer.from_pretrained(tiny)
    tok.padding_side = "left"
    texts = best_of_texts(model, tok, [r["prompt"] for r in held], 4, "borda", 8, seed=0, p=1.0)
    want = sum(t.strip() == r["answer"] for t, r in zip(texts, held)) / len(held)
    assert bo["task_metric"] == pytest.approx(want)


def test_best_of_sampling_keeps_step_logits_within_the_budget(tiny):
    """sample_batch never holds all P·N·T·V step logits at once: with a budget that fits one prompt's N×T
    positions, each prompt is its own generate call; every prompt still gets its N samples with their fields."""
    from engine.bestof import sample_batch
    from engine.memory import bytes_per_position, vocab_size
    from engine.models import LoadOptions, load_model, resolve_name

    model, tok = load_model(resolve_name(str(tiny)), LoadOptions(device="cpu"))
    calls = []
    real = model.generate

    def counted(*a, **kw):
        calls.append(kw["input_ids"].shape[0])
        return real(*a, **kw)

    model.generate = counted
    n, t = 3, 6
    one_prompt_mb = n * t * bytes_per_position(vocab_size(model)) / 2**20
    rows = sample_batch(model, tok, ["12+7=", "30+41=", "5+5="], n, t, seed=0, budget_mb=one_prompt_mb * 1.5)
    assert calls == [1, 1, 1]
    assert [len(r) for r in rows] == [n, n, n]
    assert all(len(s["phi"]) == len(s["self_certainty"]) <= t for r in rows for s in r)
    calls.clear()
    sample_batch(model, tok, ["12+7=", "30+41=", "5+5="], n, t, seed=0)  # the CPU default fits all three
    assert calls == [3]
