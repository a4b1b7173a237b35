"""GLB export, read back with a minimal reader: chunks, accessors, bounds, the y-up axes, the embedded PNG."""
from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from engine.assets import Mesh
from engine.errors import InputError
from engine.frames import gltf_to_object
from engine.export.glb import glb_bytes, scene_glb_bytes, srgb_to_linear, write_glb
from tests.engine.export.glb_reader import accessor, read_glb

@pytest.fixture(scope="module")
def textured() -> Mesh:
    g = np.random.default_rng(0)
    v = g.uniform(-0.5, 0.5, (200, 3)).astype(np.float32)
    v[0] = [0.0, 0.0, 0.5]  # the top of the object (z-up)
    f = g.integers(0, 200, (300, 3)).astype(np.int32)
    return Mesh(vertices=v, faces=f, vertex_colors=g.random((200, 3)).astype(np.float32),
                uvs=g.random((200, 2)).astype(np.float32), texture=g.integers(0, 256, (64, 32, 3), dtype=np.uint8))


def test_textured_glb_round_trips(textured, tmp_path):
    path = write_glb(tmp_path / "object.glb", textured, name="chair")
    gltf, binary = read_glb(path.read_bytes())
    assert gltf["asset"]["version"] == "2.0" and gltf["nodes"][0]["name"] == "chair"
    primitive = gltf["meshes"][0]["primitives"][0]
    attributes = primitive["attributes"]
    assert set(attributes) == {"POSITION", "NORMAL", "TEXCOORD_0"}  # no COLOR_0 on top of a texture
    position = accessor(gltf, binary, attributes["POSITION"])
    assert position.shape == (200, 3)
    pos_accessor = gltf["accessors"][attributes["POSITION"]]
    np.testing.assert_allclose(pos_accessor["min"], position.min(0))
    np.testing.assert_allclose(pos_accessor["max"], position.max(0))
    # y-up: the engine's (x, y, z) is stored as (x, z, -y); the top of the object is the largest y
    np.testing.assert_allclose(position, np.stack([textured.vertices[:, 0], textured.vertices[:, 2],
                                                   -textured.vertices[:, 1]], 1))
    np.testing.assert_allclose(gltf_to_object(position), textured.vertices)
    assert np.argmax(position[:, 1]) == 0
    normal = accessor(gltf, binary, attributes["NORMAL"])
    np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, atol=1e-5)
    uv = accessor(gltf, binary, attributes["TEXCOORD_0"])
    np.testing.assert_allclose(uv[:, 0], textured.uvs[:, 0])
    np.testing.assert_allclose(uv[:, 1], 1.0 - textured.uvs[:, 1], atol=1e-7)  # glTF's origin is top-left
    indices = accessor(gltf, binary, primitive["indices"])
    assert gltf["accessors"][primitive["indices"]]["count"] == 900
    np.testing.assert_array_equal(indices.reshape(-1, 3), textured.faces)
    # the material's base colour is the embedded PNG, pixel for pixel
    material = gltf["materials"][primitive["material"]]
    texture_index = material["pbrMetallicRoughness"]["baseColorTexture"]["index"]
    image = gltf["images"][gltf["textures"][texture_index]["source"]]
    view = gltf["bufferViews"][image["bufferView"]]
    png = binary[view["byteOffset"]:view["byteOffset"] + view["byteLength"]]
    assert image["mimeType"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), textured.texture)
    assert gltf["buffers"][0]["byteLength"] == len(binary) - (-gltf["buffers"][0]["byteLength"] % 4)


def test_vertex_coloured_glb_stores_linear_colour(textured):
    mesh = Mesh(textured.vertices, textured.faces, textured.vertex_colors)
    gltf, binary = read_glb(glb_bytes(mesh))
    attributes = gltf["meshes"][0]["primitives"][0]["attributes"]
    assert "TEXCOORD_0" not in attributes and "images" not in gltf
    color = accessor(gltf, binary, attributes["COLOR_0"])
    np.testing.assert_allclose(color, srgb_to_linear(mesh.vertex_colors), atol=1e-6)
    assert color.mean() < mesh.vertex_colors.mean()  # decoding darkens mid-tones


