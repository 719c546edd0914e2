"""Make tests/data/coherence/: frames and final models of real demo runs (bench/coherence_runs.py), trimmed.

    python bench/coherence_runs.py /tmp/coherence-exp/runs ...     # the runs (docs/coherence.md)
    python tests/data/make_coherence_data.py /tmp/coherence-exp/runs
    python tests/data/make_coherence_data.py /tmp/coh-runs/runs RUN [RUN …]   # only these runs' frames, no models

Frames keep the fields the collapse warning and the phase read (step, phi, entropy, task_reward,
completion_length, clipped_ratio, frac_reward_zero_std and the two distinct-completion counts); a run recorded
before frames carried phi with CARL off gets it the way the trainer now writes it (engine.coherence:
1 − entropy / log V, V from its final/config.json). Models: the
final weights of one collapsed and one healthy sparse-start run, stored as float16 (half the size; the tests
load them as float32 and measure what is stored).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

KEEP = ("step", "phi", "entropy", "task_reward", "completion_length", "clipped_ratio", "frac_reward_zero_std")
EXTRA = ("completions/distinct_per_group", "completions/distinct")
MODELS = {"collapsed": "sparse-ungated-0", "healthy": "sparse-task-0"}


def main() -> int:
    src = Path(sys.argv[1])
    only = set(sys.argv[2:])
    dst = Path(__file__).parent / "coherence"
    (dst / "frames").mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from engine.coherence import phi_from_mean_entropy, vocab_size_from_dir

    for d in sorted(p for p in src.iterdir() if (p / "frames.jsonl").is_file() and (not only or p.name in only)):
        lines = []
        vocab = vocab_size_from_dir(d / "final")
        for line in (d / "frames.jsonl").read_text().splitlines():
            f = json.loads(line)
            if f.get("phi") is None:
                f["phi"] = phi_from_mean_entropy(f.get("entropy"), vocab)
            out = {k: f[k] for k in KEEP if f.get(k) is not None}
            out["extra"] = {k: f["extra"][k] for k in EXTRA if k in (f.get("extra") or {})}
            lines.append(json.dumps(out, separators=(",", ":")))
        (dst / "frames" / f"{d.name}.jsonl").write_text("\n".join(lines) + "\n")
    if only:
        return 0
    import torch
    from safetensors.torch import load_file, save_file

    for label, name in MODELS.items():
        out = dst / label
        out.mkdir(exist_ok=True)
        for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(src / name / "final" / f, out / f)
        w = load_file(str(src / name / "final" / "model.safetensors"))
        save_file({k: v.to(torch.float16) for k, v in w.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
        (out / "SOURCE").write_text(f"final/ of {name} (bench/coherence_runs.py), weights as float16\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
