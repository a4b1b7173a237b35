"""Attention over the voxels of a SparseTensor: within windows (swin), within each batch item, or to a context.

Shapes: N voxels, H heads, D head dim, B batch items, S context tokens, G groups, L tokens per padded group.

Every variant is "attention inside groups of voxels": a window of the (shifted) grid of one batch item, or a
whole batch item. Groups are batched for `F.scaled_dot_product_attention` by padding them to a common length
L with a key-padding mask. To bound the padding, windows are put in buckets by size (L = the next power of two
of the group size, one SDPA call per bucket); batch items go in one bucket. The grouping is computed once per
voxel set and cached on the tensor. When the voxels are already grouped in order with equal group sizes
(e.g. B identical batch items, or B = 1) the padded view is a plain reshape: no gather, no mask.

Windowed attention (the SLAT decoders' swin blocks): voxel coords are shifted by `shift` on x, y and z,
window = shifted coords // `window` per axis, attention only among voxels of the same window and batch item,
no cyclic wrap-around at the grid border.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .tensor import SparseTensor, coordinate_keys


def windowed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: SparseTensor, window: int, shift: int = 0
) -> torch.Tensor:
    """q, k, v: (N, H, D) for the voxels of x -> (N, H*D), attention within each occupied window."""
    groups = x.cached(("windows", window, shift), lambda: _window_groups(x, window, shift))
    return grouped_self_attention(q, k, v, groups).flatten(1)


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: SparseTensor) -> torch.Tensor:
    """q, k, v: (N, H, D) -> (N, H*D), every voxel attends to all voxels of its batch item."""
    return grouped_self_attention(q, k, v, batch_groups(x)).flatten(1)


def full_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: SparseTensor) -> torch.Tensor:
    """q: (N, H, D) voxel queries; k, v: (B, S, H, D) context of each batch item -> (N, H*D)."""
    return grouped_cross_attention(q, k, v, batch_groups(x)).flatten(1)


@dataclass
class GroupBucket:
    """Groups padded to one length L. Padding slots gather row 0 and are masked out as keys."""

    gather: torch.Tensor  # (G, L) int64 voxel row of every slot
    key_mask: torch.Tensor | None  # (G, 1, 1, L) bool, True = real voxel; None when no slot is padding
    tokens: torch.Tensor  # (n,) int64 the voxels of this bucket
    slots: torch.Tensor  # (n,) int64 their slot in the flattened (G*L) layout
    group_batch: torch.Tensor  # (G,) int64 batch item of each group


@dataclass
class TokenGroups:
    num_tokens: int
    buckets: list[GroupBucket]
    dense: tuple[int, int] | None  # (G, L) when voxels are already group-contiguous, all groups of size L
    dense_batch: torch.Tensor | None  # (G,) batch item of each group in the dense case


def batch_groups(x: SparseTensor) -> TokenGroups:
    """One group per batch item (cached)."""
    return x.cached("batch_groups", lambda: build_groups(x.batch_index, x.batch_index, bucketed=False))


def grouped_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: TokenGroups) -> torch.Tensor:
    """(N, H, D) x3 -> (N, H, D), attention restricted to each group."""
    n, h, d = q.shape
    if groups.dense is not None:
        g, l = groups.dense
        qg, kg, vg = (t.reshape(g, l, h, d).transpose(1, 2) for t in (q, k, v))  # (G, H, L, D)
        return F.scaled_dot_product_attention(qg, kg, vg).transpose(1, 2).reshape(n, h, d)
    out = q.new_empty(n, h, d)
    for bucket in groups.buckets:
        qg, kg, vg = (_gather_rows(t, bucket.gather).transpose(1, 2) for t in (q, k, v))  # (G, H, L, D)
        o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=bucket.key_mask)  # (G, H, L, D)
        o = o.transpose(1, 2).reshape(-1, h, d)  # (G*L, H, D)
        out.index_copy_(0, bucket.tokens, o.index_select(0, bucket.slots))
    return out


def grouped_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: TokenGroups) -> torch.Tensor:
    """q: (N, H, D), k/v: (B, S, H, D) -> (N, H, D); the voxels of a group attend to their batch item's context."""
    n, h, d = q.shape
    kb, vb = k.transpose(1, 2), v.transpose(1, 2)  # (B, H, S, D)
    if groups.dense is not None:
        g, l = groups.dense
        qg = q.reshape(g, l, h, d).transpose(1, 2)  # (G, H, L, D)
        if groups.dense_batch is not None:  # some batch items have no voxels
            kb, vb = kb.index_select(0, groups.dense_batch), vb.index_select(0, groups.dense_batch)
        return F.scaled_dot_product_attention(qg, kb, vb).transpose(1, 2).reshape(n, h, d)
    out = q.new_empty(n, h, d)
    for bucket in groups.buckets:
        qg = _gather_rows(q, bucket.gather).transpose(1, 2)  # (G, H, L, D)
        kg, vg = kb.index_select(0, bucket.group_batch), vb.index_select(0, bucket.group_batch)  # (G, H, S, D)
        o = F.scaled_dot_product_attention(qg, kg, vg).transpose(1, 2).reshape(-1, h, d)  # (G*L, H, D)
        out.index_copy_(0, bucket.tokens, o.index_select(0, bucket.slots))
    return out


