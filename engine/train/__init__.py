"""Training of the demo model (issue 8). Part 1, the synthetic data engine:

- `shapes`: procedural objects as SDFs in the canonical object frame (defined there);
- `scenes`: random scenes of a few objects on a ground plane and a random camera; `SceneBatch` tensors;
- `render`: batched sphere tracing -> RGB, albedo, instance ids, depth, pointmap, intrinsics;
- `targets`: per-object 64^3 occupancy, pose in the model camera frame, colours;
- `dataset`: `SyntheticData(seed, split)`, deterministic per sample, and its batch generator.

Part 2, training (`python -m engine.train --out DIR --minutes 20 --device cuda [--resume]`):
- `demo`: the demo sizes; `ss_encoder`, `slat_encoder`: the training-only encoders;
- `objectives`: flow matching with condition dropout; `targets_latent`, `model_inputs`: model targets and inputs;
- `train`: the four stages with checkpoints and resume; `export`: the weights folder the pipeline loads
  (`demo.json` + safetensors; `Pipeline.from_source("demo")` or the folder's path).
"""
