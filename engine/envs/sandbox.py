"""The code sandbox: a throwaway directory and a confined child process for model-written code.

What it guarantees (tests/test_sandbox.py checks each one):

- ``read_file`` / ``write_file`` stay inside the sandbox directory: relative paths only, no ``..`` component,
  and the resolved path (symlinks followed) must lie inside the directory; a symlink as the last component is
  refused on write (``O_NOFOLLOW``). Refusals are ``carl.sandbox.path``.
- ``run`` starts the child in a new session with a *clean* environment (``PATH``, ``HOME``, ``TMPDIR``, ``LANG``
  only: none of carl's variables — tokens, keys — reach it) and resource limits: wall time (the whole process
  tree is killed), CPU seconds (``RLIMIT_CPU``), address space (``RLIMIT_AS``), process count (``RLIMIT_NPROC``),
  file size (``RLIMIT_FSIZE``), open files, and captured output bytes.
- It runs in fresh network, PID and mount namespaces (``unshare --net --pid --fork --kill-child --mount-proc``):
  no interface but a loopback that is down, so no connection leaves it (not even to the host's loopback); its
  ``/proc`` shows only its own processes (not carl's environment); when its first process ends, the kernel kills
  every process left in the PID namespace, so nothing it started outlives the call.
- As root, ``RLIMIT_NPROC`` does not apply, so the child drops to ``nobody`` (``setpriv --reuid 65534``,
  ``--no-new-privs``) and the directory is handed to that uid. As another user, a user namespace makes the
  namespaces possible without privileges, and the process limit is counted on top of what the user already runs.
- Where neither works (no ``unshare``/``setpriv``, namespaces forbidden), ``run`` refuses with
  ``carl.sandbox.isolation`` instead of running model-written code unconfined.

Limits that are hit are reported as :class:`SandboxError` with codes ``carl.sandbox.timeout``, ``.cpu``,
``.memory`` and ``.processes``; output beyond the cap is cut (``truncated``) and the run stopped.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import CARLError

NOBODY = 65534
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxError(CARLError):
    """A tool call the sandbox refused or stopped at a limit (``carl.sandbox.*``).

    ``str()`` starts with the code, so a tool error that TRL turns into ``{"error": str(e)}`` still names it.
    """

    code = "carl.sandbox"
    exit_code = 1
    default_hint = "Change the tool call, or raise the limit under environment.limits in carl.yaml."

    def __str__(self) -> str:
        return f"[{self.code}] {super().__str__()}"


def limits_from_dict(cls, data: dict[str, Any] | None, what: str):
    """A limits dataclass ``cls`` from a carl.yaml mapping: unknown names and non-positive values are refused."""
    data = dict(data or {})
    unknown = set(data) - set(cls.__dataclass_fields__)
    if unknown:
        raise SandboxError(f"unknown {what} limit(s): {', '.join(sorted(unknown))}", code="carl.sandbox.limits",
                           hint=f"Known limits: {', '.join(cls.__dataclass_fields__)}.")
    out = cls(**data)
    for name, value in asdict(out).items():
        if not isinstance(value, (int, float)) or value <= 0:
            raise SandboxError(f"{what} limit {name} must be a positive number (got {value!r})",
                               code="carl.sandbox.limits")
    return out


@dataclass
class SandboxLimits:
    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 512
    max_processes: int = 32
    output_bytes: int = 16_384
    file_bytes: int = 1_048_576
    open_files: int = 64

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "SandboxLimits":
        return limits_from_dict(cls, data, "sandbox")


@dataclass
class RunResult:
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool = False
    signal: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"exit_code": self.exit_code, "stdout": self.stdout, "stderr": self.stderr,
               "truncated": self.truncated}
        if self.signal:
            out["signal"] = self.signal
        return out


# --------------------------------------------------------------------------------------------- isolation


@functools.lru_cache(maxsize=1)
def isolation() -> tuple[tuple[str, ...] | None, str]:
    """The command prefix that confines a child, and a description; ``(None, reason)`` where none works here."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if not unshare or not setpriv:
        return None, "the unshare and setpriv tools (util-linux) are not installed"
    base = [unshare, "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if os.geteuid() == 0:
        prefix = base + ["--", setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                         "--no-new-privs", "--"]
        how = "network+pid namespaces, uid nobody"
    else:
        prefix = [unshare, "--user", *base[1:], "--", setpriv, "--no-new-privs", "--"]
        how = "user+network+pid namespaces"
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=20, env={"PATH": _SAFE_PATH},
                               stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"namespaces are not available: {exc}"
    if probe.returncode != 0:
        reason = probe.stderr.decode("utf-8", "replace").strip().splitlines()
        return None, f"namespaces are not available: {reason[-1] if reason else probe.returncode}"
    return tuple(prefix), how


def sandbox_python() -> str:
    """The interpreter model-written Python runs under: the system's ``python3`` (carl's own, often in a
    virtualenv under a private home, may be unreadable to the sandbox uid), else carl's."""
    return shutil.which("python3", path=_SAFE_PATH) or sys.executable


def _nproc_in_use(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += 1
            except OSError:
                continue
    return n


def _tail(text: str, n: int = 400) -> str:
    return text if len(text) <= n else "…" + text[-n:]


class Sandbox:
    """One throwaway directory (``root``) and the confined runs in it. ``close()`` removes everything."""

    def __init__(self, limits: SandboxLimits | None = None, *, base_dir: str | None = None):
        self.limits = limits or SandboxLimits()
        self.root = Path(tempfile.mkdtemp(prefix="carl-sandbox-", dir=base_dir)).resolve()
        self._as_nobody = os.geteuid() == 0
        if self._as_nobody:
            os.chown(self.root, NOBODY, NOBODY)

    # ------------------------------------------------------------------------------------------ files

    def resolve(self, path: str, *, for_write: bool = False) -> Path:
        """``path`` inside the sandbox, or ``carl.sandbox.path``."""
        if not isinstance(path, str) or not path.strip():
            raise SandboxError("a file path is required", code="carl.sandbox.path")
        if "\x00" in path:
            raise SandboxError("the path contains a NUL byte", code="carl.sandbox.path")
        if os.path.isabs(path) or path.startswith("~"):
            raise SandboxError(f"absolute paths are refused: {path}", code="carl.sandbox.path",
                               hint="Use a path relative to the working directory.")
        parts = Path(path).parts
        if ".." in parts:
            raise SandboxError(f"'..' is refused in paths: {path}", code="carl.sandbox.path",
                               hint="Use a path inside the working directory.")
        target = self.root / path
        real = Path(os.path.realpath(target))
        if real != self.root and self.root not in real.parents:
            raise SandboxError(f"the path leads outside the working directory: {path}", code="carl.sandbox.path",
                               hint="Symlinks out of the working directory are not followed.")
        if for_write and target.is_symlink():
            raise SandboxError(f"writing through a symlink is refused: {path}", code="carl.sandbox.path")
        return target

    def read_file(self, path: str) -> str:
        target = self.resolve(path)
        if not target.is_file():
            raise SandboxError(f"no such file: {path}", code="carl.sandbox.not_found")
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise SandboxError(f"cannot read {path}: {exc.strerror}", code="carl.sandbox.path") from None
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(self.limits.output_bytes + 1)
        text = data[: self.limits.output_bytes].decode("utf-8", "replace")
        return text + ("\n…[truncated]" if len(data) > self.limits.output_bytes else "")

    def write_file(self, path: str, content: str) -> int:
        target = self.resolve(path, for_write=True)
        data = content.encode("utf-8")
        if len(data) > self.limits.file_bytes:
            raise SandboxError(f"file too large: {len(data)} bytes > {self.limits.file_bytes}",
                               code="carl.sandbox.file_size")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.resolve(path, for_write=True)  # the parents just made are real directories inside root
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if self._as_nobody:
            for p in [target, *target.parents]:
                if p == self.root:
                    break
                os.chown(p, NOBODY, NOBODY)
            os.chown(target, NOBODY, NOBODY)
        return len(data)

    def list_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

    # ------------------------------------------------------------------------------------------ processes

    def run_python(self, code: str) -> RunResult:
        script = self.root / ".carl_exec.py"
        if script.exists() or script.is_symlink():
            script.unlink()
        self.write_file(".carl_exec.py", code)
        try:
            # -E -s, not -I: the working directory stays importable (the model imports its own files)
            return self.run([sandbox_python(), "-E", "-s", "-B", str(script)])
        finally:
            if script.exists() or script.is_symlink():
                script.unlink()

    def run_shell(self, command: str) -> RunResult:
        return self.run(["/bin/sh", "-c", command])

    def run(self, argv: list[str]) -> RunResult:
        prefix, how = isolation()
        if prefix is None:
            raise SandboxError(f"refusing to run model-written code without isolation: {how}",
                               code="carl.sandbox.isolation",
                               hint="Run carl on Linux with util-linux and namespaces allowed (root, or "
                                    "unprivileged user namespaces).")
        lim = self.limits
        nproc = lim.max_processes + (0 if self._as_nobody else _nproc_in_use(os.getuid()))
        if self._as_nobody:
            nproc += _nproc_in_use(NOBODY)
        env = {"PATH": _SAFE_PATH, "HOME": str(self.root), "TMPDIR": str(self.root), "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}

        def limit_child() -> None:  # runs in the child between fork and exec
            mem = int(lim.memory_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_CPU, (int(lim.cpu_s), int(lim.cpu_s) + 1))
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(lim.file_bytes), int(lim.file_bytes)))
            resource.setrlimit(resource.RLIMIT_NOFILE, (int(lim.open_files), int(lim.open_files)))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)

        # pid 1 of the new PID namespace is a shell that waits for the command: the command itself is an
        # ordinary process (signals such as SIGXCPU act on it), and when the shell ends the namespace dies.
        full = [*prefix, "/bin/sh", "-c", '"$@"; exit $?', "carl-sandbox", *argv]
        proc = subprocess.Popen(full, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=limit_child)
        cap = int(lim.output_bytes)
        bufs: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        state = {"total": 0, "over": False}
        lock = threading.Lock()

        def pump(name: str, stream: Any) -> None:
            while True:
                chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                if not chunk:
                    break
                with lock:
                    room = cap - state["total"]
                    if room > 0:
                        bufs[name] += chunk[:room]
                    state["total"] += len(chunk)
                    if state["total"] > cap and not state["over"]:
                        state["over"] = True
                        self._kill(proc)

        threads = [threading.Thread(target=pump, args=(n, s), daemon=True)
                   for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
        for t in threads:
            t.start()
        timed_out = False
        try:
            proc.wait(timeout=lim.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            self._kill(proc)
            proc.wait()
        finally:
            self._kill(proc)  # the session, whatever is left of it (normally nothing)
        for t in threads:
            t.join(timeout=10)
        for s in (proc.stdout, proc.stderr):
            s.close()
        out = bufs["stdout"].decode("utf-8", "replace")
        err = bufs["stderr"].decode("utf-8", "replace")
        rc = proc.returncode
        # the shell reports a command killed by signal N as 128+N; unshare re-raises a signal that killed pid 1
        sig_num = -rc if rc < 0 else (rc - 128 if 128 < rc < 128 + 65 else None)
        sig_name = None
        if sig_num:
            try:
                sig_name = signal.Signals(sig_num).name
            except ValueError:
                sig_name = f"signal {sig_num}"
        result = RunResult(exit_code=rc, stdout=out, stderr=err, truncated=state["over"], signal=sig_name)
        ctx = {"exit_code": rc, "stdout": _tail(out), "stderr": _tail(err)}
        if timed_out:
            raise SandboxError(f"stopped at the wall-time limit ({lim.wall_s:g} s); every process it started "
                               f"was killed", code="carl.sandbox.timeout", context=ctx,
                               hint="Make the code finish sooner (no infinite loops), or raise limits.wall_s.")
        if state["over"]:
            result.stdout += "\n…[output truncated]" if out else ""
            result.extra["limit"] = "output"
            return result
        if sig_name == "SIGXCPU" or (sig_name == "SIGKILL" and "CPU time" in err):
            raise SandboxError(f"stopped at the CPU-time limit ({lim.cpu_s} s)", code="carl.sandbox.cpu",
                               context=ctx, hint="Make the code do less work, or raise limits.cpu_s.")
        if rc != 0 and ("MemoryError" in err or "Cannot allocate memory" in err or "std::bad_alloc" in err
                        or "out of memory" in err.lower()):
            raise SandboxError(f"stopped at the memory limit ({lim.memory_mb} MB)", code="carl.sandbox.memory",
                               context=ctx, hint="Use less memory, or raise limits.memory_mb.")
        if rc != 0 and ("Resource temporarily unavailable" in err or "Cannot fork" in err
                        or "can't fork" in err.lower() or "fork: retry" in err):
            raise SandboxError(f"stopped at the process limit ({lim.max_processes} processes)",
                               code="carl.sandbox.processes", context=ctx,
                               hint="Start fewer processes, or raise limits.max_processes.")
        if sig_name == "SIGXFSZ":
            raise SandboxError(f"stopped at the file-size limit ({lim.file_bytes} bytes)",
                               code="carl.sandbox.file_size", context=ctx)
        return result

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
