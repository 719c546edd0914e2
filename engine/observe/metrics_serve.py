"""`carl --batch metrics serve`: a Prometheus scrape endpoint for carl's live runs and any observe source.

Built on prometheus_client (its registry, collector and text exposition — nothing hand-written). Each scrape
polls every source for what arrived since the last one (sources are followed incrementally, like ``--follow``),
recomputes health, and exposes, per run (labels ``run`` and ``source``):

- ``carl_run_last_step`` — the newest step;
- ``carl_run_metric{metric=…}`` — the newest finite value of every scalar metric the run logs (Frame fields,
  ``rewards/<fn>``, ``carl/<component>``, any other logged key such as ``grad_norm`` or ``clip_ratio/high_max``);
- ``carl_run_health`` — 0 ok · 1 warn · 2 bad · 3 empty (no frames);
- ``carl_run_finding{code, severity}`` — 1 for every open finding (a recovered one is not exposed);
- ``carl_run_ended`` — 1 once the source says the run is over.

carl's live runs are the runs in CARL_HOME whose meta.json says ``running`` at scrape time (found again on every
scrape, so a run started later appears). The server binds 127.0.0.1 only.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Iterable

from engine.frames import SCALAR_FIELDS, Frame
from engine.home import CarlHome

HEALTH_CODE = {"ok": 0, "warn": 1, "bad": 2, "empty": 3}


class _Tracked:
    def __init__(self, source: Any):
        self.source = source
        self.frames: list[Frame] = []
        self.loaded = False
        self.error: str | None = None

    def refresh(self) -> None:
        try:
            if not self.loaded:
                self.frames, _ = self.source.load()
                self.loaded = True
            else:
                new, _, reset = self.source.poll()
                if reset:
                    self.frames = []
                self.frames += new
            self.error = None
        except Exception as exc:  # noqa: BLE001 — one unreadable source must not break the scrape of the others
            self.error = f"{type(exc).__name__}: {exc}"


def latest_values(frames: list[Frame]) -> dict[str, float]:
    """The newest finite value of every scalar metric across the frames (scanned from the end)."""
    out: dict[str, float] = {}
    for f in reversed(frames):
        for name in SCALAR_FIELDS:
            if name in ("timestamp",) or name in out:
                continue
            v = getattr(f, name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[name] = float(v)
        for prefix, d in (("rewards/", f.rewards), ("carl/", f.carl_components), ("", f.extra)):
            for k, v in (d or {}).items():
                key = prefix + k
                if key not in out and isinstance(v, (int, float)) and math.isfinite(v):
                    out[key] = float(v)
        if len(out) > 400:
            break
    return out


class RunsCollector:
    """A prometheus_client collector over the named sources plus carl's running runs."""

    def __init__(self, sources: Iterable[Any] = (), *, home: CarlHome | None = None, include_live: bool = True):
        self.named = [_Tracked(s) for s in sources]
        self.home = home or CarlHome.from_env()
        self.include_live = include_live
        self.live: dict[str, _Tracked] = {}
        self.lock = threading.Lock()

    def _live_runs(self) -> list[_Tracked]:
        if not self.include_live:
            return []
        from engine.observe.sources import JsonlSource, list_runs

        running = {r["run_id"] for r in list_runs(self.home, limit=200) if r.get("status") == "running"}
        for rid in running - set(self.live):
            d = self.home.runs / rid
            self.live[rid] = _Tracked(JsonlSource(d / "frames.jsonl", run=rid, run_dir=d))
        for rid in set(self.live) - running:
            del self.live[rid]
        return list(self.live.values())

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the metric set depends on what the runs log

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from engine.observe.analysis import health

        step = GaugeMetricFamily("carl_run_last_step", "Newest logged step of the run", labels=["run", "source"])
        metric = GaugeMetricFamily("carl_run_metric", "Newest finite value of each logged metric",
                                   labels=["run", "source", "metric"])
        status = GaugeMetricFamily("carl_run_health", "Health status: 0 ok, 1 warn, 2 bad, 3 empty",
                                   labels=["run", "source"])
        finding = GaugeMetricFamily("carl_run_finding", "1 for each open health finding",
                                    labels=["run", "source", "code", "severity"])
        ended = GaugeMetricFamily("carl_run_ended", "1 once the run is over", labels=["run", "source"])
        up = GaugeMetricFamily("carl_source_up", "1 when the source could be read at this scrape",
                               labels=["run", "source"])
        with self.lock:
            for t in self.named + self._live_runs():
                t.refresh()
                run, label = str(t.source.run or ""), str(t.source.label)
                up.add_metric([run, label], 0.0 if t.error else 1.0)
                if t.frames:
                    step.add_metric([run, label], float(t.frames[-1].step))
                    for k, v in sorted(latest_values(t.frames).items()):
                        metric.add_metric([run, label, k], v)
                h = health(t.frames)
                status.add_metric([run, label], float(HEALTH_CODE.get(h["status"], 3)))
                for f in h["findings"]:
                    if "recovered_at" not in f:
                        finding.add_metric([run, label, f["code"], f["severity"]], 1.0)
                try:
                    ended.add_metric([run, label], 1.0 if t.source.ended() else 0.0)
                except Exception:  # noqa: BLE001
                    ended.add_metric([run, label], 0.0)
        yield from (step, metric, status, finding, ended, up)


def serve(sources: Iterable[Any], *, port: int = 9464, home: CarlHome | None = None) -> tuple[Any, Any, Any]:
    """Start the endpoint on 127.0.0.1:port (0 = any free port); returns (server, thread, registry)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunsCollector(sources, home=home))
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server, thread, registry
