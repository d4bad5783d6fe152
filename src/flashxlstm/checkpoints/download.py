"""A checkpoint name as a local directory: an existing directory as it is, a Hugging Face hub id
("NX-AI/xLSTM-7b", optionally "@revision") through `huggingface_hub` (the optional extra `hub`).

`huggingface_hub.snapshot_download` takes the copy in the local cache (HF_HOME / HF_HUB_CACHE) when it is
there and HF_HUB_OFFLINE=1 forbids the network; otherwise it downloads the files a checkpoint needs
(configs, weights, tokenizer). Every failure names the id, the cache and what to do.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
CHECKPOINT_FILES = ["*.json", "*.safetensors", "config.yaml", "tokenizer*", "*.txt", "*.model"]


def looks_like_hub_id(name: str) -> bool:
    """'owner/name' (optionally '@revision') that is not a relative path starting with '.'."""
    return bool(_HUB_ID.match(name)) and not name.startswith(".")


def resolve_checkpoint(name_or_path: str | os.PathLike, what: str = "from_pretrained") -> Path:
    """The local directory of a checkpoint: `name_or_path` itself when it exists, else the hub snapshot."""
    path = Path(name_or_path).expanduser()
    if path.exists() or not isinstance(name_or_path, str) or not looks_like_hub_id(name_or_path):
        return path  # the directory checks of the loader report what is wrong with it
    repo_id, _, revision = name_or_path.partition("@")
    try:
        import huggingface_hub
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
    except ImportError:
        raise FileNotFoundError(
            f"{what}: {name_or_path!r} is not a local directory; to read it as a Hugging Face hub id install "
            f"huggingface_hub (pip install 'flashxlstm[hub]')") from None
    from huggingface_hub import constants

    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        local = huggingface_hub.snapshot_download(repo_id, revision=revision or None,
                                                  allow_patterns=CHECKPOINT_FILES)
    except LocalEntryNotFoundError:
        how = ("HF_HUB_OFFLINE=1 forbids downloading" if offline
               else "it could not be downloaded (no network connection?)")
        raise FileNotFoundError(
            f"{what}: {name_or_path!r} is not a local directory, and as a Hugging Face hub id it is not in the "
            f"cache {constants.HF_HUB_CACHE} and {how}. Download it on a connected machine "
            f"(`hf download {repo_id}`, into the same HF_HOME) or pass the checkpoint's directory") from None
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
        raise FileNotFoundError(f"{what}: hub id {name_or_path!r}: {type(e).__name__}: "
                                f"{str(e).splitlines()[0]}") from None
    return Path(local)
