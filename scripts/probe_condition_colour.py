"""How much of an object's colour do a condition fuser's tokens carry? A linear probe on held-out images.

    .venv/bin/python scripts/probe_condition_colour.py --weights weights/demo [--images 800] [--network slat_condition]

For the one-colour objects of the data engine's "test" split (scenes 0 … N−1, at least 24 visible pixels), the
fuser's tokens are pooled (mean and max over tokens) and a ridge regression from them to the object's colour is fitted
on 70 % of the objects and scored on the rest: the median absolute RGB error (0–1) for three ridge strengths. Two
references bracket it: predicting the training objects' mean colour (no information) and the object's brightest
masked pixel (the picture's own information: the renderer lights with white light, so a pixel that faces the light
shows the colour itself).

Stage 2 must read colours from these tokens; a probe error far above the brightest pixel's says its image branch
has not learnt them (session 6: stage 1's fuser 0.151, stage 2's 0.072, the brightest pixel 0.007).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.model_store import build  # noqa: E402
from engine.train.dataset import DataConfig, SyntheticData  # noqa: E402
from engine.train.export import open_demo  # noqa: E402
from engine.train.train import _object_batch  # noqa: E402

INPUTS = {"slat_condition": "slat", "ss_condition": "ss"}  # which of `object_inputs`' dicts each fuser reads
MIN_PIXELS = 24


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="a demo weights folder")
    parser.add_argument("--images", type=int, default=800, help="held-out images (8 per batch)")
    parser.add_argument("--network", choices=sorted(INPUTS), default="slat_condition")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    config, provide, _ = open_demo(args.weights)
    fuser = build(args.network, config)
    fuser.load_state_dict({k: v.float() for k, v in provide(args.network).items()})
    fuser.to(args.device).eval()
    data = SyntheticData(0, "test", DataConfig(height=160, width=160, resolution=64))
    pooled, colours, brightest = [], [], []
    with torch.inference_mode():
        for start in range(0, args.images, 8):
            batch = data.batch(list(range(start, min(start + 8, args.images))))
            slots = batch.scenes.object_colours  # (B, K, 2, 3)
            one_colour = torch.isclose(slots[:, :, 0], slots[:, :, 1]).all(-1)
            keep = batch.targets.valid & one_colour & (batch.masks.flatten(2).sum(-1) >= MIN_PIXELS)
            b, k = torch.nonzero(keep, as_tuple=True)
            if b.numel() == 0:
                continue
            inputs = getattr(_object_batch(batch, b, k, config.preprocess), INPUTS[args.network])
            tokens = fuser({name: x.to(args.device) for name, x in inputs.items()}).float().cpu()  # (Q, T, C)
            pooled.append(torch.cat([tokens.mean(1), tokens.amax(1)], 1).numpy())
            colours.append(batch.scenes.object_colours[b, k, 0].numpy())
            pixels = batch.views.image[b].flatten(1, 2)  # (Q, HW, 3)
            inside = batch.masks[b, k].flatten(1)
            brightness = torch.where(inside, pixels.sum(-1), torch.full_like(pixels[..., 0], -1.0))
            brightest.append(pixels[torch.arange(b.numel()), brightness.argmax(1)].numpy())
    x, y, pixel = np.concatenate(pooled), np.concatenate(colours), np.concatenate(brightest)
    n = x.shape[0]
    if n < 20:
        parser.exit(2, f"error: only {n} one-colour objects in {args.images} images; give more --images\n")
    fit = np.arange(n) < int(0.7 * n)
    mean, std = x[fit].mean(0), x[fit].std(0) + 1e-6
    xn = (x - mean) / std
    print(f"{args.network} of {args.weights}: {n} one-colour objects ({fit.sum()} fitted, {(~fit).sum()} scored)")
    print("| predictor | median abs RGB error |\n| --- | ---: |")
    print(f"| training objects' mean colour | {_error(np.broadcast_to(y[fit].mean(0), y[~fit].shape), y[~fit]):.3f} |")
    for ridge in (1.0, 10.0, 100.0):
        a = xn[fit]
        w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (y[fit] - y[fit].mean(0)))
        probe = _error(xn[~fit] @ w + y[fit].mean(0), y[~fit])
        print(f"| linear probe on pooled tokens, ridge {ridge:g} | {probe:.3f} |")
    print(f"| brightest masked pixel | {_error(pixel[~fit], y[~fit]):.3f} |")


def _error(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.median(np.abs(predicted - truth).mean(1)))


if __name__ == "__main__":
    main()
