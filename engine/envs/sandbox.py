"""The code sandbox: a throwaway directory and a jailed child process for model-written code.

What it guarantees, for carl run as root and as an ordinary user alike (tests/test_sandbox.py and
tests/test_hostile.py try each escape for real, the latter also as a throwaway non-root uid):

- ``read_file`` / ``write_file`` stay inside the sandbox directory: relative paths only, no ``..`` component,
  and the resolved path (symlinks followed) must lie inside the directory; a symlink as the last component is
  refused on write (``O_NOFOLLOW``). Refusals are ``carl.sandbox.path``.
- ``run`` starts the child in a *private root*: the box directory (writable, mounted at ``/box``, also its
  ``HOME``), a private ``/tmp`` (a second throwaway directory), the system's ``/usr`` (and ``/bin``, ``/lib``...
  where they are not symlinks into it) read-only, the few ``/etc`` files the dynamic loader reads, a minimal
  ``/dev`` and its own ``/proc``. Nothing else of the host's file system exists in there: not the user's HOME
  (tokens, ``~/.bashrc``, carl's venv, ``CARL_HOME``), not the host's ``/tmp``, not ``/run`` (so no pathname
  socket -- docker, ssh-agent, D-Bus -- can be reached).
- Fresh user, network, PID, IPC and UTS namespaces: no interface but a loopback that is down, so no connection
  leaves it; its ``/proc`` shows only its own processes; when its first process ends, every process left in the
  PID namespace is killed. Capabilities are dropped and ``no_new_privs`` is set. As root the whole jail runs as
  ``nobody`` (the directories are handed to that uid); as another user it runs as that user.
- A *clean* environment (``PATH``, ``HOME``, ``TMPDIR``, ``LANG``): none of carl's variables reach it.
- Resource limits, set by an exec prefix (``prlimit``; no ``preexec_fn``, which is unsafe in threaded
  processes): wall time (the whole process tree is killed), CPU seconds, address space, process count, file size,
  open files, and captured output bytes.
- The jail is built by bubblewrap (``bwrap``) where installed, else by ``unshare`` (user+mount namespaces) and a
  ``pivot_root`` into a tmpfs; where neither works, ``run`` refuses with ``carl.sandbox.unavailable`` instead of
  running model-written code unjailed. ``carl --batch doctor`` reports which one this machine has.

What it does not promise: the disk used by the box and ``/tmp`` directories is bounded per file (``file_bytes``),
not in total; CPU time is limited per process; the kernel is shared (a kernel exploit is out of scope).

Limits that are hit are reported as :class:`SandboxError` with codes ``carl.sandbox.timeout``, ``.cpu``,
``.memory`` and ``.processes``; output beyond the cap is cut (``truncated``) and the run stopped.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import stat
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

BOX_MOUNT = "/box"  # where the box directory appears inside the jail
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")
_DEVICES = ("null", "zero", "full", "random", "urandom")


def _system_dirs() -> tuple[list[str], list[tuple[str, str]]]:
    """Read-only directories to bind (``/usr`` and any top-level ones that are real directories) and the
    top-level symlinks to recreate (merged-/usr systems: ``/bin -> usr/bin``)."""
    binds, links = ["/usr"], []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            links.append((os.readlink(top), top))
        elif os.path.isdir(top):
            binds.append(top)
    py = sandbox_python()
    prefix = os.path.realpath(sys.base_prefix) if py == sys.executable else None
    if prefix and not any(prefix == b or prefix.startswith(b + "/") for b in binds):
        binds.append(prefix)
    binds += [p for p in _ETC_FILES if os.path.exists(p)]
    return binds, links


def _bwrap_argv(bwrap: str, box: Path, tmp: Path) -> list[str]:
    binds, links = _system_dirs()
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for path in binds:
        argv += ["--ro-bind", path, path]
    for target, link in links:
        argv += ["--symlink", target, link]
    argv += ["--bind", str(box), BOX_MOUNT, "--bind", str(tmp), "/tmp", "--proc", "/proc", "--dev", "/dev",
             "--remount-ro", "/", "--chdir", BOX_MOUNT, "--"]
    return argv


def _unshare_argv(unshare: str, setpriv: str, box: Path, tmp: Path, newroot: Path) -> list[str]:
    """The fallback jail: ``unshare`` makes the namespaces, a shell mounts a tmpfs root with the same binds as
    the bwrap jail, ``pivot_root``s into it, detaches the host's tree, and ``setpriv`` drops every capability."""
    q = shlex.quote
    t = _tools()
    mount, umount, pivot = q(t["mount"] or "mount"), q(t["umount"] or "umount"), q(t["pivot_root"] or "pivot_root")
    binds, links = _system_dirs()
    r = q(str(newroot))
    lines = ["set -e", f"{mount} -t tmpfs -o mode=0755,size=1m carl-root {r}"]
    for path in binds:
        dst = q(str(newroot) + path)
        make = f"mkdir -p {dst}" if os.path.isdir(path) else f"mkdir -p {q(os.path.dirname(str(newroot) + path))}; touch {dst}"
        lines += [make, f"{mount} --rbind {q(path)} {dst}", f"{mount} -o remount,bind,ro {dst}"]
    for target, link in links:
        lines.append(f"ln -s {q(target)} {q(str(newroot) + link)}")
    lines += [f"mkdir {r}/box {r}/tmp {r}/proc {r}/dev {r}/.old",
              f"{mount} --bind {q(str(box))} {r}/box", f"{mount} --bind {q(str(tmp))} {r}/tmp",
              f"{mount} -t proc proc {r}/proc"]
    for dev in _DEVICES:
        lines += [f"touch {r}/dev/{dev}", f"{mount} --bind /dev/{dev} {r}/dev/{dev}"]
    lines += [f"cd {r}", f"{pivot} . .old", f"{umount} -l /.old", "rmdir /.old", f"{mount} -o remount,ro,bind /",
              f"cd {BOX_MOUNT}",
              # uid 0 of the user namespace keeps no capability across exec (noroot), none can come back
              f"exec {q(setpriv)} --no-new-privs --inh-caps=-all --bounding-set=-all "
              "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked,+keep_caps_locked "
              "-- /bin/sh -c '\"$@\"; exit $?' carl-sandbox \"$@\""]
    return [unshare, "--user", "--map-root-user", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork",
            "--kill-child", "--", "/bin/sh", "-c", "\n".join(lines), "carl-jail"]


