"""Training of the demo model (engine/train/{train,objectives,targets_latent,model_inputs,ss_encoder,slat_encoder,
demo,export}.py) on the CPU with the "micro" preset: toy networks of the demo's structure on a 16³ grid.

What must hold for the GPU run to be worth its time: the model inputs are exactly the pipeline's, the targets
decode back to the truth, every stage learns (overfits one fixed batch), a run resumes from its checkpoints, and
the exported folder loads through the pipeline and reconstructs a synthetic picture.
"""
from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import MODEL_NAMES, PipelineConfig
from engine.errors import InputError
from engine.frames import opengl_to_p3d
from engine.mesh_extraction import features_to_mesh
from engine.model_store import build
from engine.pipeline import Pipeline
from engine.pose import decode_pose
from engine.preprocess import PreprocessConfig, preprocess_object
from engine.sparse.resample import subdivide
from engine.sparse.tensor import SparseTensor
from engine.train import objectives
from engine.train.colour_readout import slots_error
from engine.train.dataset import DataConfig, SyntheticData
from engine.train.demo import PRESETS
from engine.train.export import config_from_dict, config_to_dict, open_demo
from engine.train.model_inputs import object_inputs
from engine.train.ss_encoder import SSEncoder, normalize_latent_, tokens
from engine.train.targets import canonical_albedo, canonical_sdf
from engine.train.targets_latent import (lattice_points, mesh_targets, object_fields, pose_latents, voxel_coords)
from engine.train.train import STAGE_CLASSES, STAGES, TRAIN_PRESETS, Loop, Run, _scene_batches, main, train

MICRO = TRAIN_PRESETS["micro"]
R = PRESETS["micro"].resolution  # 16


@pytest.fixture(scope="module")
def scenes():
    """Two rendered scenes (48 x 56 px) with their 16³ targets."""
    return SyntheticData(5, "train", DataConfig(height=48, width=56, resolution=R)).batch(range(2))


def _objects(batch, min_pixels: int = 6):
    b, k = torch.nonzero(batch.targets.valid & (batch.masks.flatten(2).sum(-1) >= min_pixels), as_tuple=True)
    return b, k


# ---- inputs and targets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [28, 100])  # down- and up-sampling resizes
def test_batched_inputs_equal_preprocess_object_for_every_object(scenes, size):
    b, k = _objects(scenes)
    rgb = scenes.views.image.permute(0, 3, 1, 2)
    points = opengl_to_p3d(scenes.views.pointmap).permute(0, 3, 1, 2)
    config = PreprocessConfig(size=size)
    batch = object_inputs(rgb, points, scenes.masks[b, k].float(), b, config)
    for i, (bi, ki) in enumerate(zip(b.tolist(), k.tolist())):
        ref = preprocess_object(rgb[bi], scenes.masks[bi, ki].float(), points[bi], config)
        for name, expected in ref.ss.items():
            got = batch.ss[name][i]
            assert torch.equal(torch.isnan(got), torch.isnan(expected[0])), name
            torch.testing.assert_close(got.nan_to_num(0), expected[0].nan_to_num(0), atol=1e-4, rtol=0, msg=name)
        torch.testing.assert_close(batch.pointmap_scale[i], ref.pointmap_scale[0, 0])
        torch.testing.assert_close(batch.pointmap_shift[i], ref.pointmap_shift[0])


def test_pose_latents_decode_back_to_the_true_pose(scenes):
    b, k = _objects(scenes)
    points = opengl_to_p3d(scenes.views.pointmap).permute(0, 3, 1, 2)
    inputs = object_inputs(scenes.views.image.permute(0, 3, 1, 2), points, scenes.masks[b, k].float(), b,
                           PreprocessConfig(size=28))  # fmt: skip
    t = scenes.targets
    latents = pose_latents(t.rotation_matrix[b, k], t.translation[b, k], t.scale[b, k], inputs.pointmap_scale,
                           inputs.pointmap_shift)  # fmt: skip
    assert {n: v.shape[1:] for n, v in latents.items()} == {
        "6drotation_normalized": (1, 6), "translation": (1, 3), "scale": (1, 3), "translation_scale": (1, 1)}
    for i in range(len(b)):
        pose = decode_pose({n: v[i : i + 1] for n, v in latents.items()}, inputs.pointmap_scale[i].expand(1, 3),
                           inputs.pointmap_shift[i][None])  # fmt: skip
        truth = t.pose(int(b[i]), int(k[i]))
        torch.testing.assert_close(pose.rotation_matrix, truth.rotation_matrix, atol=1e-5, rtol=0)
        torch.testing.assert_close(pose.translation, truth.translation, atol=1e-5, rtol=1e-5)
        assert pose.scale == pytest.approx(truth.scale, rel=1e-5)


