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


def test_recipe_then_flags_and_presets(tmp_path):
    from flashxlstm.cli.train import lm_settings_from_args
    from flashxlstm.training.lm import RunConfig
    from flashxlstm.training.presets import PRESETS, resolve_model

    recipe = tmp_path / "r.toml"
    (tmp_path / "m.toml").write_text('family = "large"\nembedding_dim = 32\nnum_blocks = 1\nnum_heads = 2\n')
    recipe.write_text('model = "m.toml"\nsteps = 7\namp = "bf16"\nseq_len = 64\n')
    args = build_parser().parse_args(["train", "--recipe", str(recipe), "--data", "d", "--steps", "9", "--out", "o"])
    cfg = RunConfig.from_dict(lm_settings_from_args(args)).validated()
    assert (cfg.steps, cfg.amp, cfg.seq_len, cfg.out) == (9, "bf16", 64, "o")  # flags override the recipe
    assert resolve_model(cfg.model, 300) == ("large", {"embedding_dim": 32, "num_blocks": 1, "num_heads": 2,
                                                     "vocab_size": 300})
    with pytest.raises(ValueError, match="byte-level job"):
        lm_settings_from_args(build_parser().parse_args(["train", "--data", "d", "--d-model", "8"]))
    assert len(PRESETS) == 8 and resolve_model("xlstm71-350m", 50304)[1]["num_blocks"] == 48
