"""Metric-name normalisation and the Source protocol every reader implements (one frame per logged step)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from engine.frames import Frame

# ── metric-name normalisation ─────────────────────────────────────────────────────────────────────────

STEP_KEYS = ("step", "global_step", "train/global_step", "_step", "iteration", "iter")
# verl (actor/critic metric names) and OpenRLHF-style names that mean the same as TRL's
VERL_ALIASES: dict[str, str] = {
    "actor/entropy": "entropy", "critic/score/mean": "reward_mean", "response_length/mean": "completion_length",
    "response_length/clip_ratio": "clipped_ratio", "actor/kl_loss": "kl", "actor/pg_loss": "loss",
    "actor/lr": "lr",
}
ALIASES: dict[str, str] = {
    "phi": "phi", "phi_mean": "phi", "phi/mean": "phi", "carl/phi": "phi", "coherence/phi": "phi",
    "entropy": "entropy", "entropy_mean": "entropy", "policy/entropy": "entropy",
    "reward": "reward_mean", "reward_mean": "reward_mean", "rewards/mean": "reward_mean",
    "reward/mean": "reward_mean",
    "task_reward": "task_reward", "reward_task": "task_reward", "rewards/task": "task_reward",
    "carl_reward": "carl_reward", "reward_carl": "carl_reward", "rewards/carl": "carl_reward",
    "carl_weight": "carl_weight",
    "loss": "loss",
    "lr": "lr", "learning_rate": "lr",
    "kl": "kl", "objective/kl": "kl",
    "completion_length": "completion_length", "completions/mean_length": "completion_length",
    "clipped_ratio": "clipped_ratio", "completions/clipped_ratio": "clipped_ratio",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "step_time": "step_time",
    "timestamp": "timestamp", "_timestamp": "timestamp", "time": "timestamp",
    **VERL_ALIASES,
}
STRIP_PREFIXES = ("train/",)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _timestamp(v: Any) -> float | None:
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return _num(v)
    return _num(v)


def normalize_metrics(d: dict[str, Any]) -> Frame:
    """A Frame from a metric dict with common names (TRL, trackio, wandb-style ``train/…`` prefixes).

    ``step``/``global_step``; ``phi``/``phi_mean``; ``reward``/``reward_mean``; ``rewards/<fn>/mean`` →
    ``rewards[fn]``; ``carl/<component>`` → ``carl_components``; ``learning_rate`` → ``lr``;
    ``completions/mean_length`` → ``completion_length``; other numeric values → ``extra``.
    Raises ValueError when there is no integer step."""
    nested = d.get("data")
    if isinstance(nested, dict) and "step" in d:  # verl's file logger: {"step": N, "data": {metric: value}}
        d = {**nested, "step": d["step"]}
    step = None
    for k in STEP_KEYS:
        if k in d:
            step = d[k]
            break
    sv = _num(step)
    if sv is None or not float(sv).is_integer():
        raise ValueError(f"no integer step in {sorted(d)[:8]}")
    out: dict[str, Any] = {"step": int(sv)}
    rewards: dict[str, float] = {}
    comps: dict[str, float] = {}
    extra: dict[str, float] = {}
    for key, v in d.items():
        if key in STEP_KEYS:
            continue
        name = key
        for p in STRIP_PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
        if name in ("rewards", "carl_components", "extra") and isinstance(v, dict):
            target = {"rewards": rewards, "carl_components": comps, "extra": extra}[name]
            target.update({str(k): float(x) for k, x in v.items() if _num(x) is not None})
            continue
        if name == "gate":
            out["gate"] = str(v) if v is not None else None
            continue
        if name in ("sample", "completion") and isinstance(v, str):
            out["sample"] = v
            continue
        field = ALIASES.get(name)
        if field == "timestamp":
            out["timestamp"] = _timestamp(v)
            continue
        x = _num(v) if not isinstance(v, str) else None
        if x is None:
            continue
        if field is not None:
            out[field] = x
        elif name.startswith("rewards/") and name.endswith("/mean") and name.count("/") == 2:
            rewards[name[8:-5]] = x
        elif name.startswith("rewards/") and name.count("/") == 1:
            rewards[name[8:]] = x
        elif name.startswith("carl/") and name.count("/") == 1:
            comps[name[5:]] = x
        else:
            extra[name] = x
    if rewards:
        out["rewards"] = rewards
    if comps:
        out["carl_components"] = comps
    if extra:
        out["extra"] = extra
    return Frame(**out)


def merge_by_step(frames: list[Frame]) -> list[Frame]:
    """Merge frames that share a step (a train log and an eval log of the same step), in step order."""
    by: dict[int, Frame] = {}
    for f in frames:
        cur = by.get(f.step)
        if cur is None:
            by[f.step] = f
            continue
        for name in ("phi", "entropy", "reward_mean", "task_reward", "carl_reward", "gate", "carl_weight", "loss",
                     "lr", "kl", "completion_length", "clipped_ratio", "frac_reward_zero_std", "step_time",
                     "timestamp", "sample"):
            v = getattr(f, name)
            if v is not None and getattr(cur, name) is None:
                setattr(cur, name, v)
        cur.rewards.update({k: v for k, v in f.rewards.items() if k not in cur.rewards})
        cur.carl_components.update({k: v for k, v in f.carl_components.items() if k not in cur.carl_components})
        cur.extra.update({k: v for k, v in f.extra.items() if k not in cur.extra})
    return [by[s] for s in sorted(by)]


# ── sources ───────────────────────────────────────────────────────────────────────────────────────────


class Source:
    kind = "source"
    reader: str | None = None  # which reader read it (the summary's "reader"); the kind when unset
    label = ""
    run: str | None = None
    via: str | None = None

    def _snapshot(self) -> tuple[list[Frame], int]:
        """Every frame the source holds now, and lines skipped (sources that load by re-reading define it)."""
        raise NotImplementedError

    def load(self) -> tuple[list[Frame], int]:
        frames, skipped = self._snapshot()
        self._last_step = frames[-1].step if frames else None
        return frames, skipped

    def poll(self) -> tuple[list[Frame], int, bool]:
        raise NotImplementedError

    def _newer(self, frames: list[Frame]) -> list[Frame]:
        """Of a whole re-read, the frames past the last step seen (all of them before any), advancing that step."""
        last = self._last_step
        new = frames if last is None else [f for f in frames if f.step > last]
        if frames:
            self._last_step = frames[-1].step if last is None else max(last, frames[-1].step)
        return new

    def ended(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        d = {"kind": self.kind, "reader": self.reader or self.kind, "source": self.label, "run": self.run}
        if self.via:
            d["via"] = self.via
        return d


class RereadSource(Source):
    """A source that reads its whole store again on every poll (trackio's SQLite or server, TensorBoard events)
    and hands on only the frames past the last step seen. ``POLL_RETRY`` errors mean a store caught mid-write:
    that poll yields nothing and the next one reads it whole."""

    POLL_RETRY: tuple[type[BaseException], ...] = ()

    def _frames(self) -> tuple[list[Frame], int]:
        raise NotImplementedError

    def _snapshot(self) -> tuple[list[Frame], int]:
        return self._frames()

    def poll(self) -> tuple[list[Frame], int, bool]:
        try:
            frames, skipped = self._frames()
        except self.POLL_RETRY:
            return [], 0, False
        return self._newer(frames), skipped, False


def frames_from_metrics(rows: Iterable[dict[str, Any]],
                        bad: tuple[type[BaseException], ...] = (ValueError, TypeError)) -> tuple[list[Frame], int]:
    """Metric dicts → frames merged by step, and how many rows could not be read as a frame."""
    frames: list[Frame] = []
    skipped = 0
    for d in rows:
        try:
            frames.append(normalize_metrics(d))
        except bad:
            skipped += 1
    return merge_by_step(frames), skipped