def test_object_fields_match_the_data_engines_sdf_and_colour(scenes):
    b, k = torch.nonzero(scenes.targets.valid, as_tuple=True)
    g = torch.Generator().manual_seed(0)
    points = torch.rand(len(b), 40, 3, generator=g) - 0.5  # (Q, M, 3) canonical
    sdf, albedo = object_fields(scenes.scenes, b, k, points, chunk=50)
    per_object = torch.zeros(*scenes.targets.valid.shape, 40, 3)
    per_object[b, k] = points
    torch.testing.assert_close(sdf, canonical_sdf(scenes.scenes, per_object)[b, k])
    torch.testing.assert_close(albedo, canonical_albedo(scenes.scenes, per_object)[b, k])


def test_mesh_targets_put_the_extracted_surface_on_the_object():
    """The analytic sdf and colour through mesh_targets and FlexiCubes give a mesh on the true surface: no vertex
    outside the object, a large share on it (the rest lines the inside of the voxel shell), the right colours."""
    batch = SyntheticData(1, "train", DataConfig(height=32, width=32, resolution=R)).batch(range(2))
    b, k = torch.nonzero(batch.targets.valid, as_tuple=True)
    for q in range(len(b)):
        coords = voxel_coords(batch.targets.occupancy[b[q], k[q]][None])
        n = len(coords)
        sdf, albedo = object_fields(batch.scenes, b[q].expand(n), k[q].expand(n), lattice_points(coords[:, 1:], R))
        fine = subdivide(subdivide(SparseTensor(coords, torch.zeros(n, 1)))).coords
        assert torch.equal(fine[:, 1:] // 4, coords[torch.arange(len(fine)) // 64, 1:])  # parent-major children
        target_sdf, target_colour = mesh_targets(fine, coords, sdf, albedo, R)
        feats = torch.zeros(len(fine), 101)
        feats[:, :8] = target_sdf
        colour = torch.cat([target_colour, torch.full_like(target_colour, 0.5)], dim=-1)  # (F, 8, 6)
        feats[:, 53:] = torch.logit(colour.clamp(1e-4, 1 - 1e-4)).reshape(-1, 48)
        mesh = features_to_mesh(fine[:, 1:], feats, 4 * R)
        v = len(mesh.vertices)
        at, colour_at = object_fields(batch.scenes, b[q].expand(v), k[q].expand(v), mesh.vertices[:, None])
        fine_units = at[:, 0] * 4 * R
        assert float(fine_units.max()) <= 0.5  # dual vertices of curved cells sit a little off the surface
        assert float((fine_units.abs() < 0.25).float().mean()) >= 0.4
        assert float((mesh.vertex_attrs[:, :3] - colour_at[:, 0]).abs().mean()) < 0.02


def test_rescaled_latent_leaves_the_decoded_occupancy_unchanged():
    torch.manual_seed(0)
    model = PRESETS["micro"]
    encoder, decoder = SSEncoder(model.ss_encoder), build("ss_decoder", model.pipeline)
    occupancy = torch.rand(2, 1, R, R, R) > 0.6
    with torch.no_grad():
        before = decoder(encoder(occupancy)[0])
        std = encoder(occupancy)[0].transpose(0, 1).flatten(1).std(dim=1)
        normalize_latent_(encoder, decoder, std)
        mean = encoder(occupancy)[0]
        after = decoder(mean)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mean.transpose(0, 1).flatten(1).std(dim=1), torch.ones(8), atol=1e-4, rtol=0)
    assert tokens(mean).shape == (2, 4**3, 8)


