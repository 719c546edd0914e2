"""`carl --batch doctor` → {"checks": [{"name", "status": "ok"|"warn"|"fail", "detail"}], "blockers": n}.

Exit 0 when nothing fails (warnings allowed), 1 when any check fails. Credentials are shown masked.
"""

from __future__ import annotations

import argparse
from typing import Any

from carl_tui.batch._io import emit
from engine.config import add_config_arguments


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check python, torch, GPUs, libraries, CARL_HOME, credentials, disk",
                       description="Check that this machine can run carl. Exit 1 when a check fails; "
                                   "secrets are shown masked.")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.doctor import report, run_checks

    out = report(run_checks(config=args.config, sets=args.sets))
    emit(out)
    return 1 if out["blockers"] else 0