def test_a_plain_mesh_gets_a_grey_material_and_big_meshes_get_32_bit_indices():
    g = np.random.default_rng(1)
    mesh = Mesh(g.random((70_000, 3)).astype(np.float32), g.integers(0, 70_000, (10, 3)).astype(np.int32))
    gltf, binary = read_glb(glb_bytes(mesh))
    primitive = gltf["meshes"][0]["primitives"][0]
    assert gltf["materials"][0]["pbrMetallicRoughness"]["baseColorFactor"] == [0.8, 0.8, 0.8, 1.0]
    assert gltf["accessors"][primitive["indices"]]["componentType"] == 5125
    np.testing.assert_array_equal(accessor(gltf, binary, primitive["indices"]).reshape(-1, 3), mesh.faces)


def test_unexportable_meshes_are_input_errors(textured):
    with pytest.raises(InputError, match="empty"):
        glb_bytes(Mesh(np.zeros((3, 3), np.float32), np.zeros((0, 3), np.int32)))
    bad = textured.vertices.copy()
    bad[3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        glb_bytes(Mesh(bad, textured.faces))
    with pytest.raises(InputError, match="UVs"):
        glb_bytes(Mesh(textured.vertices, textured.faces, texture=textured.texture))


def test_meshes_that_would_make_an_invalid_file_are_input_errors(textured):
    # each of these would reach the file as a glTF validator error
    past = textured.faces.copy()
    past[7, 1] = len(textured.vertices)
    with pytest.raises(InputError, match="vertex indices 0..200 but the mesh has 200 vertices"):
        glb_bytes(Mesh(textured.vertices, past))
    with pytest.raises(InputError, match=r"vertex_colors are \(199, 3\), expected \(200, 3\)"):
        glb_bytes(Mesh(textured.vertices, textured.faces, textured.vertex_colors[:-1]))
    uvs = textured.uvs.copy()
    uvs[11, 0] = np.inf
    with pytest.raises(InputError, match="uvs hold NaN or infinite"):
        glb_bytes(Mesh(textured.vertices, textured.faces, uvs=uvs, texture=textured.texture))
    colors = textured.vertex_colors.copy()
    colors[4, 2] = np.nan
    with pytest.raises(InputError, match="vertex_colors hold NaN"):
        glb_bytes(Mesh(textured.vertices, textured.faces, colors))
    glb_bytes(Mesh(textured.vertices, textured.faces, colors, textured.uvs, textured.texture))  # colours unused
    placement = np.eye(4)
    placement[1, 3] = np.nan
    with pytest.raises(InputError, match="placement of 'chair' is not a finite 4x4"):
        scene_glb_bytes([(textured, placement, "chair")])


def test_a_scene_glb_places_each_object_by_its_object_to_camera():
    from engine.assets import Mesh
    from engine.export.glb import scene_glb_bytes

    rng = np.random.default_rng(5)
    tri = Mesh(rng.random((4, 3)).astype(np.float32) - 0.5, np.array([[0, 1, 2], [0, 2, 3]], np.int32),
               vertex_colors=rng.random((4, 3)).astype(np.float32))
    m = np.eye(4)
    m[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] * 0.7
    m[:3, 3] = [0.2, -0.1, -2.5]
    gltf, binary = read_glb(scene_glb_bytes([(tri, m, "a"), (tri, np.eye(4), "b")]))
    assert [n["name"] for n in gltf["nodes"]] == ["a", "b"] and len(gltf["materials"]) == 2
    node = np.array(gltf["nodes"][0]["matrix"]).reshape(4, 4).T  # column-major in the file
    acc = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    view = gltf["bufferViews"][acc["bufferView"]]
    stored = np.frombuffer(binary, np.float32, acc["count"] * 3, view["byteOffset"]).reshape(-1, 3)
    placed = (np.c_[stored, np.ones(4)] @ node.T)[:, :3]
    np.testing.assert_allclose(placed, (np.c_[tri.vertices, np.ones(4)] @ m.T)[:, :3], atol=1e-6)
