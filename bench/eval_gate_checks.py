"""The eval gate's collapse checks on the demo runs' real final models (issue 16, docs/coherence.md).

For each run directory written by ``bench/coherence_runs.py`` (``OUT/<start>-<arm>-<seed>/final``): greedy
held-out accuracy, distinct answers / prompts, the top answer's share, Phi spread, the old discontinuity score
and the gate's decision, plus whether observe's collapse warning fired on the run's frames.

    python bench/eval_gate_checks.py OUT [RUN ...]      # (only these runs)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    out = Path(sys.argv[1])
    only = set(sys.argv[2:])
    from engine.config import load_config
    from engine.observe.collapse import detect_collapse
    from engine.trainer.data import load_rows
    from engine.trainer.evalgate import decide, evaluate, load_for_eval

    cfg, _ = load_config(None, ["tracking.trackio=false"], cwd=out)
    _, rows = load_rows(cfg)
    print("| run | acc | distinct answers | top answer share | phi spread | discontinuity | old band | gate "
          "(threshold 0) | collapse.onset |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in sorted(p for p in out.iterdir() if (p / "final" / "config.json").is_file()
                    and (not only or p.name in only)):
        model, tok = load_for_eval(d / "final", cfg)
        m = evaluate(model, tok, rows, cfg, n=len(rows))
        ok, why = decide(m, cfg.eval, 0.0)
        frames = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]
        alarm = detect_collapse(frames)
        band = 0.3 <= m["discontinuity"] <= 0.7
        print(f"| {d.name} | {m['task_metric']:.3f} | {m['distinct_fraction']:.3f} | {m['top_answer_share']:.3f} | "
              f"{m['phi_spread']:.4f} | {m['discontinuity']:.3f} | {'pass' if band else 'fail'} | "
              f"{'pass' if ok else 'FAIL'} | {alarm.step if alarm else '–'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
