"""The code environment: a throwaway sandbox directory per rollout (engine/envs/sandbox.py).

A TRL 1.16 environment (``environment_factory``): ``reset(**row)`` makes a fresh :class:`Sandbox` and writes the
row's ``files`` (``{path: text}``) into it; the public methods ``read_file``, ``write_file``, ``execute_code`` and
``run_shell`` are the tools. The row's ``tests`` (Python source, e.g. asserts that import the model's files) are
what the ``code_tests`` task reward runs in the same directory after the rollout (engine/envs/rewards.py).

Every limit and refusal is a :class:`SandboxError` (``carl.sandbox.*``); TRL turns a raised tool error into
``{"error": "[carl.sandbox.timeout] …"}`` for the model and counts it in ``tools/failure_frequency``.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

from engine.envs.sandbox import RunResult, Sandbox, SandboxError, SandboxLimits


class CodeEnvironment:
    """One sandbox per rollout. Public methods are the model's tools."""

    def __init__(self, limits: SandboxLimits | dict[str, Any] | None = None, *, base_dir: str | None = None):
        self._limits = limits if isinstance(limits, SandboxLimits) else SandboxLimits.from_dict(limits)
        self._base_dir = base_dir
        self._box: Sandbox | None = None
        self._finalizer: weakref.finalize | None = None
        self.row: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []

    # --------------------------------------------------------------------------------------- lifecycle

    def reset(self, **row: Any) -> str | None:
        self._close()
        self.row = dict(row)
        self.calls = []
        self._box = Sandbox(self._limits, base_dir=self._base_dir)
        self._finalizer = weakref.finalize(self, self._box.close)
        files = row.get("files") or {}
        if isinstance(files, str):
            try:
                files = json.loads(files)
            except json.JSONDecodeError:
                raise SandboxError("the row's files must be an object {path: text}", code="carl.sandbox.row") from None
        for path, text in dict(files).items():
            self._box.write_file(str(path), str(text))
        return None

    def _close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._box = None

    @property
    def sandbox(self) -> Sandbox:
        if self._box is None:
            self.reset()
        assert self._box is not None
        return self._box

    def _call(self, tool: str, args: dict[str, Any], fn: Any) -> str:
        ok = False
        try:
            out = fn()
            ok = True
            return out
        finally:
            self.calls.append({"tool": tool, "args": args, "ok": ok})

    @staticmethod
    def _result(res: RunResult) -> str:
        return json.dumps(res.to_dict())

    # --------------------------------------------------------------------------------------------- tools

    def read_file(self, path: str) -> str:
        """Read a text file from the working directory.

        Args:
            path: The file's path, relative to the working directory.

        Returns:
            The file's text (cut at the output limit).
        """
        return self._call("read_file", {"path": path}, lambda: self.sandbox.read_file(path))

    def write_file(self, path: str, content: str) -> str:
        """Write a text file in the working directory (created or replaced).

        Args:
            path: The file's path, relative to the working directory.
            content: The file's full text.

        Returns:
            A confirmation with the number of bytes written.
        """
        return self._call("write_file", {"path": path},
                          lambda: json.dumps({"path": path, "bytes": self.sandbox.write_file(path, content)}))

    def execute_code(self, code: str) -> str:
        """Run Python code in the working directory and return its output.

        Args:
            code: Python source to run as a script.

        Returns:
            JSON with "exit_code", "stdout", "stderr" and "truncated".
        """
        return self._call("execute_code", {"code": code}, lambda: self._result(self.sandbox.run_python(code)))

    def run_shell(self, command: str) -> str:
        """Run a shell command in the working directory and return its output.

        Args:
            command: A /bin/sh command line.

        Returns:
            JSON with "exit_code", "stdout", "stderr" and "truncated".
        """
        return self._call("run_shell", {"command": command}, lambda: self._result(self.sandbox.run_shell(command)))