def test_training_times_follow_the_samplers_warp():
    g = torch.Generator().manual_seed(0)
    t = objectives.sample_t(20000, 3.0, g)
    assert 0 <= float(t.min()) and float(t.max()) < 1
    assert float((t <= 0.25).float().mean()) == pytest.approx(0.5, abs=0.02)  # warp(0.5) = 0.5 / 2 = 0.25
    x0, x1 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    tt = torch.rand(4, 1, generator=g)
    xt = objectives.interpolate(x0, x1, tt)
    torch.testing.assert_close(xt + (1 - tt) * objectives.velocity_target(x0, x1), x1)


def test_early_times_redraw_the_given_share_near_the_noise_end():
    g = torch.Generator().manual_seed(4)
    t = objectives.sample_t(20000, 1.0, g)
    early = objectives.with_early_times(t, 0.5, 0.1, g)
    changed = early != t
    assert float(changed.float().mean()) == pytest.approx(0.5, abs=0.02)
    assert float(early[changed].max()) < 0.1 and float(early[changed].min()) >= 0
    assert float((early < 0.1).float().mean()) == pytest.approx(0.5 + 0.5 * 0.1, abs=0.02)
    assert torch.equal(objectives.with_early_times(t, 0.0, 0.1, g), t)


def test_the_two_colour_share_sets_the_training_scenes_colouring(tmp_path):
    def share(value: float) -> float:
        run = Run(tmp_path / str(value), replace(MICRO, two_colour_share=value), "cpu", resume=False, log=lambda s: None)
        objects = [o for i in range(40) for o in run.data.scene(i).objects]
        return sum(o.colours[0] != o.colours[1] for o in objects) / len(objects)

    none, default, most = share(0.0), share(MICRO.two_colour_share), share(0.9)
    assert none == 0 and 0.1 < default < 0.5 and most > 0.6, (none, default, most)


def test_condition_dropout_zeroes_whole_objects():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(400, 5, 3, generator=g) + 3
    dropped = objectives.drop_condition(cond, 0.25, g)
    zero_rows = (dropped == 0).all(dim=(1, 2))
    kept_rows = (dropped == cond).all(dim=(1, 2))
    assert bool((zero_rows | kept_rows).all())
    assert float(zero_rows.float().mean()) == pytest.approx(0.25, abs=0.06)


# ---- training --------------------------------------------------------------------------------------------------


def _first_inputs(run, stage):
    """The stage's inputs from the first batch of the run's data that holds a usable object."""
    stream = _scene_batches(run.data, 2, 0, run.device, 0, stage.rendered)
    inputs = None
    while inputs is None:
        inputs = stage.prepare(next(stream))
    return inputs


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_overfits_a_fixed_batch(tmp_path, name):
    run = Run(tmp_path, MICRO, "cpu", resume=False, log=lambda s: None)
    stage = STAGE_CLASSES[name](run)
    loop = Loop(run, stage, budget=1e9)
    inputs = _first_inputs(run, stage)
    losses = []
    for _ in range(20):
        loop.generator.manual_seed(0)  # the same noise and times every step: a fixed objective
        losses.append(float(loop.step(inputs)["loss"]))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_the_condition_fuser_can_learn_at_its_own_rate(tmp_path):
    scale = random.uniform(2.0, 5.0)
    config = replace(MICRO, stage2=replace(MICRO.stage2, condition_lr_scale=scale))
    run = Run(tmp_path, config, "cpu", resume=False, log=lambda s: None)
    stage = STAGE_CLASSES["stage2"](run)
    loop = Loop(run, stage, budget=1e9)
    rest, fuser = loop.optimizer.param_groups
    assert {id(p) for p in fuser["params"]} == {id(p) for p in stage.modules["slat_condition"].parameters()}
    assert len(rest["params"]) + len(fuser["params"]) == len(stage.parameters())
    before = [p.detach().clone() for p in fuser["params"]]
    inputs = _first_inputs(run, stage)
    loop.step(inputs)
    assert fuser["lr"] == pytest.approx(scale * rest["lr"]) and rest["lr"] == pytest.approx(loop.learning_rate())
    assert any(not torch.equal(a, b) for a, b in zip(before, fuser["params"]))  # it is trained
    # the default keeps one group, as the checkpoints written before the setting have
    assert len(stage.param_groups(1.0)) == 1 and MICRO.stage2.condition_lr_scale == 1.0


