"""What every screen may read from the app: ``self.app.ctx`` is a :class:`WorkbenchContext`.

The app shell builds it (carl_tui) and screens read it (screens), so screens never import the shell.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.home import CarlHome


@dataclass
class WorkbenchContext:
    home: CarlHome
    cwd: Path
    config_path: Path | None = None  # --config, else ./carl.yaml if present
    screen_args: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = time.time  # frozen in snapshot tests
    probe_request: dict[str, Any] | None = None  # try's `P`: the logits file the probe screen opens when it shows
    try_request: dict[str, Any] | None = None  # train's `y`: the run the try screen opens when it next shows

    @property
    def home_display(self) -> str:
        root = str(self.home.root)
        user = os.path.expanduser("~")
        return "~" + root[len(user):] if root.startswith(user + os.sep) or root == user else root


def context_of(widget: Any) -> WorkbenchContext:
    """The context of the app a widget belongs to (a default one when run outside the shell, e.g. in tests)."""
    ctx = getattr(widget.app, "ctx", None)
    if ctx is None:
        ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=Path.cwd())
    return ctx
