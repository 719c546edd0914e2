"""`--export DIR`: the frames as CSV and the main charts as PNG (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

from engine.errors import ValidationError
from engine.frames import SCALAR_FIELDS, Frame
from engine.observe.analysis import SIGMA, crystallization_step, metric_names, series

CHARTS = {  # file stem → (title, metrics, y label)
    "phi": ("Φ (coherence) with σ = 3/16", ["phi"], "Φ"),
    "reward": ("Reward: task vs CARL", ["reward_mean", "task_reward", "carl_reward"], "reward"),
    "entropy": ("Policy entropy", ["entropy"], "nats"),
    "loss": ("Loss and KL", ["loss", "kl"], ""),
}


def csv_columns(frames: Sequence[Frame]) -> list[str]:
    names = metric_names(frames)
    cols = ["step"] + [n for n in SCALAR_FIELDS if n in names or n == "timestamp"]
    cols += [n for n in names if n not in cols]
    if any(f.gate for f in frames):
        cols.insert(1, "gate")
    return cols


def write_csv(frames: Sequence[Frame], path: Path) -> int:
    cols = csv_columns(frames)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for f in frames:
            row: list[Any] = []
            for c in cols:
                v = f.gate if c == "gate" else f.get(c)
                row.append("" if v is None else (repr(v) if isinstance(v, float) and not math.isfinite(v) else v))
            w.writerow(row)
    return len(frames)


def write_charts(frames: Sequence[Frame], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    paths = []
    cstep = crystallization_step(frames)
    for stem, (title, metrics, ylabel) in CHARTS.items():
        lines = [(m, *series(frames, m)) for m in metrics]
        lines = [x for x in lines if x[1]]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
        for name, xs, ys in lines:
            ax.plot(xs, ys, label=name, linewidth=1.4)
        if stem == "phi":
            ax.axhline(SIGMA, color="tab:red", linestyle="--", linewidth=1, label="σ = 3/16")
            if cstep is not None:
                ax.axvline(cstep, color="tab:green", linestyle=":", linewidth=1, label=f"crystallized @ {cstep}")
        ax.set_title(title)
        ax.set_xlabel("step")
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        p = out / f"{stem}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(str(p))
    return paths


def export(frames: Sequence[Frame], directory: str | Path) -> dict[str, Any]:
    """Write ``frames.csv`` and ``phi.png`` / ``reward.png`` / ``entropy.png`` / ``loss.png`` (those with data)."""
    out = Path(directory).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError(f"cannot create export directory {out}: {exc.strerror}",
                              hint="Pass a writable --export DIR.", context={"dir": str(out)}) from exc
    csv_path = out / "frames.csv"
    write_csv(frames, csv_path)
    return {"dir": str(out), "csv": str(csv_path), "charts": write_charts(frames, out) if frames else []}
