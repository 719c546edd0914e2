"""carl.yaml ``environment:`` — the tool environment agent training runs in (engine/envs).

```yaml
environment:
  kind: sql            # sql | code
  max_tool_calls: 8    # tool-calling iterations per rollout (TRL max_tool_calling_iterations)
  limits: {max_rows: 50, timeout_s: 2}   # per kind; see docs/agents.md
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EnvironmentSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Literal["sql", "code"] = Field(..., description="sql: an SQLite database per rollout; code: a sandbox "
                                                          "directory with read/write/execute tools.")
    max_tool_calls: int = Field(8, ge=1, le=256, description="Tool-calling iterations per rollout.")
    limits: dict[str, Any] = Field(default_factory=dict,
                                   description="sql: max_rows, max_result_chars, timeout_s; code: wall_s, cpu_s, "
                                               "memory_mb, max_processes, output_bytes, file_bytes, open_files.")

    @model_validator(mode="after")
    def _limits_known(self) -> "EnvironmentSection":
        from engine.envs.factory import check_limits

        try:
            check_limits(self.kind, self.limits)
        except Exception as exc:  # a SandboxError: surface it as a field error
            raise ValueError(getattr(exc, "message", str(exc))) from None
        return self
