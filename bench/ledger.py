"""Benchmark the ledger against a bare pynacl sign / verify loop over the same bytes, in the same run.

    .venv/bin/python bench/ledger.py              # 10,000 blocks
    .venv/bin/python bench/ledger.py --n 2000     # smaller, for a smoke run

1. append: ``Ledger.append_many`` in batches of --batch items (one lock hold + one fsync per touched segment
   per call) → blocks/s (wall time, fsync included); its CPU time against the baseline
   ``nacl.signing.SigningKey.sign`` over the same 10,000 block hashes (the signing floor); and single ``append``
   calls (lock + fsync each) on --single blocks → blocks/s.
2. verify: ``Ledger.verify`` over the whole chain (read, parse, canonical re-encode, two sha256, link and
   signature checks) vs ``nacl.signing.VerifyKey.verify`` over the same (hash, signature) pairs. Target:
   verify ≤ 1.3× the bare loop.
Best CPU time of --repeat interleaved rounds for verify and the bare loops (append: wall time, it waits on
fsync). Nothing asserts a time; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nacl.signing import SigningKey  # noqa: E402

from engine.home import CarlHome  # noqa: E402
from engine.ledger import Ledger  # noqa: E402


def _payload(i: int) -> dict:
    return {"run_id": f"run-{i % 7:03d}", "step": i, "phi": 0.1875 + (i % 100) / 1000, "loss": 1.0 / (i + 1),
            "gate": "B" if i % 2 else "A", "checkpoint": f"checkpoints/step-{i}", "ok": True}


def interleaved(fns: dict, repeat: int) -> dict:
    """Best CPU time (time.process_time: this process only, so other load on the machine matters less) of each
    function over ``repeat`` rounds, the functions alternating within each round."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1000, help="items per append_many call")
    ap.add_argument("--single", type=int, default=300, help="single append() calls to time")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="carl-bench-ledger-") as tmp:
        led = Ledger(CarlHome(Path(tmp)))
        led.init(seed="bench")
        items = [("checkpoint", _payload(i)) for i in range(args.n)]
        t, c = time.perf_counter(), time.process_time()
        blocks = []
        for s in range(0, args.n, args.batch):
            blocks += led.append_many(items[s:s + args.batch])
        append_s, append_cpu = time.perf_counter() - t, time.process_time() - c

        single_home = Ledger(CarlHome(Path(tmp) / "single"))
        single_home.init(seed="bench")
        t = time.perf_counter()
        for i in range(args.single):
            single_home.append("checkpoint", _payload(i))
        single_s = time.perf_counter() - t

        # the same bytes for the bare loops: each block's hash (what is signed) and its signature
        sk = SigningKey(__import__("hashlib").sha256(b"bench").digest())
        vk = sk.verify_key
        msgs = [b["hash"].encode("ascii") for b in blocks]
        sigs = [bytes.fromhex(b["signature"]) for b in blocks]
        assert vk.encode().hex() == blocks[0]["signer"]

        def bare_sign():
            for m in msgs:
                sk.sign(m)

        def bare_verify():
            for m, s in zip(msgs, sigs):
                vk.verify(m, s)

        res_holder = {}

        def ledger_verify():
            res_holder["r"] = led.verify()

        t = interleaved({"sign": bare_sign, "bare_verify": bare_verify, "verify": ledger_verify}, args.repeat)
        sign_s, bare_verify_s, verify_s = t["sign"], t["bare_verify"], t["verify"]
        res = res_holder["r"]
        assert res.ok and res.blocks == args.n + 1, res

    out = {
        "blocks": args.n,
        "append_many": {"batch": args.batch, "seconds": round(append_s, 4), "blocks_per_s": round(args.n / append_s),
                        "cpu_seconds": round(append_cpu, 4), "cpu_vs_bare_sign": round(append_cpu / sign_s, 3)},
        "append_single": {"calls": args.single, "blocks_per_s": round(args.single / single_s)},
        "bare_sign": {"seconds": round(sign_s, 4), "per_s": round(args.n / sign_s)},
        "verify": {"seconds": round(verify_s, 4), "blocks_per_s": round((args.n + 1) / verify_s),
                   "vs_bare_verify": round(verify_s / bare_verify_s, 3), "target": 1.3},
        "bare_verify": {"seconds": round(bare_verify_s, 4), "per_s": round(args.n / bare_verify_s)},
    }
    print(f"append_many  {out['append_many']['blocks_per_s']:>8} blocks/s  "
          f"(CPU {out['append_many']['cpu_vs_bare_sign']}× the bare sign loop: redaction, canonical JSON, hashing)")
    print(f"append       {out['append_single']['blocks_per_s']:>8} blocks/s  (one lock + fsync per block)")
    print(f"verify       {out['verify']['blocks_per_s']:>8} blocks/s  "
          f"({out['verify']['vs_bare_verify']}× the bare verify loop; target ≤ 1.3×)")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
