"""The import graph keeps the layering the README's Layout section states: a subpackage imports only from
layers below it (and not from its siblings in the same layer). Every import counts, including those inside
functions. A top-level package or module not listed here counts as a top layer, like cli: it may import
anything, and nothing listed may import it."""
import ast
from pathlib import Path

import flashxlstm

# lowest first; the names in one tuple are siblings that must not import each other
LAYERS = [
    ("ops",),
    ("nn",),
    ("generation", "checkpoints"),
    ("models", "data"),
    ("training", "serving"),
    ("tasks", "integrations", "hf"),
    ("cli",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
ROOT = Path(flashxlstm.__file__).parent


def _module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    is_pkg = rel.name == "__init__"
    parts = rel.parts[:-1] if is_pkg else rel.parts
    return ".".join(parts), is_pkg


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:]) if "." in module else Path()
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """The flashxlstm modules a file imports (`from pkg import name` counts as pkg.name when that is a module)."""
    name, is_pkg = _module_name(path)
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "flashxlstm")
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            if base.split(".")[0] != "flashxlstm":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _exists(sub) else base)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the flashxlstm package itself (the public facade)


def test_imports_point_down_the_layers():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        module, _ = _module_name(path)
        src = _layer(module)
        if src is None or src not in RANK:
            continue  # the facade and unlisted top layers may import anything
        for target in sorted(imports(path)):
            dst = _layer(target)
            dst_rank = RANK["models"] if dst is None else RANK.get(dst, len(LAYERS))  # the facade exposes models
            if dst != src and dst_rank >= RANK[src]:
                bad.append(f"{module} imports {target}")
    assert not bad, "imports against the layering (README, Layout):\n" + "\n".join(bad)


def test_the_check_sees_relative_imports_and_those_inside_functions():
    assert "flashxlstm.checkpoints.atomic" in imports(ROOT / "checkpoints" / "native.py")
    assert "flashxlstm.ops" in imports(ROOT / "nn" / "mlstm_layer.py")  # `from .. import ops`
    assert any(m.startswith("flashxlstm.generation") for m in imports(ROOT / "models" / "base.py"))  # in a function


def test_the_readme_states_these_layers():
    """The README's Layout section numbers the same layers, siblings on one number, in the same order."""
    import re

    readme = (ROOT.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    stated: list[list[str]] = []
    for line in section.splitlines():
        if m := re.match(r"^    \d (\w+)(?:/|\.py)\s", line):
            stated.append([m.group(1)])
        elif (m := re.match(r"^      (\w+)(?:/|\.py)\s", line)) and stated:
            stated[-1].append(m.group(1))
    assert [tuple(names) for names in stated] == LAYERS