def test_the_colour_readout_error_takes_the_better_slot_order():
    g = torch.Generator().manual_seed(11)
    slots = torch.rand(5, 2, 3, generator=g)
    noise = torch.rand(5, 2, 3, generator=g) * 0.1
    assert float(slots_error(slots + noise, slots)) == pytest.approx(float(noise.abs().mean()), rel=1e-6)
    assert float(slots_error(slots.flip(1) + noise, slots)) == pytest.approx(float(noise.abs().mean()), rel=1e-6)
    mixed = torch.stack([slots[:, 0], slots[:, 0]], 1)  # one slot right, one wrong: no order repairs it
    assert float(slots_error(mixed, slots)) == pytest.approx(0.5 * float((slots[:, 1] - slots[:, 0]).abs().mean()))


@pytest.mark.parametrize("name", ["stage1", "stage2"])
def test_the_colour_readout_joins_the_loss_and_trains_the_condition_fuser(tmp_path, name):
    weight = random.uniform(0.5, 2.0)
    settings = replace(MICRO.stage(name), colour_readout=weight)
    run = Run(tmp_path, replace(MICRO, **{name: settings}), "cpu", resume=False, log=lambda s: None)
    stage = STAGE_CLASSES[name](run)
    assert "colour_readout" not in STAGE_CLASSES[name](Run(tmp_path / "plain", MICRO, "cpu", False, lambda s: None)).modules
    inputs = _first_inputs(run, stage)
    fuser = stage.modules["ss_condition" if name == "stage1" else "slat_condition"]
    projection = next(fuser.projection_nets.parameters())
    terms = stage.losses(inputs, torch.Generator().manual_seed(1))
    # the loss is the flow's plus the weighted readout error of the fuser's tokens, against the objects' slots
    with torch.no_grad():
        tokens = fuser(inputs["condition"])
        expected = slots_error(stage.modules["colour_readout"](tokens), inputs["colours"])
    torch.testing.assert_close(terms["readout"], expected)
    readout_grad = torch.autograd.grad(terms["loss"], projection, retain_graph=True)[0]
    stage.modules.pop("colour_readout")
    plain = stage.losses(inputs, torch.Generator().manual_seed(1))  # the same noise and times, no readout
    assert "readout" not in plain
    torch.testing.assert_close(terms["loss"] - weight * terms["readout"], plain["loss"], rtol=1e-5, atol=1e-6)
    flow_grad = torch.autograd.grad(plain["loss"], projection)[0]
    assert float((readout_grad - flow_grad).abs().max()) > 1e-3 * float(flow_grad.abs().max())  # it reaches the fuser


def test_the_colour_readout_learns_the_objects_colours_on_a_fixed_batch(tmp_path):
    config = replace(MICRO, stage1=replace(MICRO.stage1, colour_readout=1.0))
    run = Run(tmp_path, config, "cpu", resume=False, log=lambda s: None)
    stage = STAGE_CLASSES["stage1"](run)
    loop = Loop(run, stage, budget=1e9)
    inputs = _first_inputs(run, stage)
    errors = []
    for _ in range(25):
        loop.generator.manual_seed(0)
        errors.append(float(loop.step(inputs)["readout"]))
    assert errors[-1] < 0.7 * errors[0], errors


