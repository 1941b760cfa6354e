"""The layers of docs/ARCHITECTURE.md hold in the code: every import of the
package (at the top of a file or inside a function) goes to the same or a
higher layer of that list, and no module imports itself back through others."""
import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "matpac_jax"


def layers() -> dict[str, int]:
    """unit -> layer number, from the numbered list under '## Layers'."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    out = {}
    for number, line in re.findall(r"^(\d+)\. (.*)$", section, re.M):
        head = line.split(":", 1)[0]
        for unit in re.findall(r"`([\w/]+)`", head):
            out[unit.rstrip("/")] = int(number)
    return out


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules a file imports (a `from pkg import mod` names mod)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("matpac_jax"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in known else node.module)
    return out


def unit(module: str) -> str:
    """The layer unit of a module: its folder under the package, or itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_go_up_the_layers_only():
    layer, mods = layers(), modules()
    assert len(layer) > 10, "docs/ARCHITECTURE.md lost its '## Layers' list"
    missing = sorted({unit(m) for m in mods} - set(layer))
    assert not missing, f"modules in no layer of docs/ARCHITECTURE.md: {missing}"
    wrong = []
    for m, path in mods.items():
        for dst in imports(path, set(mods)):
            a, b = unit(m), unit(dst)
            if layer[b] > layer[a]:
                wrong.append(f"{m} (layer {layer[a]}) imports {dst} (layer {layer[b]})")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_back():
    mods = modules()
    graph = {m: {d for d in imports(p, set(mods)) if d != m and not m.startswith(d + ".")}
             for m, p in mods.items()}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(graph[m]):
            visit(d)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
