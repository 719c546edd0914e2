"""Datasets for training and evaluation: ``builtin:addition``, a Hub dataset id, or a local .jsonl/.parquet file.

Whatever the source, rows come out with a ``prompt`` column (renamed from ``dataset.prompt_field``) and an
``answer`` column (from ``dataset.answer_field``, when present); other columns pass through to the reward
functions as keyword arguments. The eval split is ``dataset.eval_split`` when set, else a seeded
``eval_fraction`` of the training rows (never both trained and evaluated on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import ConfigError, NetworkError


def _normalise(rows: list[dict[str, Any]], cfg) -> list[dict[str, Any]]:
    pf, af = cfg.dataset.prompt_field, cfg.dataset.answer_field
    out = []
    for i, r in enumerate(rows):
        if pf not in r:
            raise ConfigError(f"dataset row {i} has no {pf!r} field", hint="Set dataset.prompt_field.",
                              context={"fields": sorted(r)[:20], "prompt_field": pf})
        row = {k: v for k, v in r.items() if k not in (pf, af)}
        row["prompt"] = r[pf]
        if af in r:
            row["answer"] = r[af] if isinstance(r[af], str) else str(r[af])
        out.append(row)
    return out


def _load_rows(source: str, split: str, cwd: Path | None) -> list[dict[str, Any]]:
    path = Path(source).expanduser()
    if not path.is_absolute() and cwd is not None:
        path = cwd / path
    if source.endswith((".jsonl", ".json", ".parquet")):
        if not path.is_file():
            raise ConfigError(f"dataset file not found: {path}", context={"path": str(path)})
        import datasets

        kind = "parquet" if source.endswith(".parquet") else "json"
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as exc:  # malformed files
            raise ConfigError(f"cannot read dataset {path}: {type(exc).__name__}: {exc}",
                              hint="Each line must be a JSON object (jsonl) or a parquet table.",
                              context={"path": str(path)}) from None
        return [dict(r) for r in ds]
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except (ConnectionError, OSError) as exc:
        raise NetworkError(f"cannot load dataset {source!r} from the Hub: {exc}",
                           hint="Check the network (or HF_DATASETS_OFFLINE) and the dataset id.",
                           context={"dataset": source}) from None
    except Exception as exc:
        raise ConfigError(f"cannot load dataset {source!r} split {split!r}: {type(exc).__name__}: {exc}",
                          context={"dataset": source, "split": split}) from None
    return [dict(r) for r in ds]


def load_rows(cfg, cwd: Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, eval rows) as plain dicts."""
    src = cfg.dataset.source
    from engine import builtins

    if builtins.is_builtin(src):
        return builtins.load_rows(src, cfg)
    rows = _normalise(_load_rows(src, cfg.dataset.split, cwd), cfg)
    if cfg.dataset.eval_split:
        evals = _normalise(_load_rows(src, cfg.dataset.eval_split, cwd), cfg)
    else:
        import random

        idx = list(range(len(rows)))
        random.Random(cfg.grpo.seed).shuffle(idx)
        n_eval = max(1, int(len(rows) * cfg.dataset.eval_fraction)) if len(rows) > 1 else 0
        evals = [rows[i] for i in idx[:n_eval]]
        rows = [rows[i] for i in idx[n_eval:]]
    if cfg.dataset.max_samples:
        rows = rows[: cfg.dataset.max_samples]
    if not rows:
        raise ConfigError(f"dataset {src!r} has no training rows", context={"source": src})
    return rows, evals


def to_dataset(rows: list[dict[str, Any]], tokenizer: Any = None, fmt: Any = None):
    """The trainer's dataset. With a tokenizer and a :class:`engine.prompts.PromptFormat`, each ``prompt``
    becomes the model's input (chat messages when templated, else the raw text), fitted to
    ``grpo.max_prompt_length`` without cutting the template (engine.prompts.fit)."""
    import datasets

    if tokenizer is not None and fmt is not None:
        from engine.prompts import fit

        rows = [{**r, "prompt": fit(r["prompt"], tokenizer, fmt, row=i)} for i, r in enumerate(rows)]
    return datasets.Dataset.from_list(rows)
