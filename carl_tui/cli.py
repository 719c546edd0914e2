"""The `carl` entry point: the workbench (`carl`, `carl SCREEN …`) or headless batch mode (`carl --batch …`).

Nothing here imports textual, torch, transformers or trl at module level: `carl --help`, `carl --version`
and `carl --batch --help` stay fast.
"""

from __future__ import annotations

import argparse
import sys

from carl_tui import __version__

SCREENS = ("project", "train", "observe", "chat", "ledger", "probe", "jobs", "try")

HELP = f"""carl {__version__} — a terminal workbench for Coherence-Aware Reinforcement Learning

usage:
  carl                         open the workbench (on a terminal; prints this help otherwise)
  carl SCREEN [ARGS]           open the workbench on a screen: {", ".join(SCREENS)}
                                 e.g. carl observe --file run.jsonl · carl train --config carl.yaml
  carl mcp [--allow ACTION…] [--http [HOST:]PORT]
                               serve carl's tools to MCP clients (docs/mcp.md)
  carl --batch VERB [ARGS]     headless: JSON on stdout, JSON errors on stderr (see carl --batch --help)
  carl --version | --help

keys in the workbench: p project · t train · o observe · c chat · l ledger · b probe · j jobs · y try · ctrl+p palette · q quit
environment: CARL_HOME (default ~/.carl), NO_COLOR
"""


def _screen_parser(screen: str) -> argparse.ArgumentParser:
    from engine.config import add_config_arguments  # pydantic + yaml only: still no torch/textual

    p = argparse.ArgumentParser(prog=f"carl {screen}", description=f"Open the workbench on the {screen} screen.")
    add_config_arguments(p)
    if screen == "observe":
        p.add_argument("--file", help="frames.jsonl, a JSONL of metrics, or trainer_state.json")
        p.add_argument("--trackio", help="trackio project")
        p.add_argument("--trackio-dir", help="trackio store directory (default TRACKIO_DIR)")
        p.add_argument("--url", help="trackio dashboard URL")
        p.add_argument("--project", help="project on the dashboard")
        p.add_argument("--run", help="run id or name")
        p.add_argument("--no-follow", action="store_true", help="load once; do not follow the source live")
        p.add_argument("--poll", type=float, metavar="S", help="poll interval in seconds while following")
    if screen in ("train", "ledger"):
        p.add_argument("--run", help="run id (train: attach to it)")
    if screen == "try":
        p.add_argument("--model", help="model path or Hub id")
        p.add_argument("--adapter", help="PEFT adapter path")
        p.add_argument("--run", help="a run id: its latest checkpoint")
        p.add_argument("--compare", help="a second model/run to compare side by side")
        p.add_argument("--prompt", help="prompt to start with")
    if screen == "probe":
        p.add_argument("--logits", help=".npy/.npz/.safetensors logits file")
        p.add_argument("--tokens", help="token ids file")
        p.add_argument("--model", help="a model instead of a file: RUN, RUN/checkpoint-N, RUN@N, run:ID, a path, "
                                       "builtin:tiny or a Hub id (with --prompt)")
        p.add_argument("--prompt", help="the prompt the model continues (with --model)")
        p.add_argument("--text", help="a text to score after the prompt (default: the model's greedy completion)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--batch"]:
        from carl_tui.batch import main as batch_main

        return batch_main(argv[1:])
    if argv[:1] == ["mcp"]:  # `carl mcp …` is `carl --batch mcp …`: a server, not a screen
        from carl_tui.batch import main as batch_main

        return batch_main(argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"carl {__version__}")
        return 0
    if argv[:1] in (["--help"], ["-h"]):
        print(HELP, end="")
        return 0
    screen = "project"
    screen_args: dict = {}
    if argv:
        if argv[0] not in SCREENS:
            print(f"carl: unknown screen or option {argv[0]!r}\n", file=sys.stderr)
            print(HELP, end="", file=sys.stderr)
            return 2
        screen = argv[0]
        screen_args = vars(_screen_parser(screen).parse_args(argv[1:]))
    elif not (sys.stdout.isatty() and sys.stdin.isatty()):
        print(HELP, end="")
        return 0
    if not sys.stdout.isatty():
        print(f"carl {screen}: the workbench needs a terminal; use `carl --batch …` in scripts.", file=sys.stderr)
        return 2
    from carl_tui.app import run_app

    return run_app(screen=screen, screen_args=screen_args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
