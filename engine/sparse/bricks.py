"""Submanifold 3x3x3 convolution on subdivided voxels, as dense `conv3d` over bricks with a one-voxel halo.

After `subdivide` (once or more), the fine voxels are whole bricks: every voxel of an ancestor set became s^3
fine voxels (s = 2^levels), stored ancestor-major, each brick's rows in subdivision order (see `resample.py`).
The generic sparse conv (`conv.py`) gathers all 27 neighbours of every voxel, i.e. 27 rows of Ci values per
output row; the mesh decoder's 256^3 convolutions spend most of their time there. Here each brick is gathered
once with a one-voxel halo from its 26 neighbour bricks ((s + 2)^3 rows: 3.4x the brick's data at s = 4, 8x at
s = 2) and convolved densely by `conv3d`. The same sums, in another order.

Shapes: B bricks (the ancestor voxels), s brick side, S = s^3 rows per brick, P = (s + 2)^3 halo'd rows, Ci / Co
input / output channels. Rows of a brick: row r has child digits (c_1 ... c_L) in base 8 (c_1 most significant,
the first subdivision), c = 4 dx + 2 dy + dz, and sits at x = sum_l dx_l 2^(L - l) (likewise y, z) in the brick.
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import torch
import torch.nn.functional as F

# Upper bound on the elements of one gathered (bricks, P, Ci) block (256 MiB in bf16); more bricks go in chunks.
CHUNK_ELEMENTS = 1 << 27


def brick_conv3d(feats: torch.Tensor, brick_table: torch.Tensor, levels: int, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """The submanifold conv of `conv.SparseConv3d` (kernel 3) on whole bricks.

    feats (B*S, Ci) in brick order; brick_table (B, 27) int32: the ancestor voxels' neighbour table (entry o for
    offset (i, j, k) = divmod order of o in base 3, minus 1; B where absent); weight (Co, 3, 3, 3, Ci) in spconv's
    layout, bias (Co,) or None. Returns (B*S, Co) in brick order.
    """
    side = 1 << levels
    rows, ci = feats.shape
    bricks, co = brick_table.shape[0], weight.shape[0]
    slot, local, to_rows = _halo_plan(levels, str(feats.device))  # (P,), (P,), (S,)
    padded = torch.cat([feats, feats.new_zeros(side**3, ci)])  # brick B: zeros, for absent neighbours
    # (Co, Ci, 3, 3, 3) with Ci innermost: the channels-last layout conv3d wants for channels-last input.
    kernel = weight.permute(0, 4, 1, 2, 3)
    out = feats.new_empty(rows, co)
    per_chunk = max(1, CHUNK_ELEMENTS // (slot.shape[0] * ci))
    for start in range(0, bricks, per_chunk):
        table = brick_table[start:start + per_chunk].long()  # (b, 27)
        b = table.shape[0]
        index = table.index_select(1, slot) * side**3 + local  # (b, P) rows of `padded`
        halo = padded.index_select(0, index.view(-1)).view(b, side + 2, side + 2, side + 2, ci)
        dense = _conv3d(halo.permute(0, 4, 1, 2, 3), kernel, bias)  # (b, Co, s, s, s)
        by_position = dense.permute(0, 2, 3, 4, 1).reshape(b, side**3, co)  # (b, S, Co) x-major positions
        out[start * side**3:(start + b) * side**3] = by_position.index_select(1, to_rows).view(-1, co)
    return out


def _conv3d(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3d at the precision of the gather path's matmul: cuDNN takes float32 convolutions as TF32 by default,
    matmuls stay float32 unless told (`torch.backends.cuda.matmul.allow_tf32`)."""
    wanted = torch.backends.cuda.matmul.allow_tf32
    if x.dtype != torch.float32 or torch.backends.cudnn.allow_tf32 == wanted:
        return F.conv3d(x, kernel, bias)
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = wanted
    try:
        return F.conv3d(x, kernel, bias)
    finally:
        torch.backends.cudnn.allow_tf32 = before


@lru_cache(maxsize=8)
def _halo_plan(levels: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of the (s+2)^3 halo'd positions (x-major): the neighbour slot (0..26) of the brick it lies in and
    its row within that brick; and for each row of a brick, its x-major position (for the output)."""
    side = 1 << levels
    row_at = torch.empty(side, side, side, dtype=torch.int64)  # brick row at each (x, y, z)
    for row, digits in enumerate(itertools.product(range(8), repeat=levels)):
        x = y = z = 0
        for c in digits:  # most significant digit first: the coarsest subdivision
            x, y, z = 2 * x + (c >> 2), 2 * y + ((c >> 1) & 1), 2 * z + (c & 1)
        row_at[x, y, z] = row
    position_of_row = torch.empty(side**3, dtype=torch.int64)
    position_of_row[row_at.view(-1)] = torch.arange(side**3)
    slot, local = [], []
    for a, b, c in itertools.product(range(-1, side + 1), repeat=3):
        (ox, x), (oy, y), (oz, z) = divmod(a, side), divmod(b, side), divmod(c, side)
        slot.append(9 * (ox + 1) + 3 * (oy + 1) + (oz + 1))
        local.append(int(row_at[x, y, z]))
    device_ = torch.device(device)
    return (torch.tensor(slot, device=device_), torch.tensor(local, device=device_), position_of_row.to(device_))
