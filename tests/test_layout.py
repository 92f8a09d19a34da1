"""The package layout stays as docs/ARCHITECTURE.md describes it: short modules, stages that import only
earlier stages (no import circles), one atomic writer."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "qkcopy"
MAX_LINES = 300
# Each stage may import itself and the stages before it; nothing imports a later stage.
STAGES = [
    {"errors", "io", "device", "seeds", "distributed", "checkpoint"},
    {"data"},
    {"config", "config_rules"},
    {"model"},
    {"qk"},
    {"evaluation"},
    {"retrieval"},
    {"training", "baselines"},
    {"collection", "report"},
    {"serve", "client", "api"},
    {"perf"},  # benchmarks sit above what they measure, the service included
    {"cli", "__init__", "__main__"},
]


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC.parent).with_suffix("").parts): p for p in sorted(SRC.rglob("*.py"))}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qkcopy"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("qkcopy"))
    return found


def _stage(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    for i, stage in enumerate(STAGES):
        if part in stage:
            return i
    raise AssertionError(f"{module}: its subpackage {part!r} has no stage in tests/test_layout.py")


def test_no_module_over_300_lines():
    long = {name: n for name, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_stages_import_only_earlier_stages():
    bad = []
    for name, path in _modules().items():
        if name.endswith("__main__") or name == "qkcopy":
            continue
        for target in _imports(path, top_level_only=False):
            if target in _modules() and _stage(target) > _stage(name):
                bad.append(f"{name} → {target}")
    assert not bad, "imports against the pipeline order:\n" + "\n".join(sorted(bad))


def test_no_import_circle_between_modules():
    modules = _modules()
    graph = {name: {t for t in _imports(p, top_level_only=True) if t in modules and t != name}
             for name, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " → ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_atomic_writes_only_in_the_writer():
    hand_rolled = [name for name, p in _modules().items()
                   if name != "qkcopy.io" and any(s in p.read_text() for s in ("os.replace(", "mkstemp(", "mkdtemp("))]
    assert not hand_rolled, f"rename-into-place outside qkcopy.io: {hand_rolled}"


def test_no_two_public_classes_share_a_name():
    """One concept, one name: a public class name (no leading underscore) is defined in one module only."""
    seen: dict[str, list[str]] = {}
    for name, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                seen.setdefault(node.name, []).append(name)
    shared = {cls: where for cls, where in seen.items() if len(where) > 1}
    assert not shared, f"public class names defined more than once: {shared}"
