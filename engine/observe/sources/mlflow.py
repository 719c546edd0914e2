"""MLflow file stores as a source (``mlruns/``, what ``MLFLOW_TRACKING_URI=file:…`` or ``report_to="mlflow"``
without a server writes). No MLflow import: the store is plain files.

Layout: ``mlruns/<experiment_id>/<run_id>/meta.yaml`` (``run_name``, ``status`` 1 RUNNING · 3 FINISHED · 4 FAILED ·
5 KILLED, ``start_time``) and ``metrics/<name>`` — one line per logged value, ``<timestamp_ms> <value> <step>``;
a metric name with ``/`` is a sub-directory (``metrics/train/reward``). Given ``mlruns/``, an experiment dir or a
run dir, the source reads that run (the most recently started one when there are several). Every metric file is
followed by offset, so ``--follow`` reads only what was appended; a line without its newline waits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.errors import ValidationError
from engine.frames import Frame
from engine.observe.sources.base import Source, frames_from_metrics

TERMINAL = {"3", "4", "5", "FINISHED", "FAILED", "KILLED"}


def _meta(run_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in (run_dir / "meta.yaml").read_text(errors="replace").splitlines():
            m = re.match(r"^(\w+):\s*(.*)$", line)
            if m:
                out[m.group(1)] = m.group(2).strip().strip("'\"")
    except OSError:
        pass
    return out


def is_run_dir(p: Path) -> bool:
    return (p / "meta.yaml").is_file() and (p / "metrics").is_dir()


def find_run(root: Path) -> Path | None:
    """The run dir under a store / experiment / run path (newest ``start_time`` first)."""
    if is_run_dir(root):
        return root
    cands = [p.parent for p in root.glob("*/metrics") if is_run_dir(p.parent)]
    cands += [p.parent for p in root.glob("*/*/metrics") if is_run_dir(p.parent)]
    if not cands:
        return None

    def started(p: Path) -> tuple[int, str]:
        try:
            return int(_meta(p).get("start_time") or 0), str(p)
        except ValueError:
            return 0, str(p)

    return max(cands, key=started)


def is_mlflow_store(p: Path) -> bool:
    try:
        return p.is_dir() and find_run(p) is not None
    except OSError:
        return False


class MlflowSource(Source):
    kind = "mlflow"
    reader = "mlflow"

    def __init__(self, path: str | Path):
        self.root = Path(path).expanduser()
        self.label = str(path)
        run = find_run(self.root)
        if run is None:
            raise ValidationError(f"no MLflow run in {self.root}", hint="Point at mlruns/, an experiment or a run dir.",
                                  context={"path": str(self.root)})
        self.run_dir = run
        meta = _meta(run)
        self.run = meta.get("run_name") or run.name
        self._offsets: dict[Path, int] = {}
        self._rows: dict[int, dict[str, Any]] = {}  # steps read but not handed on yet
        self._last_step: int | None = None

    def _read(self, *, hold_last: bool) -> tuple[list[Frame], int]:
        """Read what was appended; hand on the rows of every step but the newest (its other metric files may not
        be written yet) unless ``hold_last`` is False."""
        rows = self._rows
        skipped = 0
        mdir = self.run_dir / "metrics"
        for f in sorted(p for p in mdir.rglob("*") if p.is_file()):
            name = f.relative_to(mdir).as_posix()
            off = self._offsets.get(f, 0)
            try:
                with open(f, "rb") as fh:
                    fh.seek(off)
                    data = fh.read()
            except OSError:
                continue
            cut = data.rfind(b"\n")
            if cut < 0:
                continue
            self._offsets[f] = off + cut + 1
            for line in data[:cut].split(b"\n"):
                parts = line.split()
                if not parts:
                    continue
                try:
                    ts, value = int(parts[0]), float(parts[1])
                    step = int(parts[2]) if len(parts) > 2 else 0
                except (ValueError, IndexError):
                    skipped += 1
                    continue
                row = rows.setdefault(step, {"step": step})
                row[name] = value
                row["timestamp"] = max(ts / 1000.0, row.get("timestamp") or 0.0)
        for old in [s for s in rows if self._last_step is not None and s <= self._last_step]:
            rows.pop(old)  # a late value of a step already handed on
        steps = sorted(rows)
        if hold_last and steps:
            steps = steps[:-1]
        frames, bad = frames_from_metrics(rows.pop(s) for s in steps)
        if frames:
            self._last_step = frames[-1].step
        return frames, skipped + bad

    def load(self) -> tuple[list[Frame], int]:
        return self._read(hold_last=False)

    def poll(self) -> tuple[list[Frame], int, bool]:
        frames, skipped = self._read(hold_last=not self.ended())
        return frames, skipped, False

    def ended(self) -> bool:
        return _meta(self.run_dir).get("status", "") in TERMINAL
