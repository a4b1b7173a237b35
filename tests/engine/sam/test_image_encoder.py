"""The image encoder's windowing and relative-position attention, against direct per-element definitions."""
from __future__ import annotations

import torch

from engine.sam.image_encoder import (
    EncoderBlock,
    RelPosAttention,
    relative_position_bias,
    window_partition,
    window_unpartition,
)
from tests.engine.parity import assert_close


def test_window_partition_tiles_row_major_with_zero_padding_and_unpartition_inverts_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 8, 5, generator=g)  # 7 x 8 tokens, windows of 3: padded to 9 x 9, 3 x 3 windows
    windows = window_partition(x, 3)
    assert windows.shape == (2 * 9, 3, 3, 5)
    assert_close(windows[4], x[0, 3:6, 3:6], atol=0, rtol=0, what="window (1, 1) of image 0")
    assert_close(windows[9 + 2, :, :2], x[1, 0:3, 6:8], atol=0, rtol=0, what="window (0, 2) of image 1")
    assert (windows[9 + 2, :, 2] == 0).all() and (windows[8, 1:] == 0).all()  # padded column / rows
    assert_close(window_unpartition(windows, 7, 8), x, atol=0, rtol=0, what="round trip")


def test_relative_position_bias_is_q_dot_table_entry_of_the_row_and_column_offsets():
    g = torch.Generator().manual_seed(1)
    ph, pw, d = 3, 4, 6
    q = torch.randn(2, 2, ph * pw, d, generator=g)
    table_h, table_w = torch.randn(2 * ph - 1, d, generator=g), torch.randn(2 * pw - 1, d, generator=g)
    bias = relative_position_bias(q, table_h, table_w, ph, pw)
    expected = torch.empty_like(bias)
    for i in range(ph * pw):
        for j in range(ph * pw):
            (yi, xi), (yj, xj) = divmod(i, pw), divmod(j, pw)
            rel = table_h[yi - yj + ph - 1] + table_w[xi - xj + pw - 1]  # (D,)
            expected[:, :, i, j] = q[:, :, i] @ rel
    assert_close(bias, expected, atol=1e-5, rtol=1e-5, what="decomposed relative-position bias")


def test_attention_adds_the_bias_to_scaled_logits_of_unscaled_queries():
    g = torch.Generator().manual_seed(2)
    attn = RelPosAttention(channels=8, num_heads=2, side=3)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        x = torch.randn(1, 3, 3, 8, generator=g)
        out = attn(x)
        q, k, v = attn.qkv(x.reshape(1, 9, 8)).reshape(1, 9, 3, 2, 4).permute(2, 0, 3, 1, 4)  # (1, H, 9, 4) each
        logits = q @ k.transpose(-1, -2) / 2.0 + relative_position_bias(q, attn.rel_pos_h, attn.rel_pos_w, 3, 3)
        manual = (logits.softmax(-1) @ v).transpose(1, 2).reshape(1, 3, 3, 8)
        assert_close(out, attn.proj(manual), atol=1e-5, rtol=1e-5, what="rel-pos attention")


def test_windowed_block_attends_only_inside_its_window():
    g = torch.Generator().manual_seed(3)
    block = EncoderBlock(8, 2, 2.0, 1e-6, window_size=3, grid_size=7)
    x = torch.randn(1, 7, 7, 8, generator=g)
    with torch.no_grad():
        base = block(x)
        poked = x.clone()
        poked[0, 6, 6] += 5.0  # the bottom-right (padded) window
        moved = block(poked)
    changed = (moved - base).abs().amax(-1)[0] > 1e-6  # (7, 7)
    assert changed[6:, 6:].all() and not changed[:6].any() and not changed[:, :6].any()
