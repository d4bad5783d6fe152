"""Documents from a Hugging Face `datasets` dataset, for `flashxlstm prepare --hf-dataset` (optional extra
`datasets`).

`spec` is a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (read with
`load_from_disk`, memory-mapped), or anything `datasets.load_dataset` takes: a packaged builder with local
files (`json:path/*.jsonl`, `parquet:...`, `text:...`, `csv:...`), a local folder of data files, or a hub name
where the network and the hub are reachable. `load_dataset` runs in streaming mode, so the rows are read one
at a time (bounded memory, nothing cached). Each row's `field` (default `text`) is one document; empty ones
are skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

BUILDERS = ("json", "parquet", "text", "csv", "arrow")


def _datasets():
    try:
        import datasets
    except ModuleNotFoundError:
        raise ModuleNotFoundError("prepare: --hf-dataset needs the 'datasets' package: "
                                  "pip install 'flashxlstm[datasets]'") from None
    return datasets


def _saved(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json",
                                                                   "state.json"))


def open_rows(spec: str, split: str = "train", config: str | None = None):
    """The rows of `split` of the dataset `spec` (see the module docstring), as an iterable."""
    ds_lib = _datasets()
    path = Path(spec)
    if _saved(path):
        ds = ds_lib.load_from_disk(str(path))
        if isinstance(ds, ds_lib.DatasetDict):
            if split not in ds:
                raise ValueError(f"prepare: the dataset {spec} has no split {split!r}; it has {', '.join(ds)}")
            ds = ds[split]
        return ds
    builder, sep, files = spec.partition(":")
    try:
        if sep and builder in BUILDERS:
            return ds_lib.load_dataset(builder, data_files={split: files}, split=split, streaming=True)
        return ds_lib.load_dataset(spec, config, split=split, streaming=True)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"prepare: cannot open the dataset {spec!r} (split {split!r}): {e}") from None


def iter_hf_documents(spec: str, split: str = "train", field: str = "text", config: str | None = None
                      ) -> Iterator[str]:
    """Each row's `field` of the dataset, one at a time; a row without that string field is an error."""
    for n, row in enumerate(open_rows(spec, split, config)):
        value = row.get(field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            have = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"prepare: row {n} of the dataset {spec} has no string field {field!r} (fields: {have}); "
                             "choose one with --hf-field")
        if value:
            yield value
