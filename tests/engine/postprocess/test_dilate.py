"""Gutter fill: empty texels take nearby chart colours; covered texels never change."""
from __future__ import annotations

import numpy as np

from engine.postprocess.dilate import dilate


def test_covered_texels_stay_and_every_empty_texel_is_filled_from_nearby():
    g = np.random.default_rng(0)
    texture = np.zeros((64, 64, 3), np.uint8)
    filled = np.zeros((64, 64), bool)
    filled[10:20, 10:30] = True  # a red chart
    filled[40:60, 40:50] = True  # a blue chart
    texture[10:20, 10:30] = [200, 30, 30]
    texture[40:60, 40:50] = [20, 40, 220]
    texture[~filled] = g.integers(0, 255, size=(int((~filled).sum()), 3))  # junk in the gutter
    out = dilate(texture, filled)
    np.testing.assert_array_equal(out[filled], texture[filled])
    np.testing.assert_array_equal(out[9:21, 9:31][[0, -1]], np.broadcast_to([200, 30, 30], (2, 22, 3)))
    np.testing.assert_array_equal(out[39:61, 39:51][:, [0, -1]], np.broadcast_to([20, 40, 220], (22, 2, 3)))
    # far from both charts the fill is a blend of the two colours, never junk
    assert np.all((out[~filled] >= [20, 30, 30]) & (out[~filled] <= [200, 40, 220]))


def test_odd_sizes_and_degenerate_masks_are_handled():
    texture = np.arange(7 * 5 * 3, dtype=np.uint8).reshape(7, 5, 3)
    filled = np.zeros((7, 5), bool)
    filled[6, 4] = True
    out = dilate(texture, filled)
    assert np.all(out == texture[6, 4])
    np.testing.assert_array_equal(dilate(texture, np.zeros((7, 5), bool)), texture)
    np.testing.assert_array_equal(dilate(texture, np.ones((7, 5), bool)), texture)
