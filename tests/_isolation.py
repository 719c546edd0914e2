"""The one skip marker for tests that run model-written code in the sandbox: they need its namespaces
(engine.envs.sandbox.isolation says why they are missing where they are)."""

from __future__ import annotations

import pytest

from engine.envs import sandbox as sb

ISOLATION, HOW = sb.isolation()
needs_isolation = pytest.mark.skipif(ISOLATION is None, reason=f"no sandbox isolation here: {HOW}")
