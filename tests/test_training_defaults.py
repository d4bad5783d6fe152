"""Library defaults are a user's, not the development machine's; optional extras fail with a clear message."""
import sys

import pytest

from flashxlstm.cli.main import build_parser
from flashxlstm.cli.train import config_from_args
from flashxlstm.training.config import DEFAULT_JOB_MAX_MINUTES, TrainConfig
from flashxlstm.training.progress import progress_bar


def test_no_time_limit_or_thread_choice_unless_asked():
    assert TrainConfig().max_minutes is None and TrainConfig().threads is None
    parse = lambda *a: config_from_args(build_parser().parse_args(["train", *a]))[0]
    assert parse().max_minutes == DEFAULT_JOB_MAX_MINUTES  # the embedded job keeps its safety net
    assert parse("--text-file", "x.txt").max_minutes is None
    assert parse("--max-minutes", "0").max_minutes == 0
    assert parse().threads is None and parse("--threads", "3").threads == 3


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'flashxlstm\[train\]'.*--no-progress"):
        progress_bar(total=3)
