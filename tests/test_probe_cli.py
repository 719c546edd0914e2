"""`carl --batch probe` as a subprocess: every contract field matches the independent float64 reference to
1e-4 for .npy / .npz / .safetensors, [T, V] and [B, T, V], with and without tokens, masked mode; bad input
gives one JSON error on stderr, the right code, exit 2 and no traceback.

All invocations start at once (module fixture) so the suite pays for the process start-ups in parallel.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file as save_pt

from tests.conftest import REPO
from tests.test_probe import ref_rewards, ref_sequence

CONTRACT_FIELDS = {"n_tokens", "vocab_size", "phi_mean", "phi_std", "phi_min", "phi_max", "entropy_mean", "phi",
                   "kappa", "sigma", "crystallized_fraction", "rewards"}


def _logits(rng, shape, scale=3.0):
    x = rng.standard_normal(shape) * scale
    x[..., 0] += 4.0 * rng.random(shape[:-1])  # vary the confidence from token to token
    return x.astype(np.float32)


def _expected(logits, tokens=None):
    """The contract's fields from the reference: stats over all tokens, rewards per sequence then averaged."""
    x = np.asarray(logits, dtype=np.float64)
    batch = x if x.ndim == 3 else x[None]
    toks = None if tokens is None else (np.asarray(tokens) if x.ndim == 3 else np.asarray(tokens)[None])
    phis, ents, rewards = [], [], []
    for b in range(batch.shape[0]):
        phi, ent, sel = ref_sequence(batch[b], None if toks is None else toks[b])
        phis += phi
        ents += ent
        rewards.append(ref_rewards(phi, sel))
    n = len(phis)
    mean = sum(phis) / n
    return {
        "n_tokens": n, "vocab_size": x.shape[-1], "phi": phis, "phi_mean": mean,
        "phi_std": math.sqrt(sum((p - mean) ** 2 for p in phis) / n), "phi_min": min(phis), "phi_max": max(phis),
        "entropy_mean": sum(ents) / n, "kappa": 64 / 3, "sigma": 3 / 16,
        "crystallized_fraction": sum(p >= 3 / 16 for p in phis) / n,
        "rewards": {k: sum(r[k] for r in rewards) / len(rewards) for k in rewards[0]},
    }


