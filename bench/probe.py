"""Benchmark the coherence probe against a naive numpy reference, in the same run.

    .venv/bin/python bench/probe.py            # full sizes: [1024, 151936] and [4096, 32000] float32
    .venv/bin/python bench/probe.py --quick    # smaller shapes, for a smoke run

Prints (on stdout, as text and one final JSON line):
  1. compute: engine.probe.phi_from_logits (numpy, chunked float32) vs the naive numpy
     softmax → log → sum on the same in-memory array, best of --repeat runs; the ratio naive/probe.
  2. peak extra memory of the probe on a memory-mapped .npy (tracemalloc: numpy allocations), against the
     size of the input.
  3. whole process: `python -m carl_tui --batch probe --logits F.npy` vs a naive numpy script (np.load +
     naive formulas + the same JSON) on the same [1024, 151936] file, wall time and peak RSS of each child
     (os.wait4). Peak RSS of a memory-mapped reader counts the file pages it touched (page cache, not
     copies), so read the tracemalloc figure for "extra memory".
Nothing here asserts a time: the numbers are ratios measured side by side on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.probe import CoherenceProbe, phi_from_logits  # noqa: E402

NAIVE_SCRIPT = r'''
import json, sys
import numpy as np
x = np.load(sys.argv[1])
V = x.shape[-1]
with np.errstate(divide="ignore", invalid="ignore"):
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - m)
    p = e / e.sum(axis=-1, keepdims=True)
    H = -(p * np.log(p)).sum(axis=-1)
phi = 1.0 - H / np.log(V)
sel = p.max(axis=-1)
T = phi.size
cloud = float(np.mean(sel * phi))
num = den = 0.0
j = 0
while 2 ** j <= T and j < 16:
    b = 2 ** j; n = T // b
    c = min(1.0, max(0.0, 1.0 - float(phi[: n * b].reshape(n, b).std(axis=1).mean())))
    num += 2 ** (j / 2) * c; den += 2 ** (j / 2); j += 1
coh = num / den
d = np.diff(phi); prev = phi[:-1]; hit = np.abs(d) > 0.03
sc = np.where(d > 0, np.where(prev < 0.5, 0.8, 0.3), np.where(prev > 0.7, 0.2, 0.5))[hit]
disc = float(sc.mean()) if sc.size else 0.5
print(json.dumps({"n_tokens": int(T), "vocab_size": int(V), "phi_mean": float(phi.mean()),
                  "phi": phi.tolist(), "rewards": {"coherence": coh, "cloud": cloud, "discontinuity": disc,
                  "carl": 0.5 * coh + 0.3 * cloud + 0.2 * disc}}))
'''


def naive_phi(x: np.ndarray) -> np.ndarray:
    """The naive reference: full-size softmax, log, product and sum in the input dtype."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m = x.max(axis=-1, keepdims=True)
        e = np.exp(x - m)
        p = e / e.sum(axis=-1, keepdims=True)
        h = -(p * np.log(p)).sum(axis=-1)
    return 1.0 - h / np.log(x.shape[-1])


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def make_logits(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= 2.5
    # a few confident rows, so Phi is not flat
    x[:: 7, :: 97] += 12.0
    return x


def bench_compute(shape: tuple[int, int], repeat: int) -> dict:
    x = make_logits(shape)
    ref = naive_phi(x.astype(np.float64))
    out = {"shape": list(shape), "naive_s": best_of(lambda: naive_phi(x), repeat)}
    for backend in ("numpy", "torch"):
        phi_from_logits(x[:8], backend=backend)  # warm (imports torch once for the torch backend)
        reps = repeat if backend == "numpy" else 1  # torch: one run (its thread pool is erratic on a busy host)
        out[f"{backend}_s"] = best_of(lambda: phi_from_logits(x, backend=backend), reps)
        out[f"{backend}_speedup"] = out["naive_s"] / out[f"{backend}_s"]
        out[f"{backend}_max_abs_err_phi_vs_float64"] = float(np.abs(phi_from_logits(x, backend=backend)[0] - ref).max())
    return out


# Runs a module or script and, at exit, writes the process's own peak RSS (VmHWM; a fresh process image after
# exec, so the parent's big arrays do not leak into it the way ru_maxrss of a forked child does).
LAUNCH = r"""
import atexit, os, runpy, sys
def _hwm():
    try:
        kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    except OSError:
        import resource; kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1 if sys.platform != "darwin" else 1024)
    open(os.environ["CARL_BENCH_HWM"], "w").write(str(kib))
atexit.register(_hwm)
target = sys.argv[1]; sys.argv = sys.argv[1:]
runpy.run_path(target, run_name="__main__") if target.endswith(".py") else runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def run_child(cmd: list[str], out_path: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (KiB) and exit code of one child process (started through LAUNCH)."""
    hwm = out_path.with_suffix(".hwm")
    env = {**os.environ, "CARL_BENCH_HWM": str(hwm)}
    with open(out_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", LAUNCH, *cmd], stdout=out, stderr=subprocess.PIPE, cwd=REPO,
                              env=env)
        wall = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
    return wall, int(hwm.read_text()) if hwm.exists() else -1, proc.returncode


def bench_process(shape: tuple[int, int], repeat: int, tmp: Path) -> dict:
    f = tmp / "logits.npy"
    np.save(f, make_logits(shape))
    naive_py = tmp / "naive.py"
    naive_py.write_text(NAIVE_SCRIPT)
    carl_cmd = ["carl_tui", "--batch", "probe", "--logits", str(f)]  # = python -m carl_tui --batch probe …
    naive_cmd = [str(naive_py), str(f)]  # = python naive.py F
    verb_cmd = ["carl_tui.batch.probe", "--logits", str(f)]  # the verb alone (no other verbs' imports)
    run_child(naive_cmd, tmp / "warm.json")  # warm the page cache for all
    results: dict[str, list] = {"naive": [], "carl": [], "verb": []}
    for _ in range(repeat):  # interleaved so drift on a shared machine hits all three
        results["naive"].append(run_child(naive_cmd, tmp / "naive.json"))
        results["carl"].append(run_child(carl_cmd, tmp / "carl.json"))
        results["verb"].append(run_child(verb_cmd, tmp / "verb.json"))
    naive_best = min(r[0] for r in results["naive"])
    carl_best = min(r[0] for r in results["carl"])
    verb_best = min(r[0] for r in results["verb"])
    a = json.loads((tmp / "naive.json").read_text())
    b = json.loads((tmp / "carl.json").read_text())
    agree = max(abs(a["rewards"][k] - b["rewards"][k]) for k in a["rewards"])
    phi_err = float(np.abs(np.asarray(a["phi"]) - np.asarray(b["phi"])).max())
    return {"shape": list(shape), "file_mib": f.stat().st_size / 2**20,
            "naive_process_s": naive_best, "carl_process_s": carl_best, "ratio": carl_best / naive_best,
            "verb_only_process_s": verb_best, "verb_only_ratio": verb_best / naive_best,
            "naive_peak_rss_mib": max(r[1] for r in results["naive"]) / 1024,
            "carl_peak_rss_mib": max(r[1] for r in results["carl"]) / 1024,
            "exit_codes": sorted({r[2] for v in results.values() for r in v}),
            "max_abs_diff_rewards": agree, "max_abs_diff_phi": phi_err}


def bench_memory(shape: tuple[int, int], tmp: Path) -> dict:
    f = tmp / "mem.npy"
    np.save(f, make_logits(shape, seed=1))
    x = np.load(f, mmap_mode="r")
    tracemalloc.start()
    CoherenceProbe(backend="numpy").measure(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    f.unlink()
    return {"shape": list(shape), "input_mib": x.nbytes / 2**20, "probe_peak_extra_mib": peak / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    shapes = [(1024, 151936), (4096, 32000)] if not args.quick else [(128, 151936), (512, 32000)]
    report: dict = {"compute": [], "memory": None, "process": None}
    for shape in shapes:
        r = bench_compute(shape, args.repeat)
        report["compute"].append(r)
        print(f"compute {shape}: naive {r['naive_s']:.3f}s · probe numpy {r['numpy_s']:.3f}s "
              f"({r['numpy_speedup']:.1f}x) · probe torch-cpu {r['torch_s']:.3f}s ({r['torch_speedup']:.1f}x)  "
              f"max |ΔPhi| vs float64 {r['numpy_max_abs_err_phi_vs_float64']:.1e} / "
              f"{r['torch_max_abs_err_phi_vs_float64']:.1e}", flush=True)
    with tempfile.TemporaryDirectory(prefix="carl-bench-") as td:
        tmp = Path(td)
        m = bench_memory(shapes[0], tmp)
        report["memory"] = m
        print(f"memory {tuple(m['shape'])} mmap'd input {m['input_mib']:.0f} MiB: probe peak extra "
              f"{m['probe_peak_extra_mib']:.2f} MiB (tracemalloc)", flush=True)
        p = bench_process(shapes[0], args.repeat, tmp)
        report["process"] = p
        print(f"process {tuple(p['shape'])} ({p['file_mib']:.0f} MiB .npy): naive script {p['naive_process_s']:.2f}s "
              f"(peak RSS {p['naive_peak_rss_mib']:.0f} MiB)  carl --batch probe {p['carl_process_s']:.2f}s "
              f"(peak RSS {p['carl_peak_rss_mib']:.0f} MiB)  ratio {p['ratio']:.2f}  · verb alone "
              f"(python -m carl_tui.batch.probe) {p['verb_only_process_s']:.2f}s ratio {p['verb_only_ratio']:.2f}  "
              f"(rewards agree to {p['max_abs_diff_rewards']:.1e}, phi to {p['max_abs_diff_phi']:.1e})", flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
