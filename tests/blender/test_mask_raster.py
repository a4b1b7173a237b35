"""scene/mask_raster.py and scene/blender_mask.py: Blender Mask splines -> the pixels Blender itself would fill.

Known shapes (a Bezier circle, a polygon) are checked against their analytic pixels; a mask with layers, holes,
blend modes and inversion is checked against Blender's own rasteriser (the compositor's Mask node), for a wide and
a tall picture.
"""
from __future__ import annotations

import math
import os
import tempfile

import bpy
import numpy as np
import pytest

from scene import blender_mask, mask_raster
from tests.blender.support import iou, rasterize

KAPPA = 4 * (math.sqrt(2) - 1) / 3  # handle length of a four-piece cubic Bezier circle, per unit radius


@pytest.fixture
def empty_scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    return bpy.context.scene


def _spline(layer, points, handles=None, handle_type="VECTOR", cyclic=True):
    """A spline through `points` (Mask frame); FREE `handles` [(left, right), ...] when given."""
    spline = layer.splines.new()
    spline.points.add(len(points) - 1)
    for point, co in zip(spline.points, points):
        point.co = co
        point.handle_type = handle_type if handles is None else "FREE"
    if handles is not None:
        for point, (left, right) in zip(spline.points, handles):
            point.handle_left, point.handle_right = left, right
    spline.use_cyclic = cyclic
    return spline


def _circle(layer, centre, radius):
    cx, cy = centre
    k = KAPPA * radius
    points = [(cx + radius, cy), (cx, cy + radius), (cx - radius, cy), (cx, cy - radius)]  # counter-clockwise
    tangents = [(0, 1), (-1, 0), (0, -1), (1, 0)]
    handles = [((x - tx * k, y - ty * k), (x + tx * k, y + ty * k)) for (x, y), (tx, ty) in zip(points, tangents)]
    return _spline(layer, points, handles)


def _pixel_centres(width, height):
    v, u = np.mgrid[0:height, 0:width]
    return u + 0.5, v + 0.5


@pytest.mark.parametrize("size", [(64, 48), (48, 64)])
def test_a_bezier_circle_fills_the_disc_it_draws_over_the_picture(empty_scene, size):
    width, height = size
    mask = bpy.data.masks.new("Disc")
    _circle(mask.layers.new(name="Layer"), centre=(0.55, 0.45), radius=0.2)

    got = blender_mask.rasterize_mask(mask, width, height) > 0.5

    # The Mask frame: the longer side spans [0, 1], the shorter one is centred, y up.
    side = max(width, height)
    centre_u, centre_v = width / 2 + 0.05 * side, height / 2 + 0.05 * side
    u, v = _pixel_centres(width, height)
    disc = (u - centre_u) ** 2 + (v - centre_v) ** 2 <= (0.2 * side) ** 2
    assert disc.sum() > 300 and iou(got, disc) >= 0.99


def test_a_polygon_of_vector_points_fills_its_straight_sided_shape(empty_scene):
    width, height = 64, 48
    corners = [(0.2, 0.3), (0.8, 0.25), (0.65, 0.7), (0.3, 0.6)]
    mask = bpy.data.masks.new("Quad")
    _spline(mask.layers.new(name="Layer"), corners)

    got = blender_mask.rasterize_mask(mask, width, height) > 0.5

    pixels = mask_raster.mask_to_pixels(np.array(corners), width, height)
    expected = rasterize(np.stack([pixels[[0, 1, 2]], pixels[[0, 2, 3]]]), width, height)
    assert expected.sum() > 500 and iou(got, expected) >= 0.99


def test_an_open_spline_is_filled_closed_and_a_spline_without_fill_covers_nothing(empty_scene):
    mask = bpy.data.masks.new("U")
    layer = mask.layers.new(name="Layer")
    spline = _spline(layer, [(0.1, 0.9), (0.1, 0.1), (0.9, 0.1), (0.9, 0.9)], cyclic=False)
    assert blender_mask.rasterize_mask(mask, 40, 40)[20, 20] == 1.0
    spline.use_fill = False
    assert blender_mask.rasterize_mask(mask, 40, 40).max() == 0.0


