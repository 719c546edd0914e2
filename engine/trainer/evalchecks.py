"""The eval gate's collapse checks (issue 16): what a collapsed checkpoint fails and a healthy one passes.

The old coherence check was a band on the mean discontinuity score, [0.3, 0.7]. It is backwards: a flat,
collapsed completion scores 0.5 (nothing jumps) and passes, a confident completion with a little jitter fails.
These checks look at what a collapse *is* — the policy gives the same answer whatever the prompt, with the
same flat certainty — measured on the greedy completions of the held-out prompts:

* ``distinct_fraction`` — distinct completions (stripped text) / prompts; must be ≥ ``eval.min_distinct``;
* ``top_answer_share`` — the share of prompts that got the single most common completion; must be ≤
  ``eval.max_top_share``;
* ``phi_spread`` — the standard deviation, over the eval set, of each completion's mean Phi; must be ≥
  ``eval.min_phi_spread``. A collapsed policy is equally (un)certain on every prompt.

Each check can be turned off with its neutral value (0, 1, 0). Defaults and the numbers behind them:
docs/coherence.md (real collapsed and healthy checkpoints of the demo ablation).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence


def answer_stats(texts: Sequence[str]) -> dict[str, float | None]:
    if not texts:
        return {"distinct_fraction": None, "top_answer_share": None}
    norm = [t.strip() for t in texts]
    counts = Counter(norm)
    return {"distinct_fraction": len(counts) / len(norm), "top_answer_share": counts.most_common(1)[0][1] / len(norm)}


def phi_spread(phi, mask) -> float | None:
    """Std over completions of their mean Phi (tensors [B, T] and a bool mask); None for < 2 completions."""
    m = mask.float()
    lens = m.sum(-1)
    keep = lens > 0
    if int(keep.sum()) < 2:
        return None
    per = ((phi * m).sum(-1) / lens.clamp(min=1))[keep]
    return float(per.std(unbiased=False))


def check_collapse(metrics: dict[str, Any], ecfg) -> tuple[list[str], str | None]:
    """(failures, missing): each failed check as one phrase; ``missing`` names data the checks need and lack."""
    fails: list[str] = []

    def ok(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    need = {"distinct_fraction": ecfg.min_distinct > 0, "top_answer_share": ecfg.max_top_share < 1,
            "phi_spread": ecfg.min_phi_spread > 0}
    lacking = [k for k, used in need.items() if used and not ok(metrics.get(k))]
    if lacking:
        return fails, ", ".join(lacking)
    if need["distinct_fraction"] and metrics["distinct_fraction"] < ecfg.min_distinct:
        fails.append(f"distinct answers {metrics['distinct_fraction']:.2f} of prompts < {ecfg.min_distinct:.2f} "
                     f"(collapsed)")
    if need["top_answer_share"] and metrics["top_answer_share"] > ecfg.max_top_share:
        fails.append(f"one answer for {metrics['top_answer_share']:.0%} of prompts > {ecfg.max_top_share:.0%} "
                     f"(collapsed)")
    if need["phi_spread"] and metrics["phi_spread"] < ecfg.min_phi_spread:
        fails.append(f"phi spread {metrics['phi_spread']:.4f} < {ecfg.min_phi_spread:.4f} (flat certainty)")
    return fails, None
