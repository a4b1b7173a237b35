"""The prompt encoder's random Fourier encoding, label offsets, padding point and dense encoding, by formula."""
from __future__ import annotations

import math

import torch

from engine.sam.weights import random_sam
from tests.engine.parity import assert_close


def fourier(xy: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """[sin, cos](2π (2u - 1) @ G) for u in [0, 1]²."""
    f = 2 * math.pi * (2 * xy - 1) @ matrix
    return torch.cat([torch.sin(f), torch.cos(f)], dim=-1)


def test_clicks_are_fourier_encoded_at_pixel_centres_plus_their_label_offset_and_a_padding_point():
    model = random_sam("tiny", seed=0)
    enc = model.prompt_encoder
    s, matrix = model.cfg.img_size, enc.pe_layer.positional_encoding_gaussian_matrix
    coords = torch.tensor([[[10.0, 20.0], [63.0, 0.0]]])
    with torch.no_grad():
        sparse, dense = enc(coords, torch.tensor([[1, 0]]), None, None)
    assert sparse.shape == (1, 3, model.cfg.prompt_embed_dim)  # two clicks + the padding point
    add = fourier(torch.tensor([10.5, 20.5]) / s, matrix) + enc.point_embeddings[1].weight[0]
    remove = fourier(torch.tensor([63.5, 0.5]) / s, matrix) + enc.point_embeddings[0].weight[0]
    assert_close(sparse[0, 0], add, atol=1e-5, rtol=1e-5, what="added click")
    assert_close(sparse[0, 1], remove, atol=1e-5, rtol=1e-5, what="removing click")
    assert_close(sparse[0, 2], enc.not_a_point_embed.weight[0], atol=0, rtol=0, what="padding point")
    assert_close(dense[0, :, 3, 5], enc.no_mask_embed.weight[0], atol=0, rtol=0, what="no-mask embedding")


def test_a_box_gives_two_corner_tokens_and_no_padding_point():
    model = random_sam("tiny", seed=1)
    enc = model.prompt_encoder
    s, matrix = model.cfg.img_size, enc.pe_layer.positional_encoding_gaussian_matrix
    with torch.no_grad():
        sparse, _ = enc(torch.tensor([[[30.0, 31.0]]]), torch.tensor([[1]]), torch.tensor([[2.0, 4.0, 50.0, 60.0]]),
                        None)
    assert sparse.shape[1] == 3  # click, top-left, bottom-right
    top_left = fourier(torch.tensor([2.5, 4.5]) / s, matrix) + enc.point_embeddings[2].weight[0]
    bottom_right = fourier(torch.tensor([50.5, 60.5]) / s, matrix) + enc.point_embeddings[3].weight[0]
    assert_close(sparse[0, 1], top_left, atol=1e-5, rtol=1e-5, what="top-left corner")
    assert_close(sparse[0, 2], bottom_right, atol=1e-5, rtol=1e-5, what="bottom-right corner")


def test_dense_encoding_is_the_click_encoding_at_each_embedding_cell_centre():
    model = random_sam("tiny", seed=2)
    enc = model.prompt_encoder
    pe = enc.dense_pe()
    g, s = model.cfg.embedding_size, model.cfg.img_size
    assert pe.shape == (1, model.cfg.prompt_embed_dim, g, g)
    row, col = 2, 6
    cell = fourier(torch.tensor([(col + 0.5) / g, (row + 0.5) / g]), enc.pe_layer.positional_encoding_gaussian_matrix)
    assert_close(pe[0, :, row, col], cell, atol=1e-5, rtol=1e-5, what="dense PE at (row 2, col 6)")
    # a click at the cell's centre pixel position encodes to the same vector (pixel centres: +0.5)
    centre = torch.tensor([[(col + 0.5) * s / g - 0.5, (row + 0.5) * s / g - 0.5]])
    at_centre = enc.embed_points(centre[None], torch.tensor([[1]]))[0, 0] - enc.point_embeddings[1].weight[0]
    assert_close(at_centre, cell, atol=1e-5, rtol=1e-5, what="click at the cell centre")


def test_a_mask_prompt_is_downscaled_four_times_to_the_embedding_grid():
    model = random_sam("tiny", seed=3)
    m, g = model.cfg.low_res_size, model.cfg.embedding_size
    masks = torch.randn(2, 1, m, m, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(None, None, None, masks)
    assert sparse.shape == (2, 0, model.cfg.prompt_embed_dim)
    assert dense.shape == (2, model.cfg.prompt_embed_dim, g, g)
    assert (dense[0] - dense[1]).abs().max() > 1e-3
