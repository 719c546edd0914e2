"""`carl --batch probe --logits FILE [--tokens FILE] [--allow-masked]`: the Phi field and CARL reward of logits.

Output (CONTRACT.md §probe): n_tokens, vocab_size, phi_mean/std/min/max, entropy_mean (nats), phi (per token,
flattened over the batch), kappa, sigma, crystallized_fraction, rewards {coherence, cloud, discontinuity, carl};
extras (self_certainty, neg_entropy, logprob_mean, group_confidence, per-sequence scores …) are documented in docs/probe.md. The CARL weights are the run's (``--run``), else the project's carl.yaml
(``--config``, else ``./carl.yaml``), else the defaults; ``weights`` and ``weights_from`` say which. numpy is
imported only when the verb runs (torch only for bfloat16 safetensors; pydantic only when a carl.yaml is read).
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
    p.add_argument("--topk", type=int, default=20, metavar="K",
                   help="DeepConf token confidence over the K most likely tokens (default 20; 0 = skip it)")
    p.add_argument("--window", type=int, default=2048, metavar="W",
                   help="DeepConf group size in tokens for the lowest group confidence (default 2048)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="FILE", help="carl.yaml whose rewards.carl.weights apply (default "
                                                      "./carl.yaml, else 0.5/0.3/0.2)")
    src.add_argument("--run", metavar="RUN", help="use the CARL weights the run RUN trained with")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carl_tui.batch._io import emit
    from engine import settings
    from engine.probe import CoherenceProbe, load_logits_file

    st = settings.resolve(run=getattr(args, "run", None), config_path=getattr(args, "config", None))
    logits, tokens = load_logits_file(args.logits, args.tokens)
    snap = CoherenceProbe(weights=st.weights, topk=args.topk, window=args.window).measure(
        logits, tokens, allow_masked=bool(args.allow_masked))
    out = snap.to_dict()
    out["weights"] = dict(st.weights)
    out["weights_from"] = st.source
    out["allow_masked"] = bool(args.allow_masked)
    out["tokens_given"] = tokens is not None
    emit(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m carl_tui.batch.probe --logits F …`: the same verb without loading the other verbs' parsers
    (what `carl --batch probe` costs once the router imports only the verb it runs)."""
    import sys

    from carl_tui.batch import _Parser
    from carl_tui.batch._io import emit_error
    from engine.errors import CARLError

    parser = _Parser(prog="carl --batch")
    register(parser.add_subparsers(dest="verb", parser_class=_Parser))
    try:
        args = parser.parse_args(["probe", *(sys.argv[1:] if argv is None else argv)])
        return run(args)
    except CARLError as exc:
        emit_error(exc)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
