"""Console logs as a source: what ``python train.py | tee train.log`` keeps of an HF Trainer / TRL run, and verl's
console logger.

- HF Trainer / TRL print one Python dict per logging step (``{'loss': 0.01, 'reward': 0.5, …}``) among tqdm bars,
  warnings and ANSI colour codes. Values come as numbers, as strings (``'reward': '0.25'``: recent transformers
  format them), as ``nan``/``inf`` or as ``tensor(0.5, device='cuda:0')``. The dict seldom says its step: the
  step is the training bar's counter printed before it (``  5%|▌ | 5/100 [00:34<…]``: a bar without a label, so
  not ``Map:`` or ``Loading checkpoint shards:``), else the dict's position (1, 2, …). Eval dicts (``eval_*``
  keys) take the step of the train dict before them; the final ``{'train_runtime': …}`` summary is not a frame.
- verl's console logger prints ``step:12 - actor/entropy:0.61 - critic/score/mean:0.4 …`` lines.

Everything else (tracebacks, prompts, progress bars) is skipped without counting as malformed: a console log is
mostly not metrics. A dict that starts like a metric dict but does not parse is counted in ``skipped``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.errors import ValidationError
from engine.frames import Frame, JsonlTail
from engine.observe.sources.base import Source, frames_from_metrics

ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")
# a tqdm bar with no label in front: at a line start (after \r or \n) or right after another bar's "]"
BAR = re.compile(rb"(?:^|[\r\n]|\]\s{0,8})\s{0,4}\d{1,3}%\|[^|\r\n]{0,80}\|\s*(\d+)/(\d+)\s*\[")
DICT_START = re.compile(rb"\{'")
PAIR = re.compile(
    r"""'((?:[^'\\]|\\.)+)'\s*:\s*(?:'([^']*)'|"([^"]*)"|tensor\(\s*([^,)]+)[^)]*\)|"""
    r"""(-?(?:nan|inf|Infinity|NaN)|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(None|True|False))""")
VERL_LINE = re.compile(rb"(?:^|[\r\n])(?:\([^)\r\n]*\)\s*)?step:(\d+) - ([^\r\n]+)")  # Ray prefixes "(pid=…) "
VERL_PAIR = re.compile(r"([\w/@.\-]+):([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|-?nan|-?inf)(?= - |$)")
METRIC_HINTS = ("loss", "reward", "learning_rate", "grad_norm", "kl", "entropy", "epoch")
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")


def _value(m: re.Match[str]) -> Any:
    s1, s2, tensor, num, const = m.group(2, 3, 4, 5, 6)
    raw = s1 if s1 is not None else s2 if s2 is not None else tensor if tensor is not None else num
    if raw is None:
        return None if const == "None" else const == "True"
    try:
        return float(raw)
    except ValueError:
        return raw


def parse_dict(text: str) -> dict[str, Any] | None:
    """The ``'key': value`` pairs of one printed dict (None when it holds no metric-like pair)."""
    d = {m.group(1): _value(m) for m in PAIR.finditer(text)}
    return d or None


def looks_like_console(head: bytes) -> bool:
    """Does this start of a file hold a printed Trainer metric dict or a verl console line?"""
    head = ANSI.sub(b"", head)
    if VERL_LINE.search(head):
        return True
    for m in DICT_START.finditer(head):
        chunk = head[m.start():m.start() + 400].decode("utf-8", "replace")
        if any(f"'{k}'" in chunk for k in METRIC_HINTS):
            return True
    return False


class ConsoleParser:
    """Incremental: feed complete text (ending at a newline) with :meth:`feed`; keeps the bar/ordinal state."""

    def __init__(self) -> None:
        self.bar_step: int | None = None
        self.ordinal = 0
        self.last_step: int | None = None

    def _step_for(self, d: dict[str, Any]) -> int:
        for k in ("step", "global_step"):
            v = d.get(k)
            if isinstance(v, float) and v.is_integer():
                return int(v)
        is_eval = any(k.startswith("eval_") for k in d)
        if is_eval and self.last_step is not None:
            return self.last_step
        self.ordinal += 1
        step = self.ordinal if self.bar_step is None else self.bar_step
        if self.last_step is not None and step <= self.last_step and not is_eval:
            step = self.last_step + 1  # a bar that lagged behind (tqdm redraws at most every 0.1 s)
        return step

    def feed(self, data: bytes) -> tuple[list[dict[str, Any]], int]:
        data = ANSI.sub(b"", data)
        rows: list[dict[str, Any]] = []
        skipped = 0
        events: list[tuple[int, str, Any]] = []
        for m in BAR.finditer(data):
            events.append((m.end(), "bar", int(m.group(1))))
        for m in DICT_START.finditer(data):
            end = data.find(b"}", m.start())
            if end < 0:
                skipped += 1
                continue
            events.append((m.start(), "dict", data[m.start():end + 1]))
        for m in VERL_LINE.finditer(data):
            events.append((m.start(), "verl", m))
        events.sort(key=lambda e: e[0])
        for _, kind, payload in events:
            if kind == "bar":
                self.bar_step = payload
            elif kind == "verl":
                d: dict[str, Any] = {"step": int(payload.group(1))}
                for pm in VERL_PAIR.finditer(payload.group(2).decode("utf-8", "replace").rstrip()):
                    d[pm.group(1)] = float(pm.group(2))
                rows.append(d)
                self.last_step = d["step"]
            else:
                text = payload.decode("utf-8", "replace")
                d = parse_dict(text)
                if d is None:
                    if any(f"'{k}'" in text for k in METRIC_HINTS):
                        skipped += 1
                    continue
                if not any(isinstance(v, float) for v in d.values()):
                    continue  # a printed prompt / message dict, not metrics
                if any(k in d for k in SUMMARY_KEYS):
                    continue
                if not any(k in d for k in METRIC_HINTS) and not any(k.startswith(("eval_", "rewards/")) for k in d):
                    continue
                d = {k: v for k, v in d.items() if isinstance(v, float)}
                d["step"] = self._step_for(d)
                self.last_step = d["step"]
                rows.append(d)
        return rows, skipped


class ConsoleLogSource(Source):
    """A console log (tee'd stdout of HF Trainer / TRL, or verl's console logger); follows growth."""

    kind = "console"
    reader = "console"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.label = str(path)
        self.run = self.path.stem.split(".")[0]
        self._tail = JsonlTail(self.path)
        self._parser = ConsoleParser()

    def _frames(self, lines: list[bytes]) -> tuple[list[Frame], int]:
        if not lines:
            return [], 0
        rows, skipped = self._parser.feed(b"\n".join(lines) + b"\n")
        frames, bad = frames_from_metrics(rows)
        return frames, skipped + bad

    def load(self) -> tuple[list[Frame], int]:
        try:
            lines, _ = self._tail.poll()
        except OSError as exc:
            raise ValidationError(f"cannot read {self.path}: {exc.strerror}", hint="Check the path and permissions.",
                                  context={"path": str(self.path)}) from exc
        pending = self._tail.pending
        if pending.rstrip().endswith(b"}"):  # a last dict without its newline (a run still printing, or killed)
            lines = lines + [pending]
            self._tail._partial = b""
        frames, skipped = self._frames(lines)
        self._last_step = frames[-1].step if frames else None
        return frames, skipped

    def poll(self) -> tuple[list[Frame], int, bool]:
        lines, reset = self._tail.poll()
        if reset:
            self._parser = ConsoleParser()
        frames, skipped = self._frames(lines)
        return frames, skipped, reset
