"""ppo_lab.checkpoint: atomic writes, weights_only loads, and every RNG restored."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ppo_lab.checkpoint import (get_rng_state, load_checkpoint, save_checkpoint, seed_everything,
                                set_rng_state)


def test_roundtrip_plain_containers(tmp_path):
    payload = {"weights": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7, "lr": 1e-3,
               "flags": torch.tensor([True, False]), "name": "run", "none": None,
               "history": [{"a": 1.0, "b": None}], "big": 2**100, "pair": (1, 2.5)}
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pt", payload)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["weights"]["w"], payload["weights"]["w"])
    assert torch.equal(loaded["flags"], payload["flags"])
    for key in ("step", "lr", "name", "none", "history", "big", "pair"):
        assert loaded[key] == payload[key]
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temp file left behind


class Evil:
    """Any class: a weights_only load must refuse to build it."""


def test_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": Evil()}, path)  # plain torch.save, so the object is pickled
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(path)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def _draw():
    return (random.random(), np.random.rand(3).tolist(), np.random.randn(),
            torch.rand(3).tolist(), torch.randint(0, 100, (4,)).tolist())


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path):
    seed_everything(123)
    _draw()
    np.random.randn()  # leaves a cached Gaussian in numpy's legacy state
    save_checkpoint(tmp_path / "rng.pt", {"rng": get_rng_state()})
    expected = _draw()
    seed_everything(999)  # scramble everything
    _draw()
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draw() == expected


def test_seed_everything_is_reproducible():
    seed_everything(5)
    first = _draw()
    seed_everything(5)
    assert _draw() == first
