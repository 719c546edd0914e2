"""engine.config: carl.yaml models, presets, field-path errors, YAML syntax errors, --set overrides, atomic save."""

from __future__ import annotations

import os

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import (PRESETS, Config, apply_overrides, check_dict, describe_error, load_config, parse_set,
                           parse_yaml_text, preset, preset_summaries, read_yaml, save_config, validate_dict)
from engine.errors import ConfigError


def _errors(data):
    cfg, errs = check_dict(data)
    assert cfg is None
    return {e["field"]: e for e in errs}


def test_defaults_are_the_tiny_cpu_demo():
    cfg = Config()
    assert preset("tiny-cpu") == cfg
    assert cfg.model.name_or_path == "builtin:tiny" and cfg.dataset.source == "builtin:addition"
    assert cfg.method == "grpo" and cfg.lora.enabled is False and cfg.rewards.carl.enabled
    w = cfg.rewards.carl.weights
    assert (w.coherence, w.cloud, w.discontinuity) == (0.5, 0.3, 0.2)
    assert cfg.grpo.batch_size % cfg.grpo.num_generations == 0
    assert cfg.eval.phi_min == pytest.approx(3 / 16)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate_and_round_trip(name, tmp_path):
    cfg = preset(name)
    path = save_config(cfg, tmp_path / "carl.yaml")
    assert load_config(path)[0] == cfg
    assert {p["name"] for p in preset_summaries()} == set(PRESETS)


def test_gpu_presets_differ_where_it_matters():
    lora, full = preset("lora-7b"), preset("full-gpu")
    assert lora.lora.enabled and not full.lora.enabled
    assert lora.compute.device == full.compute.device == "cuda" and full.compute.gpus > 1


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        preset("huge")
    assert exc.value.exit_code == 2 and "tiny-cpu" in exc.value.hint


def test_every_section_forbids_unknown_keys_and_names_the_key():
    for section in ("project", "model", "dataset", "task", "grpo", "lora", "cascade", "compute", "eval",
                    "tracking", "budget"):
        errs = _errors({section: {"no_such_field": 1}})
        err = errs[f"{section}.no_such_field"]
        assert "unknown key 'no_such_field'" in err["message"] and err["allowed"]
    errs = _errors({"rewards": {"carl": {"weights": {"coherense": 1}}}})
    assert "did you mean 'coherence'" in errs["rewards.carl.weights.coherense"]["message"]
    assert "toplevel" in _errors({"toplevel": 1})


def test_errors_name_field_path_and_offending_value():
    err = _errors({"grpo": {"batch_size": 30}})["grpo.batch_size"]
    assert err["value"] == 30 and "num_generations (8)" in err["message"]
    assert describe_error(err).endswith("(got 30)")
    with pytest.raises(ConfigError) as exc:
        validate_dict({"grpo": {"batch_size": 30}})
    assert exc.value.message == "carl.yaml: grpo.batch_size: must be a multiple of num_generations (8) (got 30)"
    assert exc.value.exit_code == 2 and exc.value.context["errors"][0]["field"] == "grpo.batch_size"


def test_all_field_errors_are_listed():
    errs = _errors({"grpo": {"max_steps": 0, "learning_rate": "fast"}, "lora": {"r": -1},
                    "cascade": {"mode": "sometimes"}, "task": {"rewards": [{"kind": "regex"}]}})
    assert set(errs) == {"grpo.max_steps", "grpo.learning_rate", "lora.r", "cascade.mode",
                         "task.rewards[0].pattern"}
    assert errs["grpo.learning_rate"]["value"] == "fast"
    assert errs["cascade.mode"]["value"] == "sometimes"


def test_cross_field_checks_blame_a_field():
    assert "cascade.min_above" in _errors({"cascade": {"window": 2, "min_above": 3}})
    assert "eval.discontinuity_min" in _errors({"eval": {"discontinuity_min": 0.9, "discontinuity_max": 0.1}})
    assert "task.rewards[0].function" in _errors({"task": {"rewards": [{"kind": "python", "function": "x"}]}})
    assert "rewards.carl.weights.coherence" in _errors(
        {"rewards": {"carl": {"weights": {"coherence": 0, "cloud": 0, "discontinuity": 0}}}})


def test_union_errors_merge_into_one_entry():
    errs = _errors({"lora": {"target_modules": 5}})
    assert list(errs) == ["lora.target_modules"]


