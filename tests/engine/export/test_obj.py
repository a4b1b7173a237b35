"""OBJ + MTL + PNG export: the files reference each other and hold the mesh, y-up."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.assets import Mesh
from engine.errors import InputError
from engine.export.obj import write_obj


def parse_obj(text: str):
    v, vt, vn, f, refs = [], [], [], [], {}
    for line in text.splitlines():
        head, _, rest = line.partition(" ")
        if head == "v":
            v.append([float(x) for x in rest.split()])
        elif head == "vt":
            vt.append([float(x) for x in rest.split()])
        elif head == "vn":
            vn.append([float(x) for x in rest.split()])
        elif head == "f":
            f.append([[int(i) if i else 0 for i in corner.split("/")] for corner in rest.split()])
        elif head in ("mtllib", "usemtl"):
            refs[head] = rest
    return np.array(v), np.array(vt), np.array(vn), np.array(f), refs


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    g = np.random.default_rng(0)
    return Mesh(vertices=g.uniform(-0.5, 0.5, (50, 3)).astype(np.float32),
                faces=g.integers(0, 50, (80, 3)).astype(np.int32),
                vertex_colors=g.random((50, 3)).astype(np.float32),
                uvs=g.random((50, 2)).astype(np.float32),
                texture=g.integers(0, 256, (16, 8, 3), dtype=np.uint8))


def test_textured_obj_references_resolve_and_hold_the_mesh(mesh, tmp_path):
    paths = write_obj(tmp_path / "thing.obj", mesh)
    assert [p.name for p in paths] == ["thing.obj", "thing.mtl", "thing.png"]
    v, vt, vn, f, refs = parse_obj(paths[0].read_text())
    mtl = (tmp_path / refs["mtllib"]).read_text()
    assert f"newmtl {refs['usemtl']}" in mtl
    texture_name = [line.split(" ", 1)[1] for line in mtl.splitlines() if line.startswith("map_Kd")][0]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / texture_name).convert("RGB")), mesh.texture)
    np.testing.assert_allclose(v, np.stack([mesh.vertices[:, 0], mesh.vertices[:, 2], -mesh.vertices[:, 1]], 1),
                               atol=1e-6)
    np.testing.assert_allclose(vt, mesh.uvs, atol=1e-6)
    assert vn.shape == v.shape and f.shape == (80, 3, 3)
    np.testing.assert_array_equal(f[:, :, 0] - 1, mesh.faces)
    np.testing.assert_array_equal(f[:, :, 1], f[:, :, 0])
    assert f.min() >= 1 and f.max() <= len(v)


def test_untextured_obj_carries_vertex_colours(mesh, tmp_path):
    paths = write_obj(tmp_path / "plain.obj", Mesh(mesh.vertices, mesh.faces, mesh.vertex_colors))
    assert [p.name for p in paths] == ["plain.obj", "plain.mtl"]
    v, vt, _, f, _ = parse_obj(paths[0].read_text())
    assert v.shape == (50, 6) and vt.size == 0
    np.testing.assert_allclose(v[:, 3:], mesh.vertex_colors, atol=1e-4)
    np.testing.assert_array_equal(f[:, :, 0] - 1, mesh.faces)
    assert "map_Kd" not in paths[1].read_text()


def test_a_path_without_obj_suffix_is_an_input_error(mesh, tmp_path):
    with pytest.raises(InputError, match=".obj"):
        write_obj(tmp_path / "thing.glb", mesh)
