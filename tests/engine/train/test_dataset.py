"""The data set is a pure function of (seed, split, index)."""
from __future__ import annotations

import pytest
import torch

from engine.errors import InputError
from engine.train.dataset import DataConfig, SyntheticData

CONFIG = DataConfig(height=32, width=40, resolution=16)


def _same(a, b, exact=True):
    compare = torch.equal if exact else (lambda x, y: torch.allclose(x, y, atol=1e-5, equal_nan=True))
    va, vb = a.views, b.views
    return (
        compare(va.image, vb.image)
        and torch.equal(va.instance, vb.instance)
        and torch.equal(torch.isinf(va.pointmap), torch.isinf(vb.pointmap))
        and compare(va.pointmap.nan_to_num(posinf=0.0), vb.pointmap.nan_to_num(posinf=0.0))
        and torch.equal(a.targets.occupancy, b.targets.occupancy)
        and compare(a.targets.rotation, b.targets.rotation)
        and compare(a.targets.translation, b.targets.translation)
        and compare(a.targets.colours, b.targets.colours)
    )


def test_the_same_seed_gives_identical_samples():
    a = SyntheticData(seed=5, config=CONFIG).batch([0, 1, 2])
    b = SyntheticData(seed=5, config=CONFIG).batch([0, 1, 2])
    assert _same(a, b)


def test_a_sample_does_not_depend_on_its_batch():
    data = SyntheticData(seed=5, config=CONFIG)
    alone = data.batch([4])
    among = data.batch([7, 4, 1])
    assert data.scene(4) == among.scenes.scenes[1]
    num_k = int(alone.targets.valid.sum())
    assert torch.equal(alone.views.instance[0], among.views.instance[1])
    assert torch.allclose(alone.views.image[0], among.views.image[1], atol=1e-5)
    assert torch.equal(alone.targets.occupancy[0, :num_k], among.targets.occupancy[1, :num_k])
    assert torch.allclose(alone.targets.translation[0, :num_k], among.targets.translation[1, :num_k])


def test_different_seeds_splits_and_indices_differ():
    base = SyntheticData(seed=5, config=CONFIG)
    assert base.scene(0) != SyntheticData(seed=6, config=CONFIG).scene(0)
    assert base.scene(0) != SyntheticData(seed=5, split="test", config=CONFIG).scene(0)
    assert base.scene(0) != base.scene(1)
    a, b = base.batch([0], targets=False), SyntheticData(seed=6, config=CONFIG).batch([0], targets=False)
    assert not torch.equal(a.views.image, b.views.image)
    assert a.targets is None


def test_batches_walk_the_indices_in_order():
    data = SyntheticData(seed=1, config=CONFIG)
    got = [b.indices for b in data.batches(batch_size=3, start=2, stop=9, targets=False)]
    assert got == [[2, 3, 4], [5, 6, 7], [8]]
    first = next(data.batches(batch_size=2, targets=False))
    assert first.views.image.shape == (2, 32, 40, 3)
    assert first.masks.shape[:2] == (2, first.scenes.object_valid.shape[1])


def test_bad_arguments_raise_input_errors():
    with pytest.raises(InputError, match="unknown split"):
        SyntheticData(split="holdout")
    with pytest.raises(InputError, match="seed"):
        SyntheticData(seed=-1)
    with pytest.raises(InputError, match="batch_size"):
        next(SyntheticData().batches(0))


def test_scenes_drawn_in_worker_processes_are_the_same():
    data = SyntheticData(seed=2, config=CONFIG)
    here = [b.scenes.scenes for b in data.batches(batch_size=2, stop=5, targets=False)]
    there = [b.scenes.scenes for b in data.batches(batch_size=2, stop=5, targets=False, workers=2)]
    assert here == there and [len(s) for s in there] == [2, 2, 1]
