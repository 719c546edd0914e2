"""See inside any run: sources (carl frames, TRL trainer_state, trackio local/remote), analysis (phase,
crystallization step, health findings), diff, follow and export. Nothing here imports textual."""

from __future__ import annotations

from pathlib import Path

from engine.observe.analysis import SIGMA, Finding, crystallization_step, health, phase, summarize
from engine.observe.diff import diff_runs
from engine.observe.sources import (JsonlSource, Source, TrackioLocalSource, TrackioRemoteSource, TrainerStateSource,
                                    file_source, list_runs, normalize_metrics, open_source, parse_source_spec,
                                    resolve_run)

__all__ = ["SIGMA", "Finding", "JsonlSource", "Source", "TrackioLocalSource", "TrackioRemoteSource",
           "TrainerStateSource", "crystallization_step", "diff_runs", "file_source", "health", "list_runs",
           "load", "normalize_metrics", "open_source", "parse_source_spec", "phase", "resolve_run", "summarize"]


def load(path_or_run: str | Path):
    """Frames of a file, directory or carl run id: ``(frames, skipped)`` (handy for `run diff`)."""
    p = Path(path_or_run).expanduser()
    src = file_source(p) if p.exists() else open_source(run=str(path_or_run))
    return src.load()
