"""engine.remote.ship: carl's own wheel for a job — content-hashed, cached, built without touching the source
tree, uploaded once to a private Hub repo, and the install steps for each `remote.ship` mode."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from engine.config import validate_dict
from engine.errors import ConfigError
from engine.remote import ship
from engine.remote.config import remote_settings


def tree(root: Path) -> Path:
    (root / "engine").mkdir(parents=True)
    for pkg in ("carl_tui", "screens"):
        (root / pkg).mkdir()
        (root / pkg / "__init__.py").write_text("", encoding="utf-8")
    (root / "pyproject.toml").write_text("[project]\nname='x'\n", encoding="utf-8")
    (root / "engine" / "a.py").write_text("A = 1\n", encoding="utf-8")
    return root


def test_content_hash_covers_paths_and_bytes_not_caches(tmp_path):
    root = tree(tmp_path / "src")
    h = ship.content_hash(root)
    assert h == ship.content_hash(root) and len(h) == 16
    (root / "engine" / "__pycache__").mkdir()
    (root / "engine" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0junk")
    assert ship.content_hash(root) == h, "bytecode caches are not part of the source"
    (root / "engine" / "a.py").write_text("A = 2\n", encoding="utf-8")
    h2 = ship.content_hash(root)
    assert h2 != h
    (root / "engine" / "a.py").rename(root / "engine" / "b.py")
    assert ship.content_hash(root) not in (h, h2), "a renamed file changes the hash"


def test_the_wheel_is_built_once_per_source_and_leaves_the_tree_clean():
    root = ship.source_root()
    assert root is not None, "tests run from a source tree"
    before = {p.name for p in root.iterdir()}
    w1 = ship.build_wheel()
    w2 = ship.build_wheel()
    assert w2.cached and w2.path == w1.path and w1.sha == ship.content_hash(root)
    assert {p.name for p in root.iterdir()} == before, "no build/ or *.egg-info written into the source tree"
    with zipfile.ZipFile(w1.path) as z:
        names = set(z.namelist())
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "carl = carl_tui.cli:main" in z.read(entry).decode()
    assert {"engine/remote/ship.py", "carl_tui/cli.py", "screens/jobs.py"} <= names
    assert any(n.startswith("carl_tui/styles/") and n.endswith(".tcss") for n in names)
    assert w1.path_in_repo == f"wheels/{w1.sha}/{w1.filename}"


def test_the_wheel_goes_to_a_private_repo_once(hub):
    w = ship.build_wheel()
    rev1, up1 = ship.upload_wheel(w, "alice/carl-wheels", endpoint=hub.url, token=hub.token)
    rev2, up2 = ship.upload_wheel(w, "alice/carl-wheels", endpoint=hub.url, token=hub.token)
    repo = hub.repos["alice/carl-wheels"]
    assert up1 and not up2 and rev1 == rev2 == repo.sha and repo.private
    assert repo.files[w.path_in_repo] == w.path.read_bytes()
    assert len(hub.calls("POST", r"/api/models/alice/carl-wheels/commit/main")) == 1


def test_install_steps_per_mode(hub):
    rs = remote_settings({"ship": "pypi"})
    s = ship.plan_shipment("hf", rs, namespace="alice", endpoint=hub.url, token=hub.token, upload=True)
    assert s.mode == "pypi" and s.steps == [
        "python -m pip install --quiet --disable-pip-version-check carl-workbench==0.1.0"]
    assert ship.plan_shipment("hf", remote_settings({"ship": "none"}), namespace="alice", endpoint=hub.url,
                              token=None, upload=True).steps == []
    s = ship.plan_shipment("hf", remote_settings({}), namespace="alice", endpoint=hub.url, token=hub.token,
                           upload=True)
    assert s.mode == "wheel" and s.uploaded and s.wheel_revision == hub.repos["alice/carl-wheels"].sha
    assert s.steps[0].startswith("python -m pip install") and "huggingface_hub" in s.steps[0]
    assert "hf_hub_download" in s.steps[1] and s.wheel_path in s.steps[2]
    custom = remote_settings({"hf": {"wheel_repo": "team/wheels"}})
    assert ship.plan_shipment("hf", custom, namespace=None, endpoint=hub.url, token=hub.token,
                              upload=False).wheel_repo == "team/wheels"


def test_a_backend_without_an_hf_token_gets_the_published_version_or_a_clear_error():
    rs = remote_settings({})
    assert ship.plan_shipment("runpod", rs, namespace=None, endpoint="", token=None, upload=False).mode == "pypi"
    assert ship.plan_shipment("runpod", remote_settings({"runpod": {"hf_token_secret": "hf"}}), namespace="a",
                              endpoint="", token=None, upload=False).mode == "wheel"
    with pytest.raises(ConfigError) as ei:
        ship.plan_shipment("managed", remote_settings({"ship": "wheel"}), namespace=None, endpoint="", token=None,
                           upload=False)
    assert ei.value.context["field"] == "remote.managed.send_hf_token"


def test_output_repo_on_a_backend_whose_job_has_no_hf_token_is_refused(pods):
    from engine.remote.jobs import submit_job

    cfg = validate_dict({"train": {"output_repo": "alice/out"}, "remote": {"ship": "none"}})
    with pytest.raises(ConfigError) as ei:
        submit_job(cfg, "runpod", approve=True)
    assert ei.value.context["field"] == "remote.runpod.hf_token_secret" and pods.requests == []


def _install_part(script: str) -> str:
    """The script's steps before it writes the config and starts training: remote.setup + installing carl."""
    return script.split(' && printf "%s" "$CARL_CONFIG_YAML"')[0]


