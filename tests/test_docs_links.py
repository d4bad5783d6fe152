"""Every repository path the documentation and the docstrings cite exists.

Docs, the benchmark record and module docstrings point at each other (docs/cells.md, benchmarks/README.md,
benchmarks/results/...); a renamed or deleted file must not leave a pointer to nothing behind. Paths given
as `git show COMMIT:path` name history on purpose and are not checked.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a repository path: starts at one of the top-level folders, ends in a file name with an extension or a slash
PATH = re.compile(r"(?<![\w./:-])((?:docs|benchmarks|src/flashxlstm|tests)/[\w./-]*[\w/])")
# markdown links relative to the file that holds them: [text](target)
LINK = re.compile(r"\]\(([^)#\s]+)\)")
# in markdown, a path in backticks may also be relative to the file's folder or to the package
TICKED = re.compile(r"`((?:results|ops|nn|models|checkpoints|generation|training|data|tasks|cli|serving)/[\w./-]*)`")


def _sources() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
    files += sorted((ROOT / "src" / "flashxlstm").rglob("*.py"))
    return [f for f in files if f.exists()]


def _cited(text: str) -> set[str]:
    found = set()
    for m in PATH.finditer(text):
        path = m.group(1).rstrip(".")
        if "*" in path or "{" in path or path.endswith("/NAME"):
            continue
        found.add(path)
    return found


def test_cited_repository_paths_exist():
    missing = []
    for source in _sources():
        text = source.read_text(encoding="utf-8")
        for path in sorted(_cited(text)):
            if not (ROOT / path).exists():
                missing.append(f"{source.relative_to(ROOT)} cites {path}")
    assert not missing, "paths cited but not in the repository:\n" + "\n".join(missing)


def test_markdown_links_resolve():
    missing = []
    for source in _sources():
        if source.suffix != ".md":
            continue
        for target in LINK.findall(source.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            if not (source.parent / target).exists():
                missing.append(f"{source.relative_to(ROOT)} links {target}")
    assert not missing, "links to nothing:\n" + "\n".join(missing)


def test_backticked_relative_paths_exist():
    missing = []
    for source in _sources():
        if source.suffix != ".md":
            continue
        for path in TICKED.findall(source.read_text(encoding="utf-8")):
            bases = (source.parent, ROOT / "src" / "flashxlstm")
            if not any((base / path).exists() for base in bases):
                missing.append(f"{source.relative_to(ROOT)} cites {path}")
    assert not missing, "paths cited but not in the repository:\n" + "\n".join(missing)


def test_the_checker_sees_a_missing_path():
    # negative control: the patterns must match the forms the docs use
    assert _cited("see docs/nowhere.md and `benchmarks/results/gone.md`.") == {"docs/nowhere.md",
                                                                             "benchmarks/results/gone.md"}
    assert _cited("git show 00de3d5:benchmarks/results/old.md") == set()
    assert LINK.findall("[a](docs/x.md) [b](https://example.org)") == ["docs/x.md", "https://example.org"]
    assert TICKED.findall("`results/gone.md` and `ops/fused/` but not `runs/default/`") == ["results/gone.md",
                                                                                         "ops/fused/"]
