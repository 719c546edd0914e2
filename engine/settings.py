"""Which carl.yaml a reading surface follows: the CARL weights and the prompt format of a run or of the project.

probe (verb, screen, chat/MCP tool), infer and the try panel score with ``rewards.carl.weights`` and render
prompts with ``dataset.chat_template`` / ``dataset.system_prompt`` from, in order:

1. the run's own ``config.yaml`` when a run is named (``--run``, ``run:ID`` in the try panel): a run trained
   with custom weights is scored with them;
2. else the project's carl.yaml (``--config FILE``, else ``./carl.yaml``);
3. else the defaults (weights 0.5 / 0.3 / 0.2, ``chat_template: auto``, no system prompt).

:class:`Settings` says which one was used (``source``). engine.config (pydantic) is imported only when there is
a file to read, so ``carl --batch probe`` without a carl.yaml stays as light as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    weights: dict[str, float]
    chat_template: str = "auto"
    system_prompt: str | None = None
    source: str = "default"  # "run <id>", a carl.yaml path, or "default"
    extract: str = "auto"  # the task's answer extraction (task.rewards[].extract; best-of votes on it)

    def prompt_format(self) -> Any:
        from engine.prompts import PromptFormat

        return PromptFormat(chat_template=self.chat_template, system_prompt=self.system_prompt)

    def as_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "chat_template": self.chat_template,
                "system_prompt": self.system_prompt, "source": self.source}


def default_weights() -> dict[str, float]:
    from engine.probe import DEFAULT_WEIGHTS

    return dict(DEFAULT_WEIGHTS)


def from_config(cfg: Any, source: str) -> Settings:
    extract = next((r.extract for r in cfg.task.rewards if getattr(r, "extract", "auto") != "auto"), "auto")
    return Settings(weights=cfg.rewards.carl.weights.model_dump(), chat_template=cfg.dataset.chat_template,
                    system_prompt=cfg.dataset.system_prompt or None, source=source, extract=extract)


def run_config(run: str, home: Any = None) -> tuple[str, Any]:
    """(run id, validated Config) of a run's ``config.yaml``. Unknown run: ``carl.run.not_found``."""
    from engine.config import read_yaml, validate_dict
    from engine.runs import RunStore

    store = RunStore(home)
    run_id = store.resolve(run)
    path = store.run_dir(run_id) / "config.yaml"
    return run_id, validate_dict(read_yaml(path), source=str(path))


def resolve(*, run: str | None = None, config_path: str | Path | None = None, cwd: Path | None = None,
            home: Any = None) -> Settings:
    """The settings in force (module docstring). A named run whose config cannot be read is an error."""
    if run:
        run_id, cfg = run_config(run, home)
        return from_config(cfg, f"run {run_id}")
    path = Path(config_path).expanduser() if config_path else (cwd or Path.cwd()) / "carl.yaml"
    if config_path is not None and not path.is_absolute() and cwd is not None:
        path = cwd / path
    if config_path is None and not path.is_file():
        return Settings(weights=default_weights())
    from engine.config import read_yaml, validate_dict

    return from_config(validate_dict(read_yaml(path), source=str(path)), str(path))
