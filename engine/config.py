"""carl.yaml: pydantic models (``extra="forbid"``), presets, loading, ``--set`` overrides.

Every section has defaults, so ``Config()`` is the built-in tiny CPU demo. Errors name the field path and the
offending value (``carl.config``, exit 2). The code lives in three modules along the file's own sections —
engine/config_schema.py (the sections and ``Config``), engine/config_presets.py, engine/config_files.py (reading,
validation errors, overrides) — and this module is their one import path.
"""

from __future__ import annotations

from engine.config_schema import (  # noqa: F401
    CONFIG_FILENAME,
    _Model,
    FieldValueError,
    ProjectSection,
    ModelSection,
    DatasetSection,
    TaskReward,
    TaskSection,
    GRPOSection,
    LoraSection,
    CarlWeights,
    CarlRewardSection,
    RewardsSection,
    CascadeSection,
    ComputeSection,
    EvalSection,
    TrackingSection,
    AlertsSection,
    BudgetSection,
    TrainSection,
    STAGES,
    PipelineSFT,
    PipelineGate,
    PipelineSection,
    Config,
)
from engine.config_presets import (  # noqa: F401
    PRESET_DESCRIPTIONS,
    MATH_SYSTEM_PROMPT,
    PRESETS,
    preset_summaries,
    preset,
)
from engine.config_files import (  # noqa: F401
    _format_loc,
    _is_type_tag,
    _model_at,
    _short,
    field_errors,
    describe_error,
    check_dict,
    validate_dict,
    _split_key,
    parse_set,
    apply_overrides,
    parse_yaml_text,
    read_yaml,
    find_config,
    load_config,
    add_config_arguments,
    save_config,
    config_hash,
    changed_fields,
    validate_section,
)
