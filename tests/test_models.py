"""engine.models: every name a user types resolves one way (runs and their checkpoints without a network call; a
Hub id tried last and failing at once offline), built-ins come from the registry by name, and stop_ids is the
union training stops on. The family matrix (one prompt rendering, one stop set per stage) is in test_families."""

from __future__ import annotations

import json
import socket

import pytest

from carl_tui.batch import main as batch_main
from engine import infer
from engine.errors import ConfigError, NetworkError, RunNotFound, ValidationError
from engine.models import resolve_name, stop_ids
from tests._chat_fixture import build_chat_tokenizer
from tests._tiny_fixture import tiny_cache, tiny_env  # noqa: F401
from tests.test_infer import PROMPT, make_run, tiny  # noqa: F401  (tiny: the fixture)
from tests.test_try_panel import runs  # noqa: F401  (a completed run, a LoRA run, a sharper one)

RUN = "20250101-000000-abcd"


@pytest.fixture
def no_network(monkeypatch):
    """Online as far as carl can tell (HF_HUB_OFFLINE unset), but any connection attempt fails the test."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def run_dir(tiny, _isolated_home):
    d = make_run(_isolated_home / "runs", RUN, checkpoints={2: tiny, 4: tiny})
    return d


def test_run_names_resolve_without_a_network_call(run_dir, no_network):
    ck = run_dir / "checkpoints"
    for name, want in (("RUN/checkpoint-2", ck / "checkpoint-2"), ("RUN@2", ck / "checkpoint-2"),
                       ("run:RUN@2", ck / "checkpoint-2"), ("RUN/checkpoints/checkpoint-2", ck / "checkpoint-2"),
                       ("20250101-000000-ab/checkpoint-4", ck / "checkpoint-4"), ("RUN", ck / "checkpoint-4"),
                       ("run:RUN", ck / "checkpoint-4")):
        ref = resolve_name(name.replace("RUN", RUN))
        assert (ref.model, ref.run_id, ref.source) == (str(want), RUN, "run"), name
        assert infer.parse_spec(name.replace("RUN", RUN)) == ref  # the try panel's model and compare boxes
    assert resolve_name(f"{RUN}/checkpoint-2").label == f"{RUN}/checkpoint-2"  # as pane A labels it
    with pytest.raises(ValidationError, match="no final/"):
        resolve_name(f"{RUN}/final")
    with pytest.raises(ValidationError, match="checkpoint-9") as e:
        resolve_name(f"{RUN}/checkpoint-9")
    assert "checkpoint-2, checkpoint-4" in e.value.hint
    with pytest.raises(RunNotFound):  # a run name that names no run is not taken for a Hub id
        resolve_name("20990101-000000-ffff/checkpoint-3")
    with pytest.raises(ValidationError, match="not found"):
        resolve_name("./no/such/dir")
    assert no_network == []


def test_infer_and_eval_take_run_checkpoint_n_offline(run_dir, no_network, capsys):
    rc = batch_main(["infer", "--model", f"{RUN}/checkpoint-2", "--prompt", PROMPT, "--max-new-tokens", "3",
                     "--greedy", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    out = json.loads(cap.out)
    assert (out["run_id"], out["checkpoint"]) == (RUN, "checkpoint-2") and out["token_ids"]
    rc = batch_main(["eval", "--run", f"{RUN}@2", "--n", "4"])
    cap = capsys.readouterr()
    assert rc in (0, 1), cap.err
    out = json.loads(cap.out)
    assert out["run_id"] == RUN and out["model_path"] == str(run_dir / "checkpoints" / "checkpoint-2")
    assert out["metrics"]["n"] == 4
    assert no_network == []


def test_a_hub_id_fails_at_once_offline_without_a_connection(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NetworkError) as e:
        resolve_name("carl-test/not-cached")
    assert e.value.code == "carl.network" and "HF_HUB_OFFLINE" in e.value.message and e.value.hint
    assert no_network == []


def test_a_hub_id_fails_at_the_first_refused_connection(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    calls: list = []
    real = socket.create_connection

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    with pytest.raises(NetworkError, match=f"127.0.0.1:{port}"):
        infer.parse_spec("carl-test/not-cached")
    assert calls == [("127.0.0.1", port)]  # one try, no retries


def test_a_hub_id_in_the_hub_cache_resolves_offline(monkeypatch, tmp_path, no_network):
    import huggingface_hub.constants as hc

    repo = tmp_path / "hub" / "models--carl-test--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = resolve_name("carl-test/cached")
    assert (ref.model, ref.source) == ("carl-test/cached", "hub")
    assert no_network == []


def test_builtins_come_from_the_registry_by_name(tiny, no_network):
    from engine import builtins

    ref = resolve_name("builtin:tiny")
    assert ref.model == str(tiny) and ref.source == "builtin" and ref.label == "builtin:tiny"
    with pytest.raises(ConfigError, match="builtin:nope") as e:
        resolve_name("builtin:nope")
    assert "builtin:tiny" in e.value.hint and "builtin:agent-sql" in e.value.hint
    assert set(builtins.MODELS) == {"builtin:tiny", "builtin:agent-sql"}
    assert set(builtins.DATASETS) == {"builtin:addition", "builtin:sql-tasks"}


def test_provenance_never_builds_the_demo(tmp_path, monkeypatch):
    from engine.config import validate_dict
    from engine.provenance import model_provenance

    monkeypatch.setenv("CARL_TINY_CACHE", str(tmp_path / "empty-cache"))
    out = model_provenance(validate_dict({}), None)
    assert out["name_or_path"] == "builtin:tiny" and "builtin" not in out
    assert not (tmp_path / "empty-cache").exists()


def test_stop_ids_are_tokenizer_eos_generation_config_and_the_end_of_turn():
    from types import SimpleNamespace

    chat = build_chat_tokenizer()  # its template ends a turn with <|end|>, its eos is <eos>
    end, eos = chat.convert_tokens_to_ids("<|end|>"), chat.eos_token_id
    assert stop_ids(None, chat) == sorted({eos, end})
    plain = build_chat_tokenizer(template=None)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[end, 5]))  # an int or a list
    assert stop_ids(model, plain) == sorted({eos, end, 5})
    model.generation_config.eos_token_id = end
    assert stop_ids(model, plain) == sorted({eos, end})


def test_a_quantized_load_off_cuda_is_a_typed_error(tiny):
    from engine.models import LoadOptions, ModelRef, load_model

    with pytest.raises(ValidationError, match="CUDA") as e:
        load_model(ModelRef(str(tiny)), LoadOptions(device="cpu", quantization="4bit"))
    assert e.value.context["quantization"] == "4bit"


@pytest.mark.anyio
async def test_the_try_panel_compares_with_run_checkpoint_n_offline(runs, tmp_path, no_network):  # noqa: F811
    """The compare box takes the name pane A shows (RUN/checkpoint-N), with no network call."""
    from tests.test_try_panel import BASE, make_app, settle, status

    app = make_app(tmp_path, run=BASE)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("v", "ctrl+u", *f"{BASE}/checkpoint-2", "enter")  # v opens the compare box (c is chat)
        await settle(pilot)
        ref = app.screen.refs[1]
        assert ref is not None and (ref.run_id, ref.checkpoint) == (BASE, "checkpoint-2"), status(app)
        assert "carl." not in status(app)
    assert no_network == []
