"""The layout's import rules, read from the source with `ast` (module-level and function-level imports alike).

* no cycle among the modules of engine/, clients/ and kernels/;
* clients/ and kernels/ import nothing from engine/ (and kernels/ nothing from clients/);
* the stages import one way: engine.core <- engine.harvest <- engine.interpret <- engine.score;
  engine.report reads engine.core only; the top-level command modules (engine/demo.py,
  engine/label.py, ...) are imported by no package module;
* no module over 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "clients", "kernels")
STAGES = {"engine.core": 0, "engine.harvest": 1, "engine.interpret": 2, "engine.score": 3}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that `name` imports anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name` the module
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a non-module attribute: its nearest module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def stage(module: str) -> str | None:
    for s in (*STAGES, "engine.report"):
        if module == s or module.startswith(s + "."):
            return s
    return None


def test_the_walk_sees_real_edges(graph):
    """Guard against a walker that finds nothing: known edges of each kind are present."""
    assert "engine.core.schemas" in graph["engine.interpret.run"] | graph["engine.interpret.explain"]
    assert "engine.score.scorers.base" in graph["engine.score.scorers.detection"]
    assert "engine.harvest.run" in graph["engine.demo"]  # `from engine.harvest import run as harvest`
    assert "kernels.dispatch" in graph["kernels.encode_pack"]


def test_no_import_cycle(graph):
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_clients_and_kernels_import_nothing_from_engine(graph):
    bad = [(m, n) for m, deps in graph.items() for n in deps
           if m.split(".")[0] in ("clients", "kernels") and n.split(".")[0] == "engine"
           or m.split(".")[0] == "kernels" and n.split(".")[0] == "clients"]
    assert not bad, bad


def test_stages_import_one_way(graph):
    bad = []
    for m, deps in graph.items():
        s = stage(m)
        for n in deps:
            t = stage(n)
            if n.split(".")[0] != "engine" or n == "engine":
                continue
            if t is None:  # a top-level command module
                if s is not None:
                    bad.append(f"{m} imports the command module {n}")
            elif s == "engine.report" and t != "engine.core" and t != "engine.report":
                bad.append(f"{m} (report) imports {n}: the report reads the core only")
            elif t == "engine.report" and s != "engine.report" and s is not None:
                bad.append(f"{m} imports the report module {n}")
            elif s in STAGES and t in STAGES and STAGES[t] > STAGES[s]:
                bad.append(f"{m} imports {n}, a later stage")
    assert not bad, "\n".join(bad)


def test_no_module_over_400_lines():
    paths = [p for pkg in (*PACKAGES, "tests", "bench") for p in (ROOT / pkg).rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in paths if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
