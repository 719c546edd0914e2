"""`carl --batch probe --logits FILE [--tokens FILE] [--allow-masked]`: the Phi field and CARL reward of logits.

Output (CONTRACT.md §probe): n_tokens, vocab_size, phi_mean/std/min/max, entropy_mean (nats), phi (per token,
flattened over the batch), kappa, sigma, crystallized_fraction, rewards {coherence, cloud, discontinuity, carl};
extras are documented in docs/probe.md. numpy is imported only when the verb runs (torch only for bfloat16
safetensors).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "probe", help="Phi field and CARL reward of a logits file",
        description="Measure per-token Phi = 1 - H/log V and the CARL reward of a logits file. "
                    "FILE: .npy ([T,V] or [B,T,V]), .npz or .safetensors (keys 'logits', optional 'tokens'). "
                    "Without tokens the argmax is used.")
    p.add_argument("--logits", required=True, metavar="FILE", help=".npy / .npz / .safetensors logits file")
    p.add_argument("--tokens", metavar="FILE", help="token ids [T] or [B,T] (.npy, .npz/.safetensors key "
                                                    "'tokens', or a JSON list); default: argmax")
    p.add_argument("--allow-masked", action="store_true",
                   help="-inf logits are masked entries (probability 0); V stays the full last dimension")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carl_tui.batch._io import emit
    from engine.probe import CoherenceProbe, load_logits_file

    logits, tokens = load_logits_file(args.logits, args.tokens)
    snap = CoherenceProbe().measure(logits, tokens, allow_masked=bool(args.allow_masked))
    out = snap.to_dict()
    out["allow_masked"] = bool(args.allow_masked)
    out["tokens_given"] = tokens is not None
    emit(out)
    return 0