def test_stage2_starts_from_stage1s_image_branch_with_a_silent_cross_attention(tmp_path):
    train(tmp_path, replace(MICRO, stage1=replace(MICRO.stage1, steps=3)), "cpu", stages=("stage1",),
          log=lambda s: None)  # fmt: skip
    run = Run(tmp_path, MICRO, "cpu", resume=True, log=lambda s: None)
    first = run.final_weights("stage1")["ss_condition"]
    stage = STAGE_CLASSES["stage2"](run)
    second = stage.modules["slat_condition"].state_dict()
    shared = [k for k in second if k == "idx_emb" or k.startswith(("module_list.", "projection_nets."))]
    assert len(shared) == len(second)  # the stage-2 embedder is exactly stage 1's image and mask branch
    for key in shared:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=0, msg=key)
    # A silent cross-attention: the flow's first output does not depend on the condition...
    flow = stage.modules["slat_flow"]
    g = torch.Generator().manual_seed(3)
    coords = torch.cat([torch.zeros(40, 1), torch.randint(0, 16, (40, 3), generator=g)], 1).int().unique(dim=0)
    x = SparseTensor(coords, torch.randn(coords.shape[0], flow.cfg.in_channels, generator=g))
    t = torch.rand(1, generator=g) * 1000
    cond = torch.randn(1, 7, flow.cfg.cond_channels, generator=g)
    torch.nn.init.normal_(flow.out_layer.weight, generator=g)  # (zero-initialised layers would hide everything)
    for block in flow.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[1].weight, generator=g)
    with torch.no_grad():
        assert torch.equal(flow(x, t, cond=cond).feats, flow(x, t, cond=2 * cond).feats)
        for block in flow.blocks:  # ...while its output layer is zero; any non-zero one makes it listen
            torch.nn.init.normal_(block.cross_attn.to_out.weight, generator=g)
        assert not torch.allclose(flow(x, t, cond=cond).feats, flow(x, t, cond=2 * cond).feats)


def test_stage2s_colour_loss_is_the_decoded_colour_error_and_reaches_the_picture(tmp_path):
    run = Run(tmp_path, MICRO, "cpu", resume=False, log=lambda s: None)
    stage = STAGE_CLASSES["stage2"](run)
    inputs = _first_inputs(run, stage)
    g = torch.Generator().manual_seed(5)
    decoder = stage.gs_decoder
    for p in decoder.parameters():  # a decoder with colours that depend on the latent
        p.data = torch.randn(p.shape, generator=g) * 0.2
    coords, albedo = inputs["coords"], inputs["albedo"]
    assert albedo.shape == (coords.shape[0], 3) and float(albedo.min()) >= 0 and float(albedo.max()) <= 1
    x1 = torch.randn(coords.shape[0], stage.std.numel(), generator=g)
    error = stage.decoded_colour_error(coords, x1, albedo)
    # ... what the pipeline's Gaussians show, averaged per voxel, against the voxel's colour
    with torch.no_grad():
        rgb = decoder.decode(SparseTensor(coords, x1 * stage.std + stage.mean)).activated()["color_rgb"]
    expected = (rgb.reshape(coords.shape[0], -1, 3).mean(1) - albedo).abs().mean()
    torch.testing.assert_close(error, expected, rtol=1e-5, atol=1e-6)
    # The loss reaches the picture's branch through the cross-attention (once its output layer is non-zero),
    # and never the frozen decoder.
    for block in stage.modules["slat_flow"].blocks:
        torch.nn.init.normal_(block.cross_attn.to_out.weight, generator=g)
    torch.nn.init.normal_(stage.modules["slat_flow"].out_layer.weight, generator=g)
    projection = next(stage.modules["slat_condition"].projection_nets.parameters())
    grads = []
    for weight in (0.0, 1.0):
        stage.cfg = replace(MICRO, colour_weight=weight)
        terms = stage.losses(inputs, torch.Generator().manual_seed(1))  # the same noise and times
        grads.append(torch.autograd.grad(terms["loss"], projection)[0])
        assert ("colour" in terms) == (weight > 0)  # weight 0 skips the decoder (a third of a step's time)
    assert 0 < float(terms["colour"]) < 1
    assert float((grads[1] - grads[0]).abs().max()) > 1e-3 * float(grads[0].abs().max())
    assert all(not p.requires_grad for p in decoder.parameters())
    assert not any(p is q for p in stage.parameters() for q in decoder.parameters())


