"""The package's import direction is one-way: cli -> engine -> model -> latents / flows -> base.

Every import in flowvae/ (module level or inside a function) is read with ``ast``; each module belongs to
one layer (``LAYERS``), may import its own layer and the layers below, never one above, and the import
graph has no cycle. A new module must be given a layer here."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "flowvae"

# Top to bottom; a module belongs to the first layer naming it or a package above it.
LAYERS = [
    ("cli", ["flowvae", "flowvae.__main__", "flowvae.cli"]),
    ("engine", ["flowvae.engine", "flowvae.checkpoint", "flowvae.pretrained"]),
    ("model", ["flowvae.model", "flowvae.uses", "flowvae.objective", "flowvae.tc"]),
    ("latents/flows", ["flowvae.latents", "flowvae.flows", "flowvae.dequantization"]),
    ("base", ["flowvae.gaussian", "flowvae.checks", "flowvae.sizes", "flowvae.errors", "flowvae.config", "flowvae.runtime",
              "flowvae.data", "flowvae.visualize"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer(name: str) -> int:
    """Index in LAYERS (0 = top); the exact name first, then the closest package above it."""
    best, depth = None, -1
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if (name == n or (n != "flowvae" and name.startswith(n + "."))) and len(n) > depth:
                best, depth = i, len(n)
    if best is None:
        raise AssertionError(f"module {name} has no layer: add it to LAYERS in tests/test_layering.py")
    return best


def imports(name: str, path: Path, known: set) -> set:
    """The flowvae modules ``name`` imports anywhere in its file (``from . import x`` counts as x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "flowvae"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "flowvae":
                continue
            for a in node.names:  # a submodule imported by name, else the module itself
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_import_points_down_or_sideways():
    wrong = [f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
             for a, deps in graph().items() for b in sorted(deps) if layer(b) < layer(a)]
    assert not wrong, "imports against the direction cli -> engine -> model -> latents/flows -> base:\n" + "\n".join(wrong)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(g):
        if start not in state:
            visit(start, [start])


def test_the_model_never_imports_the_engine():
    g = graph()
    assert not {d for d in g["flowvae.model"] if d.startswith("flowvae.engine")}
    assert "flowvae.model" not in g["flowvae.objective"]


@pytest.mark.parametrize("src,dep,ok", [
    ("flowvae.model", "flowvae.engine.score", False),
    ("flowvae.latents.base", "flowvae.objective", False),
    ("flowvae.engine.train", "flowvae.model", True),
    ("flowvae.uses.score", "flowvae.objective", True),
])
def test_the_layer_rule_itself(src, dep, ok):
    # the check above would catch the wrong directions this code once had
    assert (layer(dep) >= layer(src)) == ok


def test_the_parser_resolves_relative_imports(tmp_path):
    known = {"flowvae", "flowvae.engine", "flowvae.engine.distributed", "flowvae.model", "flowvae.engine.x"}
    f = tmp_path / "x.py"
    f.write_text("from . import distributed as D\nfrom ..model import FlowVAE\n"
                 "def late():\n    from flowvae.engine import distributed\n    import flowvae.model\n")
    assert imports("flowvae.engine.x", f, known) == {"flowvae.engine.distributed", "flowvae.model"}
