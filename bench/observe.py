"""Bench: load a 1,000,000-frame frames.jsonl with carl's reader vs a bare `json.loads` loop, same file, same run.

    .venv/bin/python bench/observe.py [--frames N] [--keep PATH]

Writes N realistic frames (the fields carl's trainer writes) with engine.frames.FrameWriter's encoding, then
times, in --repeat interleaved rounds (the median round by the summary ratio is reported, with every round's):
  baseline  `for line in open(f): json.loads(line)` (dicts only, no Frame objects)
  carl      engine.frames.read_frames (orjson, typed Frame objects, torn/garbage lines tolerated)
  carl+sum  read_frames + engine.observe.summarize (what `carl --batch observe` does)
and prints the ratio carl / baseline (target ≤ 1.5×).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from engine.frames import read_frames  # noqa: E402
from engine.observe.analysis import summarize  # noqa: E402


def write_file(path: Path, n: int) -> None:
    with open(path, "wb") as fh:
        buf = []
        for s in range(n):
            phi = 0.05 + 0.3 / (1 + math.exp(-(s - n / 2) / (n / 20)))
            buf.append(orjson.dumps({
                "step": s, "phi": phi, "entropy": 2.0 - 1.5 * s / n, "reward_mean": 0.2 + 0.5 * s / n,
                "task_reward": 0.1 + 0.6 * s / n, "carl_reward": phi * 2, "rewards": {"acc": 0.5, "fmt": 0.9},
                "gate": "B" if s > n / 10 else "A", "loss": 0.5 - 0.3 * s / n, "lr": 1e-5, "kl": 0.01,
                "completion_length": 120.0, "clipped_ratio": 0.02, "frac_reward_zero_std": 0.1,
                "step_time": 0.8, "timestamp": 1.7e9 + s}) + b"\n")
            if len(buf) >= 10000:
                fh.write(b"".join(buf))
                buf.clear()
        fh.write(b"".join(buf))


def baseline(path: Path) -> int:
    n = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            json.loads(line)
            n += 1
    return n


def timed(fn) -> tuple[float, object]:
    gc.collect()
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="write the file here and keep it")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        path = Path(args.keep)
    else:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "frames.jsonl"
    try:
        t = time.perf_counter()
        write_file(path, args.frames)
        print(f"wrote {args.frames:,} frames ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f}s",
              file=sys.stderr)
        # interleaved rounds (baseline, read, read+summary back to back): on a shared box the load moves between
        # rounds, so each round's ratios compare like with like; the median round is reported
        rounds = []
        for _ in range(args.repeat):
            tb, nb = timed(lambda: baseline(path))
            tc, (frames, skipped) = timed(lambda: read_frames(path))
            assert nb == len(frames) == args.frames and skipped == 0
            del frames
            ts, s = timed(lambda: summarize(*read_frames(path)[:1], source=str(path), run=None))
            rounds.append((tb, tc, ts))
        ratios = sorted(rounds, key=lambda r: r[2] / r[0])
        tb, tc, ts = ratios[len(ratios) // 2]
        result = {"frames": args.frames, "repeat": args.repeat, "baseline_json_loads_s": round(tb, 3),
                  "carl_read_frames_s": round(tc, 3), "ratio": round(tc / tb, 3),
                  "carl_read_and_summarize_s": round(ts, 3), "summary_ratio": round(ts / tb, 3),
                  "summary_ratios": [round(r[2] / r[0], 3) for r in rounds],
                  "phase": s["phase"], "health": s["health"]["status"], "target_ratio": 1.5,
                  "python": sys.version.split()[0], "cpus": os.cpu_count()}
        print(json.dumps(result))
        print(f"carl read_frames / bare json.loads loop = {tc / tb:.2f}x (target <= 1.5x); "
              f"with the summary {ts / tb:.2f}x (median of {args.repeat} interleaved rounds)", file=sys.stderr)
    finally:
        if tmp:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
