"""The three run configurations share one set of loop settings: one check, one JSON round-trip, one resume rule
and one optimiser for every trainer."""
import pytest
import torch

from flashxlstm.tasks.harness import TrainConfig as ExperimentConfig
from flashxlstm.training.config import TrainConfig
from flashxlstm.training.lm import RunConfig
from flashxlstm.training.settings import LoopSettings, resume_settings

MAKERS = {
    "byte job": lambda **kw: TrainConfig(**kw).validated(),
    "token shards": lambda **kw: RunConfig(data="somewhere", **kw).validated(),
    "experiments": lambda **kw: ExperimentConfig(**kw),  # checked at construction
}


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("bad, message", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"eval_every": 1.5}, "eval_every must be a positive integer"),
    ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
    ({"grad_clip": -1.0}, "grad_clip must be >= 0"),
    ({"betas": (0.9, 1.0)}, "betas must be two numbers"),
])
def test_every_configuration_checks_the_shared_settings_alike(kind, bad, message):
    assert isinstance(MAKERS[kind](), LoopSettings)
    with pytest.raises(ValueError, match=message):
        MAKERS[kind](**bad)


@pytest.mark.parametrize("cls, extra", [(TrainConfig, {}), (RunConfig, {"data": "d"}), (ExperimentConfig, {})])
def test_json_round_trip_and_unknown_keys(cls, extra):
    cfg = cls(steps=7, betas=(0.8, 0.9), grad_clip=0.0, **extra)
    d = cfg.to_dict()
    assert d["betas"] == [0.8, 0.9]
    assert cls.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown training setting.*: colour"):
        cls.from_dict({**d, "colour": "red"})


def test_resume_replaces_only_what_does_not_change_the_computation():
    saved = RunConfig(data="d", steps=10, lr=1e-3).to_dict()
    cfg = resume_settings(RunConfig, saved, {"steps": 20, "lr": 1e-3, "seed": None}, ("steps",))
    assert (cfg.steps, cfg.lr) == (20, 1e-3)
    with pytest.raises(ValueError, match=r"--resume: lr=0.01 differs from the saved run's lr=0.001"):
        resume_settings(RunConfig, saved, {"lr": 1e-2}, ("steps",))


def test_one_optimiser_for_every_trainer():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 3))
    for cfg in (TrainConfig(lr=2e-3, weight_decay=0.2), ExperimentConfig(lr=2e-3, weight_decay=0.2)):
        opt = cfg.optimizer(model)
        decay, no_decay = opt.param_groups
        assert [p is model[1].weight for p in decay["params"]] == [True] and decay["weight_decay"] == 0.2
        assert no_decay["weight_decay"] == 0.0 and opt.defaults["lr"] == 2e-3 and opt.defaults["betas"] == cfg.betas