def test_a_run_resumes_from_its_checkpoint(tmp_path):
    train(tmp_path, MICRO, "cpu", stages=("ss_vae",), max_steps=3, log=lambda s: None)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["stages"]["ss_vae"]["step"] == 3 and not state["stages"]["ss_vae"]["done"]
    saved = torch.load(tmp_path / "checkpoints" / "ss_vae.pt", weights_only=False)
    assert saved["position"] == 3 * 2  # three batches of two scenes

    with pytest.raises(InputError):  # a second start in the same folder must say --resume
        train(tmp_path, MICRO, "cpu", stages=("ss_vae",), max_steps=1, log=lambda s: None)

    run = Run(tmp_path, MICRO, "cpu", resume=True, log=lambda s: None)
    loop = Loop(run, STAGE_CLASSES["ss_vae"](run), budget=1e9)
    assert loop.progress["step"] == 3 and loop.position == 6
    for name, module in loop.stage.modules.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, saved["modules"][name][key]), key
    assert loop.optimizer.state_dict()["state"][0]["step"] == 3

    train(tmp_path, MICRO, "cpu", resume=True, stages=("ss_vae",), max_steps=2, log=lambda s: None)
    resumed = torch.load(tmp_path / "checkpoints" / "ss_vae.pt", weights_only=False)
    assert resumed["progress"]["step"] == 5 and resumed["position"] == 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A micro run trained through all four stages (a few steps each, see TRAIN_PRESETS) and exported."""
    out = tmp_path_factory.mktemp("micro_run")
    folder = train(out, MICRO, "cpu", log=lambda s: None)
    assert folder is not None
    return folder


def test_export_writes_every_network_once_in_half_precision(exported):
    from safetensors.torch import load_file

    manifest = json.loads((exported / "demo.json").read_text())
    assert set(manifest["files"]) == set(MODEL_NAMES)
    assert config_from_dict(PipelineConfig, manifest["config"]).slat_std == tuple(
        manifest["training"]["stages"]["slat_ae"]["results"]["slat_std"])
    stored = load_file(str(exported / "ss_condition.safetensors"))
    assert not any(k.startswith("module_list.1.") for k in stored)  # the tied DINO copy is not stored
    assert stored["module_list.0.backbone.pos_embed"].dtype == torch.float16
    assert stored["module_list.0.backbone.norm.weight"].dtype == torch.float32
    assert load_file(str(exported / "ss_flow.safetensors"))["latent_mapping.6drotation_normalized.input_layer.weight"
                                                            ].dtype == torch.float16  # fmt: skip


def test_exported_weights_load_through_the_pipeline_and_reconstruct(exported):
    config, provider, identity = open_demo(exported, check=True)
    assert config.preprocess.size == config.ss_condition.dino.input_size
    condition = provider("ss_condition")
    assert torch.equal(condition["module_list.1.backbone.pos_embed"], condition["module_list.0.backbone.pos_embed"])
    pipe = Pipeline.from_source(str(exported), device="cpu")  # a demo folder is recognised by its demo.json
    assert pipe.weights_id == identity
    # A picture the micro run trained on (it cycles over two scenes): a few steps teach it those shapes only.
    data = SyntheticData(MICRO.seed, "train", DataConfig(height=MICRO.image_size, width=MICRO.image_size,
                                                         resolution=R))  # fmt: skip
    batch = data.batch([1])
    masks = [m.numpy() for m in batch.masks[0] if int(m.sum()) >= MICRO.min_pixels][:2]
    image = np.round(batch.views.image[0].numpy() * 255).astype(np.uint8)
    result = pipe.reconstruct(image, masks, pointmap=batch.views.pointmap[0].numpy(), seed=0, postprocess=None)
    assert len(result.objects) == len(masks) >= 1
    for obj in result.objects:
        assert obj.num_voxels > 0 and obj.mesh is not None and len(obj.mesh.faces) > 0
        assert obj.gaussians is not None and np.isfinite(obj.object_to_camera).all()
        assert float(obj.raw["coords"][:, 1:].max()) < R


def test_demo_sizes_keep_the_stage_structure_and_fit_50_mb():
    model = PRESETS["demo"]
    pipeline = model.pipeline
    assert pipeline.preprocess.size == pipeline.ss_condition.dino.img_size == pipeline.ss_condition.dino.input_size
    assert pipeline.ss_flow.resolution == 16 and pipeline.ss_flow.shape_channels == 8 and model.resolution == 64
    assert pipeline.mesh_decoder.trunk.resolution * 4 == pipeline.mesh_resolution == 256
    stored = 0
    for name in MODEL_NAMES:
        with torch.device("meta"):
            module = build(name, pipeline)
        stored += sum(v.numel() for k, v in module.state_dict().items() if not k.startswith("module_list.1."))
    assert stored * 2 <= 50 * 2**20
    for preset in PRESETS.values():
        assert config_from_dict(PipelineConfig, json.loads(json.dumps(config_to_dict(preset.pipeline)))) == preset.pipeline


def test_a_run_from_an_export_trains_stage_2_from_its_networks(exported, tmp_path):
    from safetensors.torch import load_file

    from engine.train.finetune import seed_run

    source = exported.parent  # the micro run folder: its slat_ae checkpoint holds the SLAT encoder
    out = tmp_path / "again"
    seed_run(out, MICRO, exported, source / "checkpoints" / "slat_ae.pt")
    with pytest.raises(InputError):  # never over an existing run
        seed_run(out, MICRO, exported, source / "checkpoints" / "slat_ae.pt")
    run = Run(out, MICRO, "cpu", resume=True, log=lambda s: None)
    stage = STAGE_CLASSES["stage2"](run)
    flow = stage.modules["slat_flow"].state_dict()
    stored = load_file(str(exported / "slat_flow.safetensors"))
    for key, value in stored.items():  # starts from the export's networks, not from stage 1's image branch
        torch.testing.assert_close(flow[key], value.float(), rtol=0, atol=0, msg=key)
    encoder = torch.load(source / "checkpoints" / "slat_ae.pt", weights_only=False)["modules"]["slat_encoder"]
    for key, value in encoder.items():
        torch.testing.assert_close(stage.encoder.state_dict()[key], value, rtol=0, atol=0, msg=key)

    folder = train(out, MICRO, "cpu", resume=True, stages=("stage2",), max_steps=2, log=lambda s: None)
    assert folder is None  # micro's stage 2 has 8 steps
    folder = train(out, MICRO, "cpu", resume=True, stages=("stage2",), log=lambda s: None)
    manifest = json.loads((folder / "demo.json").read_text())
    assert manifest["training"]["from_export"]["folder"] == str(exported)
    assert manifest["training"]["stages"]["stage2"]["step"] == MICRO.stage2.steps
    for name in ("ss_flow", "mesh_decoder"):  # the other networks are the export's, unchanged
        before, after = load_file(str(exported / f"{name}.safetensors")), load_file(str(folder / f"{name}.safetensors"))
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(load_file(str(folder / "slat_flow.safetensors"))["out_layer.weight"],
                           stored["out_layer.weight"])  # fmt: skip


def test_a_run_from_an_export_can_restart_stage_2_as_a_whole_run_would(exported, tmp_path):
    from safetensors.torch import load_file

    from engine.train.finetune import seed_run
    from engine.train.train import _image_branch

    source = exported.parent
    out = tmp_path / "restart"
    seed_run(out, MICRO, exported, source / "checkpoints" / "slat_ae.pt", restart=True)
    assert not (out / "checkpoints" / "stage2.init.pt").exists()
    state = json.loads((out / "state.json").read_text())
    assert state["config"]["stage2"]["lr"] == MICRO.stage2.lr and state["from_export"]["stage2"] == "restarted"
    run = Run(out, MICRO, "cpu", resume=True, log=lambda s: None)
    stage = STAGE_CLASSES["stage2"](run)
    stored = load_file(str(exported / "slat_flow.safetensors"))
    assert not torch.equal(stage.modules["slat_flow"].state_dict()["out_layer.weight"],
                           stored["out_layer.weight"].float())  # fmt: skip
    branch = _image_branch({k: v.float() for k, v in load_file(str(exported / "ss_condition.safetensors")).items()})
    condition = stage.modules["slat_condition"].state_dict()
    for key, value in branch.items():  # the fuser starts from stage 1's image branch, as in a whole run
        torch.testing.assert_close(condition[key], value, rtol=0, atol=0, msg=key)
    folder = train(out, MICRO, "cpu", resume=True, stages=("stage2",), log=lambda s: None)
    manifest = json.loads((folder / "demo.json").read_text())
    assert manifest["training"]["from_export"]["stage2"] == "restarted"
    assert manifest["training"]["stages"]["stage2"]["step"] == MICRO.stage2.steps
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--restart-stage2"])  # only with --from-export


def test_a_stage_2_continued_with_the_colour_readout_exports_the_pipeline_networks_only(exported, tmp_path):
    from engine.train.finetune import seed_run

    config = replace(MICRO, stage2=replace(MICRO.stage2, colour_readout=1.0, steps=3))
    out = tmp_path / "readout"
    seed_run(out, config, exported, exported.parent / "checkpoints" / "slat_ae.pt")  # continues the export's stage 2
    folder = train(out, config, "cpu", resume=True, stages=("stage2",), log=lambda s: None)
    assert set(json.loads((folder / "demo.json").read_text())["files"]) == set(MODEL_NAMES)
    assert "colour_readout" in torch.load(out / "checkpoints" / "stage2.pt", weights_only=False)["modules"]


def test_a_run_from_an_export_refuses_a_file_without_the_slat_encoder(exported, tmp_path):
    from engine.errors import WeightsError
    from engine.train.finetune import seed_run

    wrong = tmp_path / "wrong.pt"
    torch.save({"modules": {"gs_decoder": {}}}, wrong)
    with pytest.raises(WeightsError, match="no SLAT encoder"):
        seed_run(tmp_path / "run", MICRO, exported, wrong)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read"):
        seed_run(tmp_path / "run", MICRO, exported, tmp_path / "junk.pt")
    assert not (tmp_path / "run" / "state.json").exists()


def test_set_overrides_training_settings_by_name_and_type():
    from engine.errors import InputError
    from engine.train.train import TrainConfig, with_settings

    base = TrainConfig()
    early = round(random.uniform(0.55, 0.95), 3)
    config = with_settings(base, [f"early_share={early}", "stage2.lr=1e-3", "stage2.steps=7", "two_colour_share=0.6",
                                  "workers=3", "scene_count=none"])  # fmt: skip
    assert config.early_share == early and config.two_colour_share == 0.6 and config.workers == 3
    assert config.stage2.lr == 1e-3 and config.stage2.steps == 7 and config.stage2.share == base.stage2.share
    assert config.stage1 == base.stage1 and config.scene_count is None
    assert with_settings(base, ["stage2.steps=none"]).stage2.steps is None
    for bad in ("early_share", "early_share=", "colour=2", "stage3.lr=1", "stage2.foo=1", "stage2=1",
                "workers=2.5", "stage2.lr.x=1"):
        with pytest.raises(InputError):
            with_settings(base, [bad])


def test_the_command_line_seeds_a_restarted_stage_2_with_the_set_values(exported, tmp_path):
    source = exported.parent
    out = tmp_path / "variant"
    main(["--out", str(out), "--preset", "micro", "--device", "cpu", "--from-export", str(exported),
          "--slat-encoder", str(source / "checkpoints" / "slat_ae.pt"), "--restart-stage2",
          "--set", "early_share=0.8", "--set", "stage2.lr=2e-3", "--stages", "stage2", "--max-steps", "1"])
    state = json.loads((out / "state.json").read_text())
    assert state["config"]["early_share"] == 0.8 and state["config"]["stage2"]["lr"] == 2e-3
    assert state["stages"]["stage2"]["step"] == 1  # it trained with them
    with pytest.raises(SystemExit):  # a resumed run keeps its saved settings
        main(["--out", str(out), "--resume", "--set", "early_share=0.5"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "y"), "--set", "nonsense=1"])
