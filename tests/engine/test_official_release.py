"""The small official-format release (shared/parity/official_format_tiny) through the same path a real download
takes: YAML configs + Lightning/raw .ckpt files -> our cache -> the pipeline; with the recorded noise injected it
reproduces what the official code computed, through the Python API and through the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.frames import gltf_to_object, p3d_to_opengl
from engine.pipeline import Pipeline
from tests.engine.parity import assert_close
from tests.paths import PARITY, REPO

FOLDER = PARITY / "official_format_tiny"
MODALITIES = ("6drotation_normalized", "scale", "shape", "translation", "translation_scale")


@pytest.fixture(scope="module")
def io():
    return load_file(str(FOLDER / "io.safetensors"))


def _inputs(io):
    rgba = io["input.rgba_uint8"].numpy()
    pointmap = p3d_to_opengl(io["input.pointmap_hw3"].numpy())  # the API takes the OpenGL camera frame
    noise = {"stage1": {m: io[f"input.noise.stage1.{m}"] for m in MODALITIES}, "stage2": io["input.noise.stage2"]}
    return rgba[:, :, :3], rgba[:, :, 3], pointmap, noise


def _check(raw: dict[str, torch.Tensor], pose, mesh, gaussians, io) -> None:
    out = {k[len("output."):]: v for k, v in io.items() if k.startswith("output.")}
    assert_close(raw["cond_ss"], out["cond.ss_tokens"], 1e-4, 1e-4, "ss condition tokens")
    assert_close(raw["cond_slat"], out["cond.slat_tokens"], 1e-4, 1e-4, "slat condition tokens")
    for m in MODALITIES:
        assert_close(raw[f"stage1.{m}"], out[f"stage1.x1.{m}"], 1e-4, 1e-4, f"stage-1 {m}")
    assert_close(raw["ss_logits"], out["stage1.ss_logits"], 1e-4, 1e-4, "ss logits")
    assert torch.equal(raw["coords_original"], out["stage1.coords_original"])
    assert torch.equal(raw["coords"], out["stage1.coords"])
    assert_close(torch.as_tensor(pose["rotation"]), out["pose.rotation"][0], 1e-4, 1e-4, "rotation")
    assert_close(torch.as_tensor(pose["translation"]), out["pose.translation"][0], 1e-4, 1e-4, "translation")
    assert_close(torch.full((3,), pose["scale"]), out["pose.scale"][0], 1e-4, 1e-4, "scale")
    assert_close(raw["stage2.x1_normalized"], out["stage2.x1_normalized"], 1e-4, 1e-4, "stage-2 latent")
    assert_close(raw["slat_feats"], out["stage2.slat_feats"], 1e-4, 1e-4, "slat features")
    for name, ours in (("xyz", gaussians["xyz"]), ("color_rgb", gaussians["colors"]), ("scaling", gaussians["scaling"]),
                       ("opacity", gaussians["opacity"].reshape(-1, 1))):
        assert_close(torch.as_tensor(np.array(ours)), out[f"gaussian.{name}"], 1e-4, 1e-4, f"gaussian {name}")
    rot = torch.nn.functional.normalize(torch.as_tensor(np.array(gaussians["rotation"])), dim=-1)
    assert_close(rot, out["gaussian.rotation"], 1e-4, 1e-4, "gaussian rotation")
    assert_close(torch.as_tensor(np.array(mesh["vertices"])), out["mesh.vertices"], 1e-4, 1e-4, "mesh vertices")
    assert torch.equal(torch.as_tensor(np.array(mesh["faces"])).int(), out["mesh.faces"]), "mesh faces"
    assert_close(raw["mesh.vertex_attrs"], out["mesh.vertex_attrs"], 1e-3, 1e-3, "mesh vertex attributes")


def test_the_release_folder_reproduces_the_official_run_through_the_api(io, tmp_path):
    image, mask, pointmap, noise = _inputs(io)
    pipe = Pipeline.from_source(str(FOLDER), device="cpu", dtype="float32", cache_dir=tmp_path)
    result = pipe.reconstruct(image, [mask], pointmap=pointmap, seed=4242, noise=[noise], postprocess=None,
                              seal_mesh=False)
    obj = result.objects[0]
    pose = {"rotation": obj.pose.rotation, "translation": obj.pose.translation, "scale": obj.pose.scale}
    mesh = {"vertices": obj.mesh.vertices, "faces": obj.mesh.faces}
    g = obj.gaussians
    gaussians = {"xyz": g.xyz, "colors": g.colors, "scaling": g.scaling, "opacity": g.opacity, "rotation": g.rotation}
    _check(obj.raw, pose, mesh, gaussians, io)
    # A second load comes from the converted cache (memory-mapped safetensors) and gives the same numbers.
    again = Pipeline.from_source(str(FOLDER), device="cpu", dtype="float32", cache_dir=tmp_path)
    second = again.reconstruct(image, [mask], pointmap=pointmap, seed=4242, noise=[noise], outputs=("gaussians",))
    np.testing.assert_array_equal(second.objects[0].gaussians.xyz, g.xyz)
    assert any(tmp_path.rglob("*.safetensors"))


def test_the_release_folder_reproduces_the_official_run_through_the_cli(io, tmp_path):
    from PIL import Image

    image, mask, pointmap, _ = _inputs(io)
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    np.save(tmp_path / "pointmap.npy", pointmap)
    out = tmp_path / "out"
    env = {**os.environ, "THREEDFY_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "engine", "reconstruct", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"),
           "--weights", str(FOLDER), "--out", str(out), "--seed", "4242", "--pointmap", str(tmp_path / "pointmap.npy"),
           "--noise", str(FOLDER / "io.safetensors"), "--device", "cpu", "--dtype", "float32", "--save-raw",
           "--raw-mesh", "--official-mesh"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "[geometry] 100%" in proc.stderr
    poses = json.loads((out / "poses.json").read_text())
    obj = poses["objects"][0]
    raw = load_file(str(out / "object_01.raw.safetensors"))
    model = obj["model_frame"]
    pose = {"rotation": model["rotation_wxyz"], "translation": model["translation"], "scale": model["scale"]}
    from engine.export.glb import linear_to_srgb
    from tests.engine.export.glb_reader import read_glb_mesh

    glb = read_glb_mesh(out / "object_01.glb")
    ply = _read_ply(out / "object_01.ply")
    mesh = {"vertices": gltf_to_object(glb["positions"]), "faces": glb["indices"].reshape(-1, 3)}
    gaussians = {"xyz": ply[:, 0:3], "colors": 0.28209479177387814 * ply[:, 6:9] + 0.5,
                 "scaling": np.exp(ply[:, 10:13]), "opacity": 1 / (1 + np.exp(-ply[:, 9])), "rotation": ply[:, 13:17]}
    _check(raw, pose, mesh, gaussians, io)
    # The GLB is y-up as glTF requires; its COLOR_0 is linear (glTF's rule): back to display values it gives the
    # official vertex colours (which upstream writes as uint8).
    assert_close(torch.as_tensor(np.array(glb["positions"])), io["output.glb.vertices_yup"], 1e-4, 1e-4, "glb vertices")
    display = np.round(linear_to_srgb(glb["colors"]) * 255)
    expected = io["output.glb.vertex_colors_rgba_uint8"].numpy()[:, :3].astype(float)
    assert np.abs(display - expected).max() <= 1
    assert (out / "scene.glb").is_file()


def _read_ply(path) -> np.ndarray:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode()
    count = int(next(line.split()[-1] for line in header.splitlines() if line.startswith("element vertex")))
    fields = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    assert fields[:3] == ["x", "y", "z"] and len(fields) == 17, fields
    return np.frombuffer(data[end:], dtype="<f4", count=count * 17).reshape(count, 17)
