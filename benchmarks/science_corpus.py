"""Assemble the science runs' offline text corpus from Debian documentation packages (no download at run time).

    apt-get install -y --no-install-recommends linux-doc-6.1 perl-doc python3.11-doc postgresql-doc-15
    python benchmarks/science_corpus.py --out data/docs-text          # plain-text documents + corpus.json
    flashxlstm prepare --input data/docs-text/texts --tokenizer train:16384 --out data/docs-16k

Sources, each file one document (the make-up and byte counts of a build are written to OUT/corpus.json):
- linux-doc-6.1: the kernel's Documentation/ sources (reStructuredText and plain text, gzipped in the package;
  the generated HTML, YAML bindings and images are left out). Licence: GPL-2.0 (a few files CC-BY-4.0 / dual).
- perl-doc: Perl's POD manuals (/usr/share/perl/5.36.0/pod/*.pod). Licence: GPL-1+ or Artistic.
- python3.11-doc: the Python documentation's reStructuredText sources (html/_sources/**/*.rst.txt).
  Licence: PSF License Version 2.
- postgresql-doc-15: the PostgreSQL manual, HTML pages reduced to their text. Licence: PostgreSQL Licence.

The documents are written in a fixed shuffled order (seeded), so `prepare`'s sorted file order mixes the
sources and the validation tail of the token stream is a mix of all four.
"""
from __future__ import annotations

import argparse
import gzip
import html.parser
import json
import random
import sys
from pathlib import Path

SOURCES = {
    "linux-doc-6.1": {"licence": "GPL-2.0 (some files CC-BY-4.0 or dual-licensed)",
                      "root": "/usr/share/doc/linux-doc-6.1/Documentation", "globs": ["**/*.rst.gz", "**/*.txt.gz"]},
    "perl-doc": {"licence": "GPL-1+ or Artistic", "root": "/usr/share/perl/5.36.0/pod", "globs": ["*.pod"]},
    "python3.11-doc": {"licence": "PSF-2.0", "root": "/usr/share/doc/python3.11/html/_sources",
                       "globs": ["**/*.rst.txt"]},
    "postgresql-doc-15": {"licence": "PostgreSQL", "root": "/usr/share/doc/postgresql-doc-15/html",
                          "globs": ["*.html"]},
}


class _Text(html.parser.HTMLParser):
    """The visible text of an HTML page: scripts and styles dropped, block elements on their own lines."""

    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "dt", "dd", "table", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)

    def text(self) -> str:
        lines = [" ".join(line.split()) for line in "".join(self.parts).splitlines()]
        out, blank = [], False
        for line in lines:
            if line or not blank:
                out.append(line)
            blank = not line
        return "\n".join(out).strip() + "\n"


def read_document(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    if path.suffix == ".html":
        parser = _Text()
        parser.feed(text)
        text = parser.text()
    return text


def build(out: Path, seed: int = 0) -> dict:
    texts = out / "texts"
    if texts.exists() and any(texts.iterdir()):
        raise SystemExit(f"{texts} exists and is not empty; choose a new --out")
    missing = [name for name, s in SOURCES.items() if not Path(s["root"]).is_dir()]
    if missing:
        raise SystemExit(f"not installed: {', '.join(missing)} (apt-get install {' '.join(missing)})")
    docs = []
    for name, s in SOURCES.items():
        root = Path(s["root"])
        files = sorted({f for g in s["globs"] for f in root.glob(g) if f.is_file() and not f.is_symlink()})
        docs += [(name, f, root) for f in files]
    random.Random(seed).shuffle(docs)
    texts.mkdir(parents=True, exist_ok=True)
    summary = {name: {"licence": s["licence"], "files": 0, "bytes": 0} for name, s in SOURCES.items()}
    for i, (name, f, root) in enumerate(docs):
        text = read_document(f)
        if not text.strip():
            continue
        data = text.encode("utf-8")
        (texts / f"{i:06d}.txt").write_bytes(data)
        summary[name]["files"] += 1
        summary[name]["bytes"] += len(data)
    record = {"sources": summary, "total_bytes": sum(v["bytes"] for v in summary.values()),
              "total_files": sum(v["files"] for v in summary.values()), "seed": seed}
    (out / "corpus.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    record = build(Path(args.out), args.seed)
    for name, s in record["sources"].items():
        print(f"{name}: {s['files']} files, {s['bytes'] / 1e6:.1f} MB ({s['licence']})")
    print(f"total: {record['total_files']} files, {record['total_bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