@pytest.mark.slow
def test_a_runpod_pod_installs_the_shipped_wheel_in_a_clean_environment(hub, pods, tmp_path, capsys):
    """RunPod: the wheel goes to the user's private Hub repo at submit (as for HF Jobs); the pod reads it with
    the HF token RunPod puts in its env from the secret `remote.runpod.hf_token_secret`. The pod's own start
    command, run up to the training in a venv that has carl's dependencies but not carl, installs carl."""
    import subprocess

    from tests._job_container import LocalContainer, make_deps_venv
    from tests.test_jobs_cli import carl, write_config

    cfg = write_config(tmp_path, {"default_backend": "runpod",
                                  "runpod": {"base_url": f"{pods.url}/v1", "hf_token_secret": "hf_read"}})
    code, out, err = carl(capsys, "jobs", "submit", "--config", str(cfg), "--approve")
    assert code == 0, err
    assert out[0]["ship"] == "wheel"
    (pod,) = pods.pods.values()
    assert pod["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_hf_read }}" and pod["env"]["HF_ENDPOINT"] == hub.url
    wheels = hub.repos["alice/carl-wheels"]
    (path,) = wheels.files
    script = pod["dockerStartCmd"][-1]
    assert pod["dockerStartCmd"][:2] == ["sh", "-c"] and f"alice/carl-wheels {path} {wheels.sha}" in script

    venv = make_deps_venv(tmp_path / "pod")
    box = LocalContainer(venv, tmp_path / "pods")
    env = {**box.env(pod["id"]), **{k: v for k, v in pod["env"].items() if k.startswith(("CARL_", "HF_"))},
           "HF_TOKEN": hub.token}  # what RunPod resolves the secret reference to
    check = "python -c 'import engine.remote.ship, carl_tui.cli' && carl --batch --help >/dev/null"
    proc = subprocess.run(["sh", "-c", f"{_install_part(script)} && {check}"], env=env, cwd=box.workdir(pod["id"]),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert any(p.name.startswith("carl_workbench-") for p in site.iterdir()), "carl was installed into the pod"


def test_managed_runs_the_same_install_with_the_token_in_its_secrets(managed, tmp_path, capsys):
    from tests.test_jobs_cli import carl, write_config

    cfg = write_config(tmp_path, {"default_backend": "managed", "hf": {"namespace": "alice"},
                                  "prices": {"managed:gpu-1x": 2.0},
                                  "managed": {"url": f"{managed.url}/api", "send_hf_token": True}})
    code, out, err = carl(capsys, "jobs", "submit", "--config", str(cfg), "--dry-run")
    assert code == 0, err
    body, ship = out[0]["request"]["json"], out[0]["shipment"]
    assert body["command"] == ["sh", "-c", out[0]["setup_script"]] and body["secrets"] == {"HF_TOKEN": "***"}
    assert ship["mode"] == "wheel" and ship["wheel_repo"] == "alice/carl-wheels"
    install = _install_part(out[0]["setup_script"])
    assert install == " && ".join(ship["steps"]) and f"alice/carl-wheels {ship['wheel_path']} main" in install
    assert managed.requests == [], "a dry run sends nothing"
