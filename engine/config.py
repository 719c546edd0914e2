"""carl.yaml: pydantic models (``extra="forbid"``), presets, loading, ``--set`` overrides.

Every section has defaults, so ``Config()`` is the built-in tiny CPU demo. Errors name the field path and the
offending value (``carl.config``, exit 2).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from engine.errors import ConfigError

CONFIG_FILENAME = "carl.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProjectSection(_Model):
    name: str = Field("carl-demo", min_length=1, description="Project name (also the trackio project).")
    description: str = ""


class ModelSection(_Model):
    name_or_path: str = Field("builtin:tiny", description="Hub id, local path, or builtin:tiny (the demo model).")
    tokenizer: str | None = Field(None, description="Tokenizer id/path when it differs from the model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False


class DatasetSection(_Model):
    source: str = Field("builtin:addition", description="builtin:addition, a Hub dataset id, or a .jsonl/.parquet path.")
    split: str = "train"
    eval_split: str | None = None
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    max_samples: int | None = Field(None, ge=1)
    eval_fraction: float = Field(0.1, gt=0, lt=1)


class TaskReward(_Model):
    kind: Literal["exact", "numeric", "regex", "tool_json", "concise", "python"] = "exact"
    weight: float = 1.0
    pattern: str | None = Field(None, description="regex for kind=regex")
    tolerance: float = Field(1e-6, ge=0, description="absolute tolerance for kind=numeric")
    target_length: int = Field(32, ge=1, description="token budget for kind=concise")
    function: str | None = Field(None, description="module:function for kind=python")

    @model_validator(mode="after")
    def _needs(self) -> "TaskReward":
        if self.kind == "regex" and not self.pattern:
            raise ValueError("kind=regex needs a pattern")
        if self.kind == "python" and (not self.function or ":" not in self.function):
            raise ValueError("kind=python needs function: 'module:function'")
        return self


class TaskSection(_Model):
    rewards: list[TaskReward] = Field(default_factory=lambda: [TaskReward(kind="exact")], min_length=1)
    metric: str | None = Field(None, description="the task reward the cascade gate watches (default: the first)")


class GRPOSection(_Model):
    max_steps: int = Field(60, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(32, ge=1, description="completions per step; must divide by num_generations")
    num_generations: int = Field(8, ge=2)
    max_prompt_length: int = Field(32, ge=1)
    max_completion_length: int = Field(8, ge=1)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0, description="KL coefficient")
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(20, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _divisible(self) -> "GRPOSection":
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size ({self.batch_size}) must divide by num_generations ({self.num_generations})")
        return self


class LoraSection(_Model):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class CarlWeights(_Model):
    coherence: float = Field(0.5, ge=0)
    cloud: float = Field(0.3, ge=0)
    discontinuity: float = Field(0.2, ge=0)


class CarlRewardSection(_Model):
    enabled: bool = True
    weight: float = Field(1.0, ge=0, description="weight of the CARL reward next to the task rewards (stage B)")
    weights: CarlWeights = Field(default_factory=CarlWeights)


class RewardsSection(_Model):
    carl: CarlRewardSection = Field(default_factory=CarlRewardSection)


class CascadeSection(_Model):
    mode: Literal["metric", "fixed", "crystallization", "evidence", "percentile", "off"] = "metric"
    fixed_step: int = Field(10, ge=0)
    percentile: float = Field(0.6, gt=0, lt=1)
    min_steps: int = Field(5, ge=1)
    window: int = Field(5, ge=1)
    min_above: int = Field(3, ge=1)
    warmup_steps: int = Field(10, ge=0)
    crystallization_threshold: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _window(self) -> "CascadeSection":
        if self.min_above > self.window:
            raise ValueError(f"min_above ({self.min_above}) cannot exceed window ({self.window})")
        return self


class ComputeSection(_Model):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    gpus: int = Field(1, ge=0)
    vllm: Literal["off", "colocate", "server"] = "off"
    gradient_checkpointing: bool = False


class EvalSection(_Model):
    threshold: float = Field(0.5, ge=0, le=1, description="task metric needed to pass")
    n_samples: int = Field(64, ge=1)
    phi_min: float = Field(3 / 16, ge=0, le=1, description="phi_mean needed to pass (SIGMA)")
    discontinuity_min: float = Field(0.3, ge=0, le=1)
    discontinuity_max: float = Field(0.7, ge=0, le=1)
    push_to: str | None = Field(None, description="Hub repo id to push to after a pass (--push)")


class TrackingSection(_Model):
    trackio: bool = True
    project: str | None = Field(None, description="trackio project (default: project.name)")


class BudgetSection(_Model):
    max_usd_per_job: float = Field(10.0, ge=0)
    max_usd_per_day: float = Field(25.0, ge=0)
    max_hours: float = Field(2.0, gt=0)


class Config(_Model):
    """The whole carl.yaml."""

    version: Literal[1] = 1
    project: ProjectSection = Field(default_factory=ProjectSection)
    model: ModelSection = Field(default_factory=ModelSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    task: TaskSection = Field(default_factory=TaskSection)
    method: Literal["grpo"] = "grpo"
    grpo: GRPOSection = Field(default_factory=GRPOSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    rewards: RewardsSection = Field(default_factory=RewardsSection)
    cascade: CascadeSection = Field(default_factory=CascadeSection)
    compute: ComputeSection = Field(default_factory=ComputeSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    budget: BudgetSection = Field(default_factory=BudgetSection)
    # Sections owned by later issues are plain dicts validated by their own modules until they land.
    policy: dict[str, Any] = Field(default_factory=dict)
    remote: dict[str, Any] = Field(default_factory=dict)
    chat: dict[str, Any] = Field(default_factory=dict)

    @field_validator("policy", "remote", "chat")
    @classmethod
    def _mapping(cls, v: Any) -> Any:
        return v or {}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------------------------- presets
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-cpu": {
        "project": {"name": "carl-demo", "description": "Built-in demo: tiny local model, 2-digit addition, CPU."},
    },
    "lora-7b": {
        "project": {"name": "carl-lora-7b", "description": "LoRA GRPO on a 7B instruct model (one 24-80 GB GPU)."},
        "model": {"name_or_path": "Qwen/Qwen2.5-7B-Instruct", "dtype": "bfloat16"},
        "dataset": {"source": "openai/gsm8k", "split": "train", "prompt_field": "question", "answer_field": "answer"},
        "task": {"rewards": [{"kind": "numeric", "tolerance": 1e-6}]},
        "grpo": {"max_steps": 500, "learning_rate": 1e-5, "batch_size": 16, "num_generations": 8,
                 "max_prompt_length": 512, "max_completion_length": 512, "logging_steps": 5, "save_steps": 100},
        "lora": {"enabled": True, "r": 16, "alpha": 32},
        "compute": {"device": "cuda", "gpus": 1, "gradient_checkpointing": True},
    },
    "full-gpu": {
        "project": {"name": "carl-full", "description": "Full fine-tune of a small model on several GPUs."},
        "model": {"name_or_path": "Qwen/Qwen2.5-1.5B-Instruct", "dtype": "bfloat16"},
        "dataset": {"source": "openai/gsm8k", "split": "train", "prompt_field": "question", "answer_field": "answer"},
        "task": {"rewards": [{"kind": "numeric", "tolerance": 1e-6}]},
        "grpo": {"max_steps": 1000, "learning_rate": 1e-6, "batch_size": 64, "num_generations": 8,
                 "max_prompt_length": 512, "max_completion_length": 1024, "logging_steps": 5, "save_steps": 200},
        "compute": {"device": "cuda", "gpus": 4, "gradient_checkpointing": True},
    },
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", hint=f"Presets: {', '.join(PRESETS)}.",
                          context={"preset": name, "presets": list(PRESETS)})
    return Config.model_validate(copy.deepcopy(PRESETS[name]))


# --------------------------------------------------------------------------------------------- loading
def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def field_errors(exc: PydanticValidationError) -> list[dict[str, Any]]:
    """pydantic errors as ``[{"field": "grpo.batch_size", "value": …, "message": …}]``."""
    errs = []
    for e in exc.errors():
        loc = tuple(p for p in e.get("loc", ()) if p not in ("function-after[_needs()]",))
        msg = e.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        value = e.get("input")
        if isinstance(value, dict):
            value = None if e.get("type") != "extra_forbidden" else value
        errs.append({"field": _format_loc(loc) or "(root)", "value": value, "message": msg})
    return errs


def validate_dict(data: Any, *, source: str = "carl.yaml") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}",
                          context={"source": source})
    try:
        return Config.model_validate(data)
    except PydanticValidationError as exc:
        errs = field_errors(exc)
        first = errs[0]
        shown = "" if first["value"] is None else f" (got {first['value']!r})"
        more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        raise ConfigError(f"{source}: {first['field']}: {first['message']}{shown}{more}",
                          hint="Fix the named field(s); `carl --batch project validate` lists them all.",
                          context={"source": source, "errors": errs}) from None


def parse_set(expr: str) -> tuple[list[str], Any]:
    """``"grpo.max_steps=5"`` → (["grpo", "max_steps"], 5). Values are parsed as YAML scalars/lists."""
    if "=" not in expr:
        raise ConfigError(f"--set {expr!r}: expected key.path=value", hint="Example: --set grpo.max_steps=20",
                          context={"set": expr})
    key, raw = expr.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {expr!r}: empty key", hint="Example: --set grpo.max_steps=20", context={"set": expr})
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for expr in sets or []:
        path, value = parse_set(expr)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {expr!r}: {part} is not a section", context={"set": expr})
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", hint="Create one with `carl --batch project init`.",
                          context={"path": str(path)}) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", context={"path": str(path)}) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}", hint="Fix the YAML syntax.",
                          context={"path": str(path)}) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping", context={"path": str(path)})
    return data


def find_config(explicit: str | Path | None = None, cwd: Path | None = None) -> Path | None:
    """The config in force: ``--config`` if given, else ``./carl.yaml`` if present, else None (the demo)."""
    if explicit is not None:
        return Path(explicit)
    here = (cwd or Path.cwd()) / CONFIG_FILENAME
    return here if here.is_file() else None


def load_config(path: str | Path | None = None, sets: list[str] | None = None, *,
                cwd: Path | None = None) -> tuple[Config, Path | None]:
    """Load (config path or ./carl.yaml or the tiny demo), apply ``--set`` overrides, validate."""
    found = find_config(path, cwd)
    data = read_yaml(found) if found else {}
    data = apply_overrides(data, sets)
    return validate_dict(data, source=str(found) if found else "tiny-cpu preset"), found


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half a carl.yaml."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(cfg.to_yaml(), encoding="utf-8")
    tmp.replace(path)
    return path
