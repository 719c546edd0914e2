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


def observe_finding(frames_path: Path) -> dict | None:
    """What ``carl --batch observe --file FRAMES`` reports (the verb itself, in process): its collapse.onset
    finding or None."""
    import contextlib
    import io

    from carl_tui.batch import main as batch

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = batch(["observe", "--file", str(frames_path)])
    if rc != 0:
        raise SystemExit(f"observe failed on {frames_path}: rc {rc}")
    summary = json.loads(buf.getvalue().strip().splitlines()[-1])
    return next((f for f in summary["health"]["findings"] if f["code"] == "collapse.onset"), None)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> int:
    from engine.observe.collapse import DPG, detect_collapse, plain_collapse_step

    out = Path(sys.argv[1])
    print("| run | arm | alarm step (window from) | first step < 3 distinct/group | plain (5-frame mean) "
          "| lead time | distinct/group first→last 10 | clipped first→last 10 | task reward first→last 10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    healthy, false_alarms = [], []
    plain_runs, flagged_before, late_or_missed, unconfirmed, mismatch = [], [], [], [], []
    leads, live_mismatch = [], []
    for d in sorted(p for p in out.iterdir() if (p / "frames.jsonl").is_file() and (p / "meta.json").is_file()):
        frames = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]
        arm = d.name.split("-")[1]
        collapsing_arm = arm in COLLAPSING_ARMS
        alarm = detect_collapse(frames)
        seen = observe_finding(d / "frames.jsonl")
        if (seen["step"] if seen else None) != (alarm.step if alarm else None):
            mismatch.append(d.name)
        events = [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()] \
            if (d / "events.jsonl").is_file() else []
        live = next((e["step"] for e in events if e.get("name") == "collapse_onset"), None)
        if live != (alarm.step if alarm else None):
            live_mismatch.append(d.name)
        dpg = [(f["step"], (f.get("extra") or {}).get(DPG)) for f in frames]
        raw = next((s for s, v in dpg if v is not None and v < 3), None)
        plain = plain_collapse_step(frames)
        ref = min([x for x in (raw, plain) if x is not None], default=None)
        lead = (ref - alarm.step) if alarm and ref is not None else None
        vals = [v for _, v in dpg if v is not None]
        clip = [f.get("clipped_ratio") for f in frames]
        task = [f.get("task_reward") for f in frames]
        if not collapsing_arm:
            healthy.append(d.name)
            if alarm:
                false_alarms.append(d.name)
        if plain is not None:
            plain_runs.append(d.name)
            if alarm and alarm.step < plain:
                flagged_before.append(d.name)
                leads.append(lead)
            else:
                late_or_missed.append(d.name)
        elif alarm and collapsing_arm:
            unconfirmed.append(d.name)
        print(f"| {d.name} | {arm}{'' if collapsing_arm else ' (healthy arm)'} | "
              f"{f'{alarm.step} ({alarm.since})' if alarm else '–'} | {raw or '–'} | {plain or '–'} | "
              f"{lead if lead is not None else '–'} | {_mean(vals[:10]):.2f}→{_mean(vals[-10:]):.2f} | "
              f"{_mean(clip[:10]):.2f}→{_mean(clip[-10:]):.2f} | {_mean(task[:10]):.3f}→{_mean(task[-10:]):.3f} |")
    print(f"\nhealthy arms (task, evidence): {len(false_alarms)} false alarms of {len(healthy)} runs"
          + (f" ({', '.join(false_alarms)})" if false_alarms else ""))
    print(f"runs whose collapse became plain (5-frame mean < 3 distinct/group or clipped ≥ 0.9): {len(plain_runs)}; "
          f"flagged before it: {len(flagged_before)}" + (f"; late or missed: {', '.join(late_or_missed)}"
                                                           if late_or_missed else ""))
    if leads:
        print(f"lead times (vs the first raw step < 3 or the plain step, whichever first): {sorted(leads)}")
    print("alarms on collapsing arms with no plain collapse in the run: " + (", ".join(unconfirmed) or "none"))
    print("carl --batch observe reports the replayed alarm on every run: "
          + ("yes" if not mismatch else f"NO ({', '.join(mismatch)})"))
    print("the training worker raised it live (events.jsonl) at the replayed step on every run: "
          + ("yes" if not live_mismatch else f"NO ({', '.join(live_mismatch)})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