def test_yaml_syntax_errors_name_line_and_column(tmp_path):
    p = tmp_path / "carl.yaml"
    p.write_text("project:\n  name: x\ngrpo:\n  max_steps: [1, 2\n  lr: 3\n")
    with pytest.raises(ConfigError) as exc:
        read_yaml(p)
    assert exc.value.code == "carl.config" and "line 5" in exc.value.message
    assert exc.value.context["line"] == 5 and exc.value.context["column"] >= 1
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_yaml_text("- a\n- b\n")
    assert parse_yaml_text("") == {}


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_load_without_file_is_the_demo(tmp_path):
    cfg, found = load_config(cwd=tmp_path)
    assert found is None and cfg == Config()
    (tmp_path / "carl.yaml").write_text("project: {name: here}\n")
    cfg, found = load_config(cwd=tmp_path)
    assert found == tmp_path / "carl.yaml" and cfg.project.name == "here"


@pytest.mark.parametrize("expr, path, value", [
    ("grpo.max_steps=5", ["grpo", "max_steps"], 5),
    ("grpo.learning_rate=1e-5", ["grpo", "learning_rate"], 1e-5),
    ("grpo.learning_rate=3.0e-4", ["grpo", "learning_rate"], 3e-4),
    ("lora.enabled=true", ["lora", "enabled"], True),
    ("model.tokenizer=null", ["model", "tokenizer"], None),
    ("project.name=my run", ["project", "name"], "my run"),
    ("project.name='007'", ["project", "name"], "007"),
    ("lora.target_modules=[q_proj, v_proj]", ["lora", "target_modules"], ["q_proj", "v_proj"]),
    ("task.rewards[0].weight=2", ["task", "rewards", 0, "weight"], 2),
    ("model.name_or_path=a=b", ["model", "name_or_path"], "a=b"),
])
def test_parse_set(expr, path, value):
    assert parse_set(expr) == (path, value)


def test_overrides_apply_and_validate(tmp_path):
    p = tmp_path / "carl.yaml"
    save_config(preset("tiny-cpu"), p)
    cfg, _ = load_config(p, ["grpo.max_steps=7", "lora.enabled=true", "task.rewards.0.weight=2.5"])
    assert cfg.grpo.max_steps == 7 and cfg.lora.enabled and cfg.task.rewards[0].weight == 2.5
    with pytest.raises(ConfigError) as exc:
        load_config(p, ["grpo.max_steps=abc"])
    assert exc.value.context["errors"][0] == {"field": "grpo.max_steps", "value": "abc",
                                              "message": exc.value.context["errors"][0]["message"]}
    assert "grpo.max_steps" in exc.value.message and "'abc'" in exc.value.message
    with pytest.raises(ConfigError, match="unknown key 'max_stepz'"):
        load_config(p, ["grpo.max_stepz=3"])


@pytest.mark.parametrize("bad", ["noequals", "=5", "grpo.max_steps.x=1", "task.rewards.5.weight=1",
                                 "project.0=1"])
def test_bad_overrides_are_config_errors(bad):
    with pytest.raises(ConfigError):
        apply_overrides(Config().model_dump(mode="json"), [bad])


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    p = tmp_path / "carl.yaml"
    save_config(preset("lora-7b"), p)
    save_config(preset("full-gpu"), p)
    assert sorted(os.listdir(tmp_path)) == ["carl.yaml"]
    assert yaml.safe_load(p.read_text())["project"]["name"] == "carl-full"


def test_save_into_missing_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot write"):
        save_config(Config(), tmp_path / "missing" / "carl.yaml")


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(1, 10_000), gens=st.integers(2, 16), mult=st.integers(1, 8),
       lr=st.floats(1e-8, 0.5, allow_nan=False), name=st.text(st.characters(blacklist_categories=("Cs", "Cc")),
                                                             min_size=1, max_size=30).filter(str.strip))
def test_any_valid_config_round_trips_through_yaml(steps, gens, mult, lr, name):
    data = {"project": {"name": name}, "grpo": {"max_steps": steps, "num_generations": gens,
                                                "batch_size": gens * mult, "learning_rate": lr}}
    cfg = validate_dict(data)
    assert validate_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_bare_yaml_off_is_the_cascade_mode_off():
    import yaml

    from engine.config import validate_dict

    assert validate_dict(yaml.safe_load("cascade:\n  mode: off\n")).cascade.mode == "off"
    assert validate_dict({}).cascade.mode == "evidence"