def _build_cases(d):
    rng = np.random.default_rng(42)
    cases = {}  # name -> (argv, expected dict | (error code))

    x = _logits(rng, (12, 50))
    np.save(d / "a.npy", x)
    cases["npy_2d"] = (["--logits", str(d / "a.npy")], _expected(x))

    x = _logits(rng, (3, 9, 40))
    t = rng.integers(0, 40, size=(3, 9))
    np.save(d / "b.npy", x)
    np.save(d / "b_tokens.npy", t)
    cases["npy_3d_tokens"] = (["--logits", str(d / "b.npy"), "--tokens", str(d / "b_tokens.npy")], _expected(x, t))

    x = _logits(rng, (10, 64))
    t = rng.integers(0, 64, size=10)
    np.savez(d / "c.npz", logits=x, tokens=t)
    cases["npz_2d_tokens"] = (["--logits", str(d / "c.npz")], _expected(x, t))

    x = _logits(rng, (2, 7, 33)).astype(np.float16)
    np.savez(d / "d.npz", logits=x)
    cases["npz_3d_float16"] = (["--logits", str(d / "d.npz")], _expected(x.astype(np.float64)))

    x = _logits(rng, (8, 30))
    t = rng.integers(0, 30, size=8)
    save_np({"logits": x, "tokens": t}, str(d / "e.safetensors"))
    cases["safetensors_2d_tokens"] = (["--logits", str(d / "e.safetensors")], _expected(x, t))

    xb = torch.from_numpy(_logits(rng, (2, 5, 20))).to(torch.bfloat16)
    save_pt({"logits": xb}, str(d / "f.safetensors"))
    cases["safetensors_3d_bfloat16"] = (["--logits", str(d / "f.safetensors")], _expected(xb.float().numpy()))

    x = _logits(rng, (3, 6, 25))
    t = rng.integers(0, 25, size=(3, 6))
    save_np({"logits": x}, str(d / "g.safetensors"))
    (d / "g_tokens.json").write_text(json.dumps(t.tolist()))
    cases["safetensors_3d_json_tokens"] = (["--logits", str(d / "g.safetensors"), "--tokens", str(d / "g_tokens.json")],
                                           _expected(x, t))

    x = _logits(rng, (6, 25))
    x[rng.random(x.shape) < 0.3] = -np.inf
    x[:, 3] = 1.0  # every row keeps a finite entry
    t = np.full(6, 3)
    np.savez(d / "h.npz", logits=x, tokens=t)
    cases["masked_npz"] = (["--logits", str(d / "h.npz"), "--allow-masked"], _expected(x, t))
    cases["masked_without_flag"] = (["--logits", str(d / "h.npz")], "carl.probe.nonfinite")

    np.save(d / "rank4.npy", np.zeros((2, 2, 3, 4), np.float32))
    cases["bad_rank"] = (["--logits", str(d / "rank4.npy")], "carl.probe.shape")
    cases["tokens_mismatch"] = (["--logits", str(d / "a.npy"), "--tokens", str(d / "b_tokens.npy")], "carl.probe.shape")
    xn = _logits(rng, (4, 10))
    xn[2, 5] = np.nan
    np.save(d / "nan.npy", xn)
    cases["nan"] = (["--logits", str(d / "nan.npy"), "--allow-masked"], "carl.probe.nonfinite")
    cases["missing_file"] = (["--logits", str(d / "nope.npy")], "carl.validation")
    (d / "junk.npy").write_text("not an array")
    cases["corrupt_file"] = (["--logits", str(d / "junk.npy")], "carl.validation")
    np.savez(d / "nologits.npz", other=np.zeros((2, 3)))
    cases["npz_without_logits"] = (["--logits", str(d / "nologits.npz")], "carl.validation")
    (d / "x.csv").write_text("1,2\n")
    cases["unsupported_type"] = (["--logits", str(d / "x.csv")], "carl.validation")
    cases["no_logits_flag"] = ([], "carl.validation")
    return cases


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe-cli")
    cases = _build_cases(d)
    env = {**os.environ, "CARL_HOME": str(d / "home")}
    env.pop("CARL_DEBUG", None)
    procs = {name: subprocess.Popen([sys.executable, "-m", "carl_tui", "--batch", "probe", *argv], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (argv, _) in cases.items()}
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = (p.returncode, stdout, stderr, cases[name][1])
    return out


OK_CASES = ["npy_2d", "npy_3d_tokens", "npz_2d_tokens", "npz_3d_float16", "safetensors_2d_tokens",
            "safetensors_3d_bfloat16", "safetensors_3d_json_tokens", "masked_npz"]
ERROR_CASES = ["masked_without_flag", "bad_rank", "tokens_mismatch", "nan", "missing_file", "corrupt_file",
               "npz_without_logits", "unsupported_type", "no_logits_flag"]


@pytest.mark.parametrize("name", OK_CASES)
def test_probe_matches_the_float64_reference(runs, name):
    code, stdout, stderr, expected = runs[name]
    assert code == 0, stderr
    assert "Traceback" not in stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    got = json.loads(lines[0])
    assert CONTRACT_FIELDS <= set(got)
    assert got["n_tokens"] == expected["n_tokens"] and got["vocab_size"] == expected["vocab_size"]
    assert len(got["phi"]) == expected["n_tokens"]
    np.testing.assert_allclose(got["phi"], expected["phi"], atol=1e-4)
    for k in ("phi_mean", "phi_std", "phi_min", "phi_max", "entropy_mean", "kappa", "sigma", "crystallized_fraction"):
        assert got[k] == pytest.approx(expected[k], abs=1e-4), k
    assert set(got["rewards"]) == {"coherence", "cloud", "discontinuity", "carl"}
    for k, v in expected["rewards"].items():
        assert got["rewards"][k] == pytest.approx(v, abs=1e-4), k
    assert got["rewards"]["carl"] == pytest.approx(0.5 * got["rewards"]["coherence"] + 0.3 * got["rewards"]["cloud"]
                                                   + 0.2 * got["rewards"]["discontinuity"], abs=1e-12)
    # documented extras
    assert len(got["per_sequence"]) == (got["batch_size"] or 1)
    assert got["allow_masked"] == (name == "masked_npz")


@pytest.mark.parametrize("name", ERROR_CASES)
def test_bad_input_is_one_json_error_exit_2(runs, name):
    code, stdout, stderr, expected_code = runs[name]
    assert code == 2, (stdout, stderr)
    assert stdout == ""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    err = json.loads(lines[-1])["error"]
    assert err["code"] == expected_code
    assert err["message"] and err["hint"]
    assert "\n" not in err["message"]


def test_nonfinite_error_names_the_position(runs):
    err = json.loads(runs["nan"][2].strip().splitlines()[-1])["error"]
    assert err["context"] == {"position": [2], "value": "nan"}
    err = json.loads(runs["masked_without_flag"][2].strip().splitlines()[-1])["error"]
    assert "--allow-masked" in err["hint"]


def test_verb_help_is_fast_and_names_the_flags():
    out = subprocess.run([sys.executable, "-c", "import sys\nfrom carl_tui.cli import main\n"
                          "try:\n    main(['--batch', 'probe', '--help'])\nexcept SystemExit:\n    pass\n"
                          "print(sorted(m for m in ('torch', 'numpy', 'textual', 'safetensors') if m in sys.modules))"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--logits" in out.stdout and "--allow-masked" in out.stdout
    assert "torch" not in out.stdout.strip().splitlines()[-1]
    assert "textual" not in out.stdout.strip().splitlines()[-1]
