"""The collapse early warning's lead times and false alarms on fresh demo runs (docs/coherence.md).

Reads ``OUT/<start>-<arm>-<seed>/frames.jsonl`` (bench/coherence_runs.py). Collapsing arms: ungated and
percentile CARL (``combine: add``); healthy arms: task only and evidence. For each run: the step the alarm fires
(and the start of its sustained window), the step the collapse is plain — the first step with fewer than 3
distinct completions per group (raw, as issue 16 counts it), and the step where the 5-frame mean of distinct
per group falls below 3 or of the clipped ratio reaches 0.9 — and the lead time against the earlier of those.

    python bench/collapse_alarm.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLLAPSING_ARMS = ("ungated", "percentile", "varied")


def main() -> int:
    from engine.observe.collapse import DPG, detect_collapse, plain_collapse_step

    out = Path(sys.argv[1])
    print("| run | kind | alarm step (window from) | first step < 3 distinct/group | plain (5-frame mean) "
          "| lead time | distinct/group first→last 10 |")
    print("|---|---|---|---|---|---|---|")
    false_alarms = healthy = 0
    for d in sorted(p for p in out.iterdir() if (p / "frames.jsonl").is_file() and (p / "meta.json").is_file()):
        frames = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]
        arm = d.name.split("-")[1]
        kind = "collapsing arm" if arm in COLLAPSING_ARMS else "healthy arm"
        alarm = detect_collapse(frames)
        dpg = [(f["step"], (f.get("extra") or {}).get(DPG)) for f in frames]
        raw = next((s for s, v in dpg if v is not None and v < 3), None)
        plain = plain_collapse_step(frames)
        ref = min([x for x in (raw, plain) if x is not None], default=None)
        lead = (ref - alarm.step) if alarm and ref is not None else None
        vals = [v for _, v in dpg if v is not None]
        first, last = sum(vals[:10]) / 10, sum(vals[-10:]) / 10
        if kind == "healthy arm":
            healthy += 1
            false_alarms += alarm is not None
        print(f"| {d.name} | {kind} | {f'{alarm.step} ({alarm.since})' if alarm else '–'} | {raw or '–'} | "
              f"{plain or '–'} | {lead if lead is not None else '–'} | {first:.2f}→{last:.2f} |")
    print(f"\nfalse alarms on healthy arms: {false_alarms} of {healthy}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
