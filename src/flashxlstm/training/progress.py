"""The progress bar of a run: tqdm when the `train` extra is installed, else a clear message."""
from __future__ import annotations


def require(module: str, extra: str, what: str):
    """Import `module`, or raise a one-line ModuleNotFoundError naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"{what} needs the '{module.split('.')[0]}' package: pip install 'flashxlstm[{extra}]'"
            + (" (or pass --no-progress)" if module.startswith("tqdm") else "")) from None


def progress_bar(**kwargs):
    """A tqdm progress bar (stderr, fitted to the terminal)."""
    tqdm = require("tqdm.auto", "train", "the progress bar").tqdm
    return tqdm(dynamic_ncols=True, **kwargs)
