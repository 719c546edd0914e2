"""One run over several processes: who this process is, and the few collectives carl itself needs.

TRL/accelerate own the process group (DDP, DeepSpeed or FSDP); carl only adds

* :func:`all_gather` — every rank's Python object, in rank order (the reward function combines CARL and feeds
  the gate on the whole generation batch, the same rows TRL gathers before computing advantages);
* :func:`any_rank` — a stop request seen by one rank stops every rank at the same step.

Without an initialised process group (one process) both are the identity. Torch is imported only when a group
exists, so this module is cheap to import.
"""

from __future__ import annotations

import os
from typing import Any

RANK_DIR = "ranks"  # run_dir/ranks/rank-<n>.json: each rank's pid, world size, gate step (written by that rank)


def env_rank() -> int:
    """This process's global rank from the launcher's environment (torchrun/accelerate set RANK)."""
    try:
        return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    except ValueError:
        return 0


def env_world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def is_main() -> bool:
    return env_rank() == 0


def _group():
    if env_world_size() <= 1:
        return None
    import torch.distributed as td

    return td if td.is_available() and td.is_initialized() else None


def world_size() -> int:
    """The initialised process group's size (1 before the trainer set it up, or with one process)."""
    td = _group()
    return td.get_world_size() if td is not None else 1


def rank() -> int:
    td = _group()
    return td.get_rank() if td is not None else 0


def backend() -> str | None:
    td = _group()
    return str(td.get_backend()) if td is not None else None


def all_gather(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` (``[obj]`` with one process). Every rank must call it."""
    td = _group()
    if td is None:
        return [obj]
    out: list[Any] = [None] * td.get_world_size()
    td.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank. Every rank must call it."""
    td = _group()
    if td is None:
        return bool(flag)
    import torch

    device = "cpu"
    if str(td.get_backend()) == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return bool(t.item())


def set_parent_death_signal(sig: int) -> bool:
    """Linux: deliver ``sig`` to this process when its parent dies (so no rank outlives its launcher)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(sig), 0, 0, 0) == 0  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def set_child_subreaper() -> bool:
    """Linux: orphaned descendants re-parent to this process, so the supervisor can still find and end them."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def gather_batch(carl: list[float], task: dict[str, list[float]],
                 crystallizations: list[float]) -> tuple[list[float], dict[str, list[float]], list[float], int]:
    """This reward call's values from every rank, concatenated in rank order — the order in which TRL gathers
    rewards before it groups them by ``num_generations`` (a group can straddle two ranks) — and where this
    rank's own rows start. With one process: the inputs and 0."""
    parts = all_gather((list(carl), {k: list(v) for k, v in task.items()}, list(crystallizations)))
    if len(parts) == 1:
        return list(carl), {k: list(v) for k, v in task.items()}, list(crystallizations), 0
    me = rank()
    offset = sum(len(p[0]) for p in parts[:me])
    names = list(parts[0][1])
    return ([x for p in parts for x in p[0]], {k: [x for p in parts for x in p[1].get(k, [])] for k in names},
            [x for p in parts for x in p[2]], offset)


def init_group(device: str) -> None:
    """Join the run's process group now, through accelerate as the trainer would (the trainer then reuses it):
    carl's own decisions (the pipeline's state and verdicts) are broadcast before any trainer exists."""
    if env_world_size() <= 1:
        return
    from accelerate import PartialState

    PartialState(cpu=device == "cpu")


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself with one process): a decision made once. Every rank must
    call it."""
    td = _group()
    if td is None:
        return obj
    box = [obj if td.get_rank() == 0 else None]
    td.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    td = _group()
    if td is not None:
        td.barrier()


def _exec_with_pdeathsig(argv: list[str]) -> None:
    """``python -m engine.trainer.dist --pdeathsig -- CMD …``: exec CMD with PR_SET_PDEATHSIG=SIGKILL (kept across
    exec), so the launcher dies with the supervisor — the exec prefix that replaces a ``preexec_fn``."""
    import signal

    cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    if not cmd:
        raise SystemExit("usage: python -m engine.trainer.dist --pdeathsig -- CMD [ARG …]")
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the signal was armed
        raise SystemExit(1)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    import sys

    _exec_with_pdeathsig(sys.argv[1:])
