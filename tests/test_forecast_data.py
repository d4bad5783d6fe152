"""The time-series catalog (flashxlstm.data.series): held-out and pretraining sets are disjoint, every loader
reads the installed packages with the network cut off, and the held-out series are long and gap-free enough
for rolling-origin evaluation."""
import socket

import numpy as np
import pytest

from flashxlstm.data.series import DATASETS, EXCLUDED, FREQUENCIES, HELD_OUT, PRETRAIN, load_series


def test_held_out_and_pretrain_are_disjoint_and_cover_the_catalog():
    assert len(set(HELD_OUT)) == len(HELD_OUT) and len(set(PRETRAIN)) == len(PRETRAIN)
    assert not set(HELD_OUT) & set(PRETRAIN)
    assert set(HELD_OUT) | set(PRETRAIN) == set(DATASETS)
    assert len(HELD_OUT) >= 10 and EXCLUDED


def test_loaders_read_installed_files_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a dataset loader tried to open a network connection")
    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    seen = {}
    for name, meta in DATASETS.items():
        assert meta.freq in FREQUENCIES and meta.season >= 1 and meta.horizon >= 1
        series = load_series(name)
        assert series, name
        for s in series:
            assert s.ndim == 1 and s.dtype == np.float64 and s.size > 0
            assert np.isfinite(s[0]) and np.isfinite(s[-1])  # leading / trailing gaps are cut
            key = (s.size, round(float(np.nansum(s)), 6))
            assert key not in seen, f"{name} repeats a series of {seen.get(key)}"
            seen[key] = name


def test_known_values():
    air = load_series("airline")
    assert len(air) == 1 and air[0].size == 144 and air[0][:3].tolist() == [112, 118, 132] and air[0][-1] == 432
    nile = load_series("nile")[0]
    assert nile.size == 100 and nile[0] == 1120
    assert len(load_series("uschange")) == 5
    assert load_series("elnino")[0].size == 61 * 12


def test_held_out_series_fit_rolling_origins():
    for name in HELD_OUT:
        meta = DATASETS[name]
        for s in load_series(name):
            assert not np.isnan(s).any(), name
            # three origins of one horizon each, after a context longer than a season and two horizons
            assert s.size >= 3 * meta.horizon + max(meta.season + 1, 2 * meta.horizon), name


def test_unknown_dataset():
    with pytest.raises(KeyError, match="unknown time-series dataset 'nope'"):
        load_series("nope")
