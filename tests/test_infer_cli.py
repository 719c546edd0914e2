"""`carl --batch infer`: JSON shapes (one object, JSON lines for many prompts, token lines with --stream), the run
path (`--run RUN` without `--model` → the run's final model), and typed errors with their exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from carl_tui.batch import main as batch_main
from engine import infer
from tests._tiny_fixture import tiny_cache, tiny_env  # noqa: F401
from tests.test_infer import PROMPT, make_run, save_random_lora, tiny_path

FIELD = ("text", "tokens", "token_ids", "phi", "entropy", "selected_prob", "rewards")


@pytest.fixture
def tiny(tiny_env):  # noqa: F811
    infer.clear_cache()
    yield tiny_path(tiny_env)
    infer.clear_cache()


def carl(capsys, *argv: str) -> tuple[int, list[dict], list[str]]:
    rc = batch_main(["infer", *argv])
    cap = capsys.readouterr()
    return rc, [json.loads(x) for x in cap.out.splitlines()], cap.err.splitlines()


def assert_field(d: dict) -> None:
    n = len(d["token_ids"])
    assert n >= 1 and len(d["tokens"]) == len(d["phi"]) == len(d["entropy"]) == len(d["selected_prob"]) == n
    assert all(0.0 <= v <= 1.0 for v in d["phi"] + d["selected_prob"])
    assert set(d["rewards"]) == {"coherence", "cloud", "discontinuity", "carl"}
    assert d["rewards"]["carl"] == pytest.approx(0.5 * d["rewards"]["coherence"] + 0.3 * d["rewards"]["cloud"]
                                                 + 0.2 * d["rewards"]["discontinuity"])


def test_run_without_model_returns_the_completion_and_its_field(tiny, _isolated_home):
    """The done-when: `carl --batch infer --run RUN --prompt "12+7="` through the real CLI process."""
    make_run(_isolated_home / "runs", "20250101-000000-done", final=tiny, checkpoints={2: tiny})
    p = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", "infer", "--run", "20250101-000000-d",
                        "--prompt", PROMPT, "--greedy"], capture_output=True, text=True, timeout=300,
                       env={**os.environ})
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert_field(d)
    assert (d["run_id"], d["checkpoint"], d["mode"], d["prompt"]) == ("20250101-000000-done", "final", "generate",
                                                                      PROMPT)
    # the same completion and field as the engine gives for the model itself
    e = infer.load(infer.resolve(str(tiny)), device="cpu").generate(PROMPT, infer.Sampling(greedy=True))
    assert d["token_ids"] == e.token_ids and d["text"] == e.text
    assert d["phi"] == pytest.approx(e.phi, abs=1e-6)
    assert p.stdout.count("\n") == 1  # one JSON object
    assert "loading" in p.stderr  # progress goes to stderr


def test_one_prompt_generate_and_score(tiny, capsys):
    rc, out, _ = carl(capsys, "--model", str(tiny), "--prompt", PROMPT, "--greedy", "--max-new-tokens", "6")
    assert rc == 0 and len(out) == 1
    g = out[0]
    assert_field(g)
    assert "type" not in g and g["settings"]["greedy"] is True and g["finish_reason"] in ("eos", "length")
    rc, out, _ = carl(capsys, "--model", str(tiny), "--prompt", PROMPT, "--score", g["text"], "--add-eos")
    s = out[0]
    assert rc == 0 and s["mode"] == "score" and s["finish_reason"] == "scored"
    if g["finish_reason"] == "eos":
        assert s["token_ids"] == g["token_ids"] and s["phi"] == pytest.approx(g["phi"], abs=1e-5)


def test_stream_prints_token_lines_then_the_result(tiny, capsys):
    rc, out, _ = carl(capsys, "--model", str(tiny), "--prompt", PROMPT, "--stream", "--seed", "3",
                      "--temperature", "2", "--max-new-tokens", "5")
    assert rc == 0
    tokens, result = out[:-1], out[-1]
    assert [t["type"] for t in tokens] == ["token"] * len(tokens) and result["type"] == "result"
    assert [t["index"] for t in tokens] == list(range(len(result["token_ids"])))
    assert [t["token_id"] for t in tokens] == result["token_ids"]
    assert [t["phi"] for t in tokens] == result["phi"]
    assert result["settings"] == {"max_new_tokens": 5, "temperature": 2.0, "top_p": 1.0, "greedy": False, "seed": 3}
    # seeded: the same draw again
    rc, again, _ = carl(capsys, "--model", str(tiny), "--prompt", PROMPT, "--seed", "3", "--temperature", "2",
                        "--max-new-tokens", "5")
    assert again[0]["token_ids"] == result["token_ids"]


def test_many_prompts_as_json_lines(tiny, tmp_path, capsys):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "12+7="}\n\n"33+44="\n{"prompt": "12+7=", "score": "19"}\n', encoding="utf-8")
    rc, out, err = carl(capsys, "--model", str(tiny), "--prompts", str(f), "--greedy", "--stream")
    assert rc == 0
    results = [o for o in out if o["type"] == "result"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["mode"] for r in results] == ["generate", "generate", "score"]
    assert results[2]["tokens"] == ["1", "9"]
    for r in results:
        assert_field(r)
        toks = [o for o in out if o["type"] == "token" and o["prompt_index"] == r["index"]]
        assert [t["token_id"] for t in toks] == r["token_ids"]
    assert sum("infer: " in line for line in err) == 3


def test_lora_adapter_flag(tiny, tmp_path, capsys):
    adapter = save_random_lora(tiny, tmp_path / "adapter")
    rc, out, _ = carl(capsys, "--model", str(tiny), "--adapter", str(adapter), "--prompt", PROMPT, "--greedy",
                      "--max-new-tokens", "4")
    assert rc == 0 and out[0]["adapter"] == str(adapter.resolve())
    assert_field(out[0])


@pytest.mark.parametrize("argv, code, exit_code", [
    (["--model", "/nonexistent/model", "--prompt", "x"], "carl.validation", 2),
    (["--run", "nope", "--prompt", "x"], "carl.run.not_found", 2),
    (["--prompt", "x"], "carl.validation", 2),
    (["--model", "m"], "carl.validation", 2),  # no prompt
    (["--model", "m", "--prompt", "x", "--prompts", "f"], "carl.validation", 2),
    (["--model", "m", "--adapter", "a", "--run", "r", "--prompt", "x"], "carl.validation", 2),
    (["--model", "m", "--prompt", "x", "--max-new-tokens", "0"], "carl.validation", 2),
    (["--model", "m", "--prompt", "x", "--top-p", "2"], "carl.validation", 2),
    (["--model", "m", "--prompts", "/nonexistent.jsonl"], "carl.validation", 2),
])
def test_errors_are_typed_json_on_stderr(capsys, argv, code, exit_code):
    rc = batch_main(["infer", *argv])
    cap = capsys.readouterr()
    assert rc == exit_code and cap.out == ""
    assert json.loads(cap.err.strip().splitlines()[-1])["error"]["code"] == code


def test_bad_prompts_file_lines(tmp_path, capsys):
    for body, msg in (('{"prompt": 3}\n', "no string"), ("not json\n", "not JSON"), ("\n", "no prompts"),
                      ('{"prompt": "a", "score": 5}\n', "score")):
        f = tmp_path / "p.jsonl"
        f.write_text(body)
        assert batch_main(["infer", "--model", "m", "--prompts", str(f)]) == 2
        err = json.loads(capsys.readouterr().err.strip())["error"]
        assert err["code"] == "carl.validation" and msg in err["message"]


def test_unreachable_hub_id_offline_is_a_network_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", "infer", "--model", "carl-test/not-cached",
                        "--prompt", "x"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert p.returncode == 4 and p.stdout == ""  # engine.models: a Hub id is tried last and fails fast offline
    err = json.loads(p.stderr.strip().splitlines()[-1])["error"]
    assert err["code"] == "carl.network" and "HF_HUB_OFFLINE" in err["message"] and err["hint"]
