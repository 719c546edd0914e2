"""Signal handling for children that a test interrupts.

A process started in the background (``cmd &``, ``nohup``, CI runners) inherits SIGINT *ignored*, and a child
inherits that again: ``proc.send_signal(SIGINT)`` would then do nothing and the test would hang or fail only
in the background. A test that sends SIGINT to a child passes ``preexec_fn=default_sigint`` so the child
starts with the default handling (Python then raises KeyboardInterrupt in it), whatever the parent had.
"""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn`` for subprocess.Popen: give the child default SIGINT handling."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