def _gather_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """t: (N, H, D), rows: (G, L) -> (G, L, H, D). index_select, not t[rows]: its backward is an atomic
    index_add where advanced indexing's sorts the indices (several times slower in training)."""
    return t.index_select(0, rows.flatten()).view(*rows.shape, *t.shape[1:])


def build_groups(key: torch.Tensor, batch: torch.Tensor, bucketed: bool) -> TokenGroups:
    """Group voxels by an int64 key (N,); `batch` (N,) is each voxel's batch item (constant within a group).

    bucketed: pad each group to the next power of two of its size (several buckets) instead of to the
    largest group (one bucket)."""
    n = key.numel()
    device = key.device
    if n == 0:
        return TokenGroups(0, [], (0, 0), None)
    order = torch.argsort(key, stable=True)  # voxels sorted by group, original order inside a group
    _, counts = torch.unique_consecutive(key[order], return_counts=True)
    sizes = counts.tolist()
    num_groups = len(sizes)
    starts = torch.cumsum(counts, 0) - counts  # (G,)
    group_batch = batch[order[starts]]  # (G,)
    arange = torch.arange(n, device=device)
    if min(sizes) == max(sizes) and bool((order == arange).all()):
        identity_batch = bool((group_batch == torch.arange(num_groups, device=device)).all())
        return TokenGroups(n, [], (num_groups, sizes[0]), None if identity_batch else group_batch)
    group_of_sorted = torch.repeat_interleave(torch.arange(num_groups, device=device), counts)  # (N,)
    position = arange - starts[group_of_sorted]  # (N,) slot inside the group, in sorted order
    if bucketed:
        capacity = [1 << (s - 1).bit_length() for s in sizes]
    else:
        capacity = [max(sizes)] * num_groups
    capacity_t = torch.tensor(capacity, device=device)
    buckets = []
    for cap in sorted(set(capacity)):
        in_bucket = capacity_t == cap  # (G,)
        members = in_bucket.nonzero().squeeze(1)  # (Gb,)
        rank = torch.full((num_groups,), -1, dtype=torch.long, device=device)
        rank[members] = torch.arange(members.numel(), device=device)
        selected = in_bucket[group_of_sorted].nonzero().squeeze(1)  # sorted positions of this bucket's voxels
        tokens = order[selected]
        slots = rank[group_of_sorted[selected]] * cap + position[selected]
        gather = torch.zeros(members.numel() * cap, dtype=torch.long, device=device)
        gather[slots] = tokens
        valid = torch.zeros(members.numel() * cap, dtype=torch.bool, device=device)
        valid[slots] = True
        key_mask = None if bool(valid.all()) else valid.view(-1, 1, 1, cap)
        buckets.append(GroupBucket(gather.view(-1, cap), key_mask, tokens, slots, group_batch[members]))
    return TokenGroups(n, buckets, None, None)


def _window_groups(x: SparseTensor, window: int, shift: int) -> TokenGroups:
    coords = x.coords.long()
    cells = torch.div(coords[:, 1:] + shift, window, rounding_mode="floor")  # (N, 3) window of every voxel
    cells = torch.cat([coords[:, :1], cells], dim=1)  # (N, 4) [batch, wx, wy, wz]
    extent = [int(v) + 1 for v in cells.max(dim=0).values.tolist()]
    return build_groups(coordinate_keys(cells, extent), coords[:, 0], bucketed=True)
