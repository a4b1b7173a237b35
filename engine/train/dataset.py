"""The synthetic data set: scene i of a split is a pure function of (seed, split, i).

Each scene is drawn from its own `numpy.random.Generator` seeded with the entropy (seed, split number, index),
so a sample does not depend on the batch it comes in, on the order of requests or on the device; splits are
disjoint streams. Rendering and targets are deterministic functions of the scene (up to float rounding across
devices).

    data = SyntheticData(seed=0, split="train", config=DataConfig(height=128, width=128))
    for batch in data.batches(batch_size=256, device="cuda"):
        batch.views.image, batch.views.masks(...), batch.targets.occupancy, batch.targets.rotation ...
"""
from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import InputError
from .render import Views, render
from .scenes import Scene, SceneBatch, SceneConfig, random_scene
from .targets import Targets, object_targets

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DataConfig:
    height: int = 128  # pixels
    width: int = 128  # pixels
    resolution: int = 64  # occupancy grid side (the model's 64^3)
    max_steps: int = 64  # sphere-tracing steps
    scene: SceneConfig = field(default_factory=SceneConfig)


@dataclass
class Batch:
    indices: list[int]  # sample indices within the split
    scenes: SceneBatch
    views: Views
    targets: Targets | None  # None when asked for views only

    @property
    def masks(self) -> torch.Tensor:
        """(B, K, H, W) bool, the visible pixels of each object."""
        return self.views.masks(self.scenes.object_valid.shape[1])


class SyntheticData:
    def __init__(self, seed: int = 0, split: str = "train", config: DataConfig = DataConfig()):
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}", "pass e.g. seed=0")
        self.seed, self.split, self.config = int(seed), split, config

    def scene(self, index: int) -> Scene:
        if index < 0:
            raise InputError(f"sample index must be >= 0, got {index}", "indices count from 0 within a split")
        return _draw_scenes(self.seed, self.split, self.config.scene, [index])[0]

    def scene_batch(self, indices: Iterable[int], device=None) -> SceneBatch:
        return SceneBatch.collate([self.scene(i) for i in indices], device=device)

    def batch(self, indices: Iterable[int], device=None, targets: bool = True) -> Batch:
        indices = [int(i) for i in indices]
        return self._finish(indices, [self.scene(i) for i in indices], device, targets)

    def batches(
        self,
        batch_size: int,
        start: int = 0,
        stop: int | None = None,
        device=None,
        targets: bool = True,
        workers: int = 0,
    ) -> Iterator[Batch]:
        """Consecutive batches of samples start, start+1, ... (forever when stop is None).

        workers > 0 draws the scenes of the next batches in that many processes while this one renders (the
        scenes are the same either way); rendering and targets run here, on `device`.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}", "pass a positive batch size")
        spans = _spans(start, stop, batch_size)
        if workers <= 0:
            for indices in spans:
                yield self.batch(indices, device, targets)
            return
        # fork where there is one (like torch's DataLoader): the workers only run numpy, never torch or CUDA.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            pending: deque = deque()
            for indices in spans:
                pending.append((indices, pool.submit(_draw_scenes, self.seed, self.split, self.config.scene, indices)))
                if len(pending) <= workers:
                    continue
                done, future = pending.popleft()
                yield self._finish(done, future.result(), device, targets)
            while pending:
                done, future = pending.popleft()
                yield self._finish(done, future.result(), device, targets)

    def _finish(self, indices: list[int], scenes: list[Scene], device, targets: bool) -> Batch:
        batch = SceneBatch.collate(scenes, device=device)
        cfg = self.config
        views = render(batch, cfg.height, cfg.width, max_steps=cfg.max_steps)
        return Batch(indices, batch, views, object_targets(batch, cfg.resolution) if targets else None)


def _draw_scenes(seed: int, split: str, config: SceneConfig, indices: list[int]) -> list[Scene]:
    """Scene i is drawn from its own generator, seeded with (seed, split number, i)."""
    return [random_scene(np.random.default_rng([seed, SPLITS.index(split), int(i)]), config) for i in indices]


def _spans(start: int, stop: int | None, size: int) -> Iterator[list[int]]:
    i = start
    while stop is None or i < stop:
        end = i + size if stop is None else min(i + size, stop)
        yield list(range(i, end))
        i = end


def clear_view_scene(
    shapes: list[str],
    colours: list[tuple],
    seed: int,
    height: int,
    width: int,
    config: SceneConfig = SceneConfig(),
    min_share: float = 0.02,
    attempts: int = 1000,
) -> tuple[int, Scene]:
    """The first scene drawn from seeds seed, seed + 1, ... with exactly these shapes and colours in which every
    object is whole in the picture: not occluded (its mask equals its mask rendered alone), clear of the image
    border, and covering at least `min_share` of the image. Returns (the seed used, the scene)."""
    for s in range(seed, seed + attempts):
        scene = random_scene(np.random.default_rng(s), config, shapes, colours)
        if len(scene.objects) != len(shapes):
            continue
        alone = [replace(scene, objects=(o,)) for o in scene.objects]
        views = render(SceneBatch.collate([scene, *alone]), height, width)
        ok = True
        for k in range(len(shapes)):
            single = views.instance[k + 1] == 0
            border = single[0].any() or single[-1].any() or single[:, 0].any() or single[:, -1].any()
            ok &= bool(torch.equal(views.instance[0] == k, single)) and not border
            ok &= float(single.float().mean()) >= min_share
        if ok:
            return s, scene
    raise InputError(f"no clear view of {shapes} in seeds {seed}..{seed + attempts - 1}", "try another seed")
