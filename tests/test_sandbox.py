"""Security tests for the code sandbox (engine/envs/sandbox.py): each escape is tried for real and must fail.

Limits are set small where the test wants to hit them and wall time generous elsewhere, so a loaded machine
slows the tests down but never changes their outcome.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from engine.envs import sandbox as sb
from engine.envs.sandbox import Sandbox, SandboxError, SandboxLimits
from tests._isolation import needs_isolation



@pytest.fixture
def box(tmp_path):
    s = Sandbox(SandboxLimits(wall_s=60, cpu_s=30))
    yield s
    s.close()


def _procs_with(marker: str) -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{entry.name}: {cmd}")
    return found


# ------------------------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("path", ["../escape.txt", "a/../../escape.txt", "/etc/passwd", "~/x", ""])
def test_path_escapes_are_refused(box, path):
    with pytest.raises(SandboxError) as err:
        box.write_file(path, "x")
    assert err.value.code == "carl.sandbox.path"
    with pytest.raises(SandboxError) as err:
        box.read_file(path)
    assert err.value.code == "carl.sandbox.path"
    assert not (box.root.parent / "escape.txt").exists()


def test_symlinks_out_are_refused(box, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    (box.root / "link_file").symlink_to(outside / "secret.txt")
    (box.root / "link_dir").symlink_to(outside)
    for path in ("link_file", "link_dir/secret.txt"):
        with pytest.raises(SandboxError) as err:
            box.read_file(path)
        assert err.value.code == "carl.sandbox.path"
    with pytest.raises(SandboxError):
        box.write_file("link_dir/new.txt", "x")
    with pytest.raises(SandboxError):
        box.write_file("link_file", "overwritten")
    assert (outside / "secret.txt").read_text() == "top secret"
    assert not (outside / "new.txt").exists()


def test_symlink_inside_is_followed_and_files_round_trip(box):
    assert box.write_file("sub/dir/a.txt", "hello") == 5
    (box.root / "alias").symlink_to(box.root / "sub")
    assert box.read_file("alias/dir/a.txt") == "hello"
    assert box.list_files() == ["sub/dir/a.txt"]
    with pytest.raises(SandboxError) as err:
        box.read_file("missing.txt")
    assert err.value.code == "carl.sandbox.not_found"


@needs_isolation
def test_symlink_made_by_the_code_is_refused(box):
    res = box.run_shell("ln -s /etc/passwd p && echo made")
    assert res.exit_code == 0 and "made" in res.stdout
    with pytest.raises(SandboxError) as err:
        box.read_file("p")
    assert err.value.code == "carl.sandbox.path"


def test_write_size_capped(tmp_path):
    with Sandbox(SandboxLimits(file_bytes=10)) as s:
        with pytest.raises(SandboxError) as err:
            s.write_file("big.txt", "x" * 11)
        assert err.value.code == "carl.sandbox.file_size"


# ------------------------------------------------------------------------------------------------ processes


@needs_isolation
def test_code_runs_and_files_are_shared(box):
    box.write_file("data.txt", "41")
    res = box.run_python("print(int(open('data.txt').read()) + 1)\nopen('out.txt', 'w').write('done')")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == "42"
    assert box.read_file("out.txt") == "done"
    res = box.run_shell("echo to-stderr >&2; exit 3")
    assert res.exit_code == 3 and res.stderr.strip() == "to-stderr"


@needs_isolation
def test_secrets_in_carls_environment_do_not_reach_the_code(box, monkeypatch):
    secret = "hf_" + uuid.uuid4().hex
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("CARL_TEST_SECRET", secret)
    shell = box.run_shell("env; cat /proc/*/environ 2>/dev/null; echo end")
    py = box.run_python("import os\nprint(dict(os.environ))\n"
                        "for p in os.listdir('/proc'):\n"
                        "    try: print(open(f'/proc/{p}/environ').read())\n"
                        "    except Exception: pass\n")
    for res in (shell, py):
        assert res.exit_code == 0, res.stderr
        assert secret not in res.stdout + res.stderr
        assert "CARL_TEST_SECRET" not in res.stdout
    assert "PATH=" in shell.stdout and "end" in shell.stdout


@needs_isolation
def test_new_session_and_own_pid_namespace(box):
    res = box.run_python("import os\nprint(os.getsid(0) == os.getpid() or os.getsid(0), os.getpid())\n"
                         "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    assert res.exit_code == 0, res.stderr
    first, second = res.stdout.splitlines()
    visible = eval(second)
    assert 1 in visible and int(first.split()[1]) in visible  # a fresh PID namespace: its own init is pid 1
    assert len(visible) < 6  # only its own processes are visible, none of the host's


@needs_isolation
def test_sandboxed_code_runs_in_a_session_of_its_own(box):
    # Seen from the host (inside the namespace the session leader is invisible, and the test process itself may
    # run where its own leader is invisible too): every process of a running sandbox has a session id other
    # than the test's, so a signal to the test's session or terminal never reaches it, nor the reverse.
    import threading
    import time

    done = threading.Event()
    worker = threading.Thread(target=lambda: (box.run_python("import time\ntime.sleep(3)\n"), done.set()))
    worker.start()
    try:
        pids: list[int] = []
        deadline = time.monotonic() + 20
        while not pids and time.monotonic() < deadline and not done.is_set():
            pids = [int(line.split(":")[0]) for line in _procs_with(str(box.root))]
            time.sleep(0.05)
        assert pids, "the sandbox's processes never appeared"
        ours = os.getsid(0)
        sessions = set()
        for pid in pids:
            try:
                sessions.add(os.getsid(pid))
            except ProcessLookupError:
                pass
        assert sessions and ours not in sessions
    finally:
        worker.join(timeout=30)


@needs_isolation
def test_infinite_loop_stopped_at_cpu_limit():
    with Sandbox(SandboxLimits(cpu_s=1, wall_s=120)) as s:
        with pytest.raises(SandboxError) as err:
            s.run_python("while True:\n    pass\n")
    assert err.value.code == "carl.sandbox.cpu"
    assert "CPU-time limit (1 s)" in str(err.value)


@needs_isolation
def test_sleeping_loop_stopped_at_wall_time_and_killed():
    marker = f"carl-wall-{uuid.uuid4().hex}"
    with Sandbox(SandboxLimits(wall_s=1.5, cpu_s=30)) as s:
        with pytest.raises(SandboxError) as err:
            s.run_python(f"import time  # {marker}\nwhile True:\n    time.sleep(0.05)\n")
        assert err.value.code == "carl.sandbox.timeout"
        assert not _procs_with(str(s.root))


@needs_isolation
def test_bounded_fork_bomb_stopped_at_process_limit():
    # at most 300 forks, each child just sleeps: bounded, but far over the limit of 16
    code = ("import os, time\n"
            "for i in range(300):\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(60)\n"
            "        os._exit(0)\n"
            "print('all forked')\n")
    with Sandbox(SandboxLimits(max_processes=16, wall_s=120)) as s:
        with pytest.raises(SandboxError) as err:
            s.run_python(code)
        assert err.value.code == "carl.sandbox.processes"
        assert "all forked" not in err.value.context["stdout"]
        assert not _procs_with(str(s.root)), "a forked child outlived the call"


@needs_isolation
def test_shell_fork_bomb_stopped():
    marker = f"carl-shfork-{uuid.uuid4().hex}"
    with Sandbox(SandboxLimits(max_processes=8, wall_s=120)) as s:
        with pytest.raises(SandboxError) as err:
            s.run_shell(f"i=0; while [ $i -lt 200 ]; do sh -c 'sleep 60; : {marker}' & i=$((i+1)); done; echo all")
        assert err.value.code == "carl.sandbox.processes"
        assert not _procs_with(marker), "a background child outlived the call"


@needs_isolation
def test_memory_hog_stopped_at_memory_limit():
    with Sandbox(SandboxLimits(memory_mb=256, wall_s=120)) as s:
        with pytest.raises(SandboxError) as err:
            s.run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))\n")
    assert err.value.code == "carl.sandbox.memory"
    assert "256 MB" in str(err.value)


@needs_isolation
def test_no_network_even_to_a_loopback_port_the_test_opens(box):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        res = box.run_python(
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print('refused', e.errno)\n")
        shell = box.run_shell(f"exec 3<>/dev/tcp/127.0.0.1/{port} 2>&1 || echo nope")  # sh: no /dev/tcp either
        assert res.exit_code == 0, res.stderr
        assert res.stdout.startswith("refused"), res.stdout
        assert "connected" not in res.stdout
        assert "nope" in shell.stdout or shell.exit_code != 0
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the port
    finally:
        server.close()


@needs_isolation
def test_output_capped():
    with Sandbox(SandboxLimits(output_bytes=1000, wall_s=120)) as s:
        res = s.run_python("print('x' * 100000)")
        assert res.truncated
        assert res.stdout.count("x") == 1000
        endless = s.run_shell("yes carl")  # stopped by the cap, not by the wall clock (no timeout error)
        assert endless.truncated and len(endless.stdout) < 1100


@needs_isolation
def test_nothing_left_behind_after_a_normal_exit(box):
    marker = f"carl-orphan-{uuid.uuid4().hex}"
    code = ("import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)  # {marker}'],\n"
            "                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "import os\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    os.execvp('sh', ['sh', '-c', 'sleep 300; : {marker}'])\n"
            "print('started')\n")
    res = box.run_python(code)
    assert res.exit_code == 0 and "started" in res.stdout, res.stderr
    assert not _procs_with(marker)


def test_refuses_without_isolation(monkeypatch, tmp_path):
    monkeypatch.setattr(sb, "isolation", lambda: (None, "namespaces are not available: test"))
    with Sandbox() as s:
        with pytest.raises(SandboxError) as err:
            s.run_shell("echo hi")
    assert err.value.code == "carl.sandbox.unavailable"
    assert str(err.value).startswith("[carl.sandbox.unavailable]")


def test_limits_from_dict():
    assert SandboxLimits.from_dict({"wall_s": 3}).wall_s == 3
    with pytest.raises(SandboxError) as err:
        SandboxLimits.from_dict({"wall": 3})
    assert err.value.code == "carl.sandbox.limits"
    with pytest.raises(SandboxError):
        SandboxLimits.from_dict({"cpu_s": 0})


def test_close_removes_the_directory():
    s = Sandbox()
    s.write_file("a.txt", "x")
    root = s.root
    s.close()
    assert not root.exists()


def test_doctor_reports_the_jail(monkeypatch):
    from engine.doctor import check_sandbox

    backend, how = sb.isolation()
    row = check_sandbox()
    assert row.name == "sandbox"
    assert (row.status == "ok") == (backend is not None) and how in row.detail
    monkeypatch.setattr(sb, "isolation", lambda: (None, "bwrap is not installed; unshare: not allowed"))
    row = check_sandbox()
    assert row.status == "warn" and "refuse" in row.detail and "unshare: not allowed" in row.detail


def test_an_unknown_backend_is_refused_not_ignored(monkeypatch):
    monkeypatch.setenv("CARL_SANDBOX", "chroot")
    backend, how = sb.isolation()
    assert backend is None and "CARL_SANDBOX=chroot" in how
    with Sandbox() as s, pytest.raises(SandboxError) as err:
        s.run_shell("echo hi")
    assert err.value.code == "carl.sandbox.unavailable"