def _tools() -> dict[str, str | None]:
    return {name: shutil.which(name, path=_SAFE_PATH + ":/usr/sbin:/sbin")
            for name in ("bwrap", "unshare", "setpriv", "prlimit", "mount", "umount", "pivot_root")}


def _drop_prefix(setpriv: str) -> list[str]:
    """As root, the jail itself is entered as ``nobody`` (the user namespace is then an unprivileged one)."""
    if os.geteuid() != 0:
        return []
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs", "--"]


def jail_argv(backend: str, box: Path, tmp: Path, newroot: Path) -> list[str]:
    """The command prefix (without limits) that runs a command inside the jail, for ``backend``."""
    t = _tools()
    if backend == "bwrap":
        return [*_drop_prefix(t["setpriv"]), *_bwrap_argv(t["bwrap"], box, tmp)]
    return [*_drop_prefix(t["setpriv"]), *_unshare_argv(t["unshare"], t["setpriv"], box, tmp, newroot)]


def _probe(backend: str) -> str | None:
    """None when ``backend`` builds a working jail here (a command in it sees its private root), else why not."""
    base = Path(tempfile.mkdtemp(prefix="carl-sandbox-probe-"))
    try:
        dirs = [base / "box", base / "tmp", base / "root"]
        for d in dirs:
            d.mkdir()
            if os.geteuid() == 0:
                os.chown(d, NOBODY, NOBODY)
        if os.geteuid() == 0:
            os.chown(base, NOBODY, NOBODY)
        argv = [*jail_argv(backend, *dirs), "/bin/sh", "-c", "test -d /box && test ! -e /root && echo jailed"]
        probe = subprocess.run(argv, capture_output=True, timeout=20, env={"PATH": _SAFE_PATH},
                               stdin=subprocess.DEVNULL, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if probe.returncode == 0 and probe.stdout.strip() == b"jailed":
        return None
    reason = probe.stderr.decode("utf-8", "replace").strip().splitlines()
    return reason[-1] if reason else f"exit {probe.returncode}"


BACKENDS = ("bwrap", "unshare")


def isolation() -> tuple[str | None, str]:
    """Which jail this machine can build (``"bwrap"`` or ``"unshare"``) and a description; ``(None, reason)``
    where neither works here. ``CARL_SANDBOX=bwrap|unshare`` restricts the choice to one (tests run both)."""
    return _isolation(os.environ.get("CARL_SANDBOX", "").strip().lower() or None)


@functools.lru_cache(maxsize=4)
def _isolation(only: str | None) -> tuple[str | None, str]:
    t = _tools()
    if not t["prlimit"] or not t["setpriv"]:
        return None, "the prlimit and setpriv tools (util-linux) are not installed"
    if only is not None and only not in BACKENDS:
        return None, f"CARL_SANDBOX={only} is not one of {', '.join(BACKENDS)}"
    why: list[str] = []
    who = "as nobody" if os.geteuid() == 0 else "as the user"
    for backend in BACKENDS:
        if only is not None and backend != only:
            continue
        if not t[backend]:
            why.append(f"{backend} is not installed")
            continue
        err = _probe(backend)
        if err is None:
            what = "bubblewrap" if backend == "bwrap" else "unshare+pivot_root"
            return backend, f"{what}: private root, user+pid+net+ipc namespaces, {who}"
        why.append(f"{backend}: {err}")
    return None, "; ".join(why)


def sandbox_python() -> str:
    """The interpreter model-written Python runs under: the system's ``python3`` (carl's own, often in a
    virtualenv under a private home, is not mounted in the jail), else carl's."""
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
    """One throwaway directory (``root``, the box) and the jailed runs in it. ``close()`` removes everything."""

    def __init__(self, limits: SandboxLimits | None = None, *, base_dir: str | None = None):
        self.limits = limits or SandboxLimits()
        self._base = Path(tempfile.mkdtemp(prefix="carl-sandbox-", dir=base_dir)).resolve()
        self.root = self._base / "box"
        self._tmp = self._base / "tmp"
        self._newroot = self._base / "root"
        self._as_nobody = os.geteuid() == 0
        for d in (self.root, self._tmp, self._newroot):
            d.mkdir(mode=0o700)
        if self._as_nobody:
            for d in (self._base, self.root, self._tmp, self._newroot):
                os.chown(d, NOBODY, NOBODY)

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

    def write_file(self, path: str, content: str | bytes) -> int:
        target = self.resolve(path, for_write=True)
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
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
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()
                      and not p.is_symlink())

    def copy_files_from(self, other: "Sandbox") -> int:
        """Copy ``other``'s regular files (no symlinks, no special files) into this box; returns how many."""
        n = 0
        for rel in other.list_files():
            src = other.resolve(rel)
            try:
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    continue
                data = fh.read(self.limits.file_bytes + 1)
            if len(data) <= self.limits.file_bytes:
                self.write_file(rel, data)
                n += 1
        return n

    # ------------------------------------------------------------------------------------------ processes

    def run_python(self, code: str) -> RunResult:
        script = self.root / ".carl_exec.py"
        if script.exists() or script.is_symlink():
            script.unlink()
        self.write_file(".carl_exec.py", code)
        try:
            # -E -s, not -I: the working directory stays importable (the model imports its own files)
            return self.run([sandbox_python(), "-E", "-s", "-B", f"{BOX_MOUNT}/.carl_exec.py"])
        finally:
            if script.exists() or script.is_symlink():
                script.unlink()

    def run_shell(self, command: str) -> RunResult:
        return self.run(["/bin/sh", "-c", command])

    def _limit_prefix(self) -> list[str]:
        lim = self.limits
        nproc = lim.max_processes + (_nproc_in_use(NOBODY) if self._as_nobody else _nproc_in_use(os.getuid()))
        mem = int(lim.memory_mb) * 1024 * 1024
        return [_tools()["prlimit"] or "prlimit", f"--as={mem}", f"--cpu={int(lim.cpu_s)}:{int(lim.cpu_s) + 1}",
                f"--nproc={nproc}", f"--fsize={int(lim.file_bytes)}", f"--nofile={int(lim.open_files)}",
                "--core=0", "--"]

    def run(self, argv: list[str], *, stdin: bytes | None = None) -> RunResult:
        backend, how = isolation()
        if backend is None:
            raise SandboxError(f"refusing to run model-written code without a jail: {how}",
                               code="carl.sandbox.unavailable",
                               hint="Install bubblewrap (apt-get install bubblewrap), or allow unprivileged user "
                                    "namespaces; `carl --batch doctor` shows what is missing.")
        lim = self.limits
        env = {"PATH": _SAFE_PATH, "HOME": BOX_MOUNT, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        full = [*self._limit_prefix(), *jail_argv(backend, self.root, self._tmp, self._newroot), *argv]
        proc = subprocess.Popen(full, cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                start_new_session=True)
        if stdin is not None:
            def feed() -> None:
                try:
                    proc.stdin.write(stdin)
                except OSError:
                    pass
                finally:
                    try:
                        proc.stdin.close()
                    except OSError:
                        pass
            threading.Thread(target=feed, daemon=True).start()
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
        shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
