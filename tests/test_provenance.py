"""run.start records what reproduces a run (engine/provenance.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from engine import provenance
from engine.config import load_config

REPO = Path(__file__).resolve().parent.parent


def test_versions_are_the_installed_ones():
    import torch
    import transformers
    import trl

    v = provenance.versions()
    assert v["torch"] == torch.__version__ and v["transformers"] == transformers.__version__
    assert v["trl"] == trl.__version__
    assert set(v) >= {"carl", "torch", "transformers", "trl", "peft"}


def test_git_revision_of_a_checkout_and_none_elsewhere(tmp_path):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    rev = provenance.git_revision(REPO)
    assert rev is not None and rev["commit"] == head and isinstance(rev["dirty"], bool)
    assert provenance.git_revision(tmp_path) is None


def test_dataset_fingerprint_follows_the_rows_and_the_file(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg, _ = load_config(None, [f"dataset.source={data}"])
    a = provenance.dataset_provenance(cfg, rows[:1], rows[1:], cwd=tmp_path)
    b = provenance.dataset_provenance(cfg, rows[:1], [{"prompt": "2+2=", "answer": "5"}], cwd=tmp_path)
    assert a["fingerprint"] != b["fingerprint"] and len(a["fingerprint"]) == 64
    assert a["file_sha256"] == __import__("hashlib").sha256(data.read_bytes()).hexdigest()
    assert (a["train_rows"], a["eval_rows"]) == (1, 1)