@pytest.mark.parametrize("size", [(64, 48), (40, 56)])
def test_layers_blend_modes_and_inversion_match_blenders_own_rasteriser(empty_scene, size):
    width, height = size
    mask = bpy.data.masks.new("Composite")
    blob = mask.layers.new(name="Blob")
    _circle(blob, (0.45, 0.5), 0.3)
    _spline(blob, [(0.1, 0.1), (0.4, 0.15), (0.3, 0.35)], handle_type="AUTO")
    cut = mask.layers.new(name="Cut")
    cut.blend = "SUBTRACT"
    _spline(cut, [(0.6, 0.2), (0.9, 0.2), (0.9, 0.8), (0.6, 0.8)])
    corner = mask.layers.new(name="Corner")
    corner.blend, corner.invert = "LIGHTEN", True
    _spline(corner, [(-0.2, -0.2), (0.95, -0.2), (0.95, 0.9), (-0.2, 0.9)])
    hidden = mask.layers.new(name="Hidden")
    hidden.hide_render = True
    _circle(hidden, (0.5, 0.5), 0.45)

    got = blender_mask.rasterize_mask(mask, width, height)
    blender = _compositor_render(mask, width, height)

    assert 0.1 < (blender > 0.5).mean() < 0.9  # a real shape, not an empty or full frame
    assert iou(got > 0.5, blender > 0.5) >= 0.99


def test_a_spline_inside_another_cuts_a_hole_only_with_the_layers_holes_option(empty_scene):
    width, height = 128, 96
    mask = bpy.data.masks.new("Ring")
    layer = mask.layers.new(name="Layer")
    _circle(layer, (0.45, 0.5), 0.3)
    _spline(layer, [(0.35, 0.4), (0.55, 0.42), (0.5, 0.6)], handle_type="AUTO")
    assert blender_mask.rasterize_mask(mask, width, height)[48, 60] == 1.0  # by default splines add up

    layer.use_fill_holes = True
    got = blender_mask.rasterize_mask(mask, width, height)
    blender = _compositor_render(mask, width, height)
    assert got[48, 60] == 0.0 and blender[48, 60] == 0.0
    # Blender draws a hole's edge about a pixel into the hole (an anti-aliasing band); we do not.
    assert iou(got > 0.5, blender > 0.5) >= 0.98


def test_blend_modes_mix_values_as_blender_does():
    full = mask_raster.MaskSpline(np.array([[-1, -1], [2, -1], [2, 2], [-1, 2.0]]),
                                  *[np.array([[-1, -1], [2, -1], [2, 2], [-1, 2.0]])] * 2)
    base = mask_raster.MaskLayer([full], alpha=0.5)  # value 0.5 everywhere

    def value(blend, alpha=0.6, invert=False, covered=True):
        layer = mask_raster.MaskLayer([full] if covered else [], blend=blend, alpha=alpha, invert=invert)
        return float(mask_raster.rasterize([base, layer], 4, 4)[0, 0])

    assert value("MERGE_ADD") == pytest.approx(0.5 + 0.6 * 0.5)
    assert value("MERGE_SUBTRACT") == pytest.approx(0.5 - 0.6 * 0.5)
    assert value("ADD") == pytest.approx(1.0)  # 1.1 clamped
    assert value("SUBTRACT", alpha=0.2) == pytest.approx(0.3)
    assert value("DARKEN", covered=False) == 0.0 and value("LIGHTEN") == pytest.approx(0.6)
    assert value("MUL") == pytest.approx(0.3) and value("DIFFERENCE") == pytest.approx(0.1)
    assert value("REPLACE") == pytest.approx(0.5 * 0.4 + 0.6) and value("REPLACE", invert=True) == pytest.approx(0.2)
    assert value("MERGE_ADD", alpha=0.5, invert=True) == pytest.approx(0.5 + 0.5 * 0.5)


def _compositor_render(mask: bpy.types.Mask, width: int, height: int) -> np.ndarray:
    """(height, width) values of Blender's Mask node (feather off) rendered at width x height, row 0 = top."""
    scene = bpy.context.scene
    if not hasattr(scene, "node_tree"):  # Blender 5 keeps the compositor in a node group (the tests use 4.5)
        pytest.skip("this Blender has no scene.node_tree compositor")
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
    render.engine = "BLENDER_WORKBENCH"
    scene.use_nodes = True
    tree = scene.node_tree
    tree.nodes.clear()
    node = tree.nodes.new("CompositorNodeMask")
    node.mask, node.use_feather = mask, False
    tree.links.new(node.outputs[0], tree.nodes.new("CompositorNodeComposite").inputs[0])
    render.image_settings.file_format, render.image_settings.color_depth = "OPEN_EXR", "32"
    with tempfile.TemporaryDirectory() as folder:
        render.filepath = os.path.join(folder, "mask.exr")
        bpy.ops.render.render(write_still=True)
        image = bpy.data.images.load(render.filepath, check_existing=False)
        pixels = np.empty(width * height * 4, np.float32)
        image.pixels.foreach_get(pixels)
        bpy.data.images.remove(image)
    return np.flipud(pixels.reshape(height, width, 4))[:, :, 0]
