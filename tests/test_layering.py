"""The layering contracts of pyproject.toml ([tool.importlinter]) hold, and fast commands import nothing heavy."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

from tests.conftest import REPO


def test_import_linter_contracts_hold():
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                          "lint_imports_command()"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


PROBE = """
import sys, io, contextlib, json
from carl_tui.cli import main
buf = io.StringIO()
code = None
with contextlib.redirect_stdout(buf):
    try:
        code = main({argv!r})
    except SystemExit as e:
        code = e.code
heavy = sorted(m for m in ("torch", "transformers", "trl", "textual", "anthropic", "peft", "datasets")
               if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy, "out": buf.getvalue()[:200]}}))
"""


def _run(argv):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_version_batch_help_import_nothing_heavy():
    for argv in (["--help"], ["--version"], ["--batch", "--help"]):
        res = _run(argv)
        assert res["code"] in (0, None), res
        assert res["heavy"] == [], f"{argv} imported {res['heavy']}"
        assert res["out"], argv


def test_plain_carl_off_a_tty_prints_help_and_exits_0():
    out = subprocess.run([sys.executable, "-m", "carl_tui"], cwd=REPO, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0
    assert "usage:" in out.stdout and "--batch" in out.stdout


@functools.lru_cache(maxsize=1)
def _engine_graph():  # built once per session (read-only)
    import grimp

    return grimp.build_graph("engine", cache_dir=None)  # function-level (lazy) imports included


def _cycles(graph, skip=frozenset()) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted(b for b in graph.find_modules_directly_imported_by(m) if (m, b) not in skip)
             for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on.add(v)
            if i < len(edges[v]):
                work.append((v, i + 1))
                w = edges[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            for w in edges[v]:
                if w in on:
                    low[v] = min(low[v], low[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_engine_module_is_in_an_import_cycle():
    graph = _engine_graph()
    assert _cycles(graph) == []  # lazy (function-level) imports count: a cycle through one is still a cycle


def test_cycle_finder_sees_lazy_imports():
    # the graph holds function-level imports: engine.bestof reaches engine.models.stops only inside sample_batch
    graph = _engine_graph()
    assert "engine.models.stops" in graph.find_modules_directly_imported_by("engine.bestof")

    class Graph:  # a -> b -> c -> a, with d hanging off c
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
        modules = set(edges)

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert _cycles(Graph()) == [["a", "b", "c"]]
    assert _cycles(Graph(), frozenset({("c", "a")})) == []


def test_every_engine_module_has_a_layer():
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    layers = next(c for c in cfg["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
    placed = [m.strip() for layer in layers for m in layer.replace("|", ":").split(":")]
    graph = _engine_graph()
    packages = {m for m in graph.modules if any(o.startswith(m + ".") for o in graph.modules)}
    leaves = {m for m in graph.modules if m not in packages}
    missing = sorted(m for m in leaves if not any(m == p or m.startswith(p + ".") for p in placed))
    assert missing == [], f"place these in a layer of pyproject.toml (docs/architecture.md): {missing}"
    assert len(placed) == len(set(placed))


# ------------------------------------------------------------------------------------------ dependencies
def _declared() -> dict[str, str]:
    import re
    import tomllib

    proj = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = {}
    for spec in proj["dependencies"] + proj["optional-dependencies"]["dev"]:
        name = re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0]
        out[name.lower().replace("_", "-")] = spec
    return out


def test_the_floors_are_the_versions_the_suite_runs_on():
    """Each floor is the installed version's minor (torch excepted: a GPU machine's own CUDA build is kept)."""
    import re
    from importlib import metadata

    for name, spec in _declared().items():
        installed = metadata.version(name)
        floor = re.search(r">=\s*([0-9][^,\s]*)", spec)
        assert floor, f"{spec}: no floor"
        if name == "torch":
            continue
        want = ".".join(re.match(r"[0-9.]+", installed).group(0).rstrip(".").split(".")[:2])
        assert floor.group(1) == want, f"{name}: floor {floor.group(1)} but the suite runs {installed}"


def test_every_imported_module_is_declared():
    import ast
    import sys
    from importlib import metadata

    owners = metadata.packages_distributions()
    declared = set(_declared())
    missing = set()
    for pkg in ("engine", "carl_tui", "screens"):
        for f in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for n in names:
                    top = n.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("engine", "carl_tui", "screens"):
                        continue
                    dists = {d.lower().replace("_", "-") for d in owners.get(top, [])}
                    if not dists & declared:
                        missing.add(f"{top} ({f.relative_to(REPO)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
