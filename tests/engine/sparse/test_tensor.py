"""SparseTensor: validation, cache sharing through replace, batch bookkeeping."""
from __future__ import annotations

import pytest
import torch

from engine.errors import InputError
from engine.sparse.tensor import SparseTensor, coordinate_keys, keys_to_coordinates


def test_rejects_coords_of_the_wrong_shape_dtype_or_row_count():
    feats = torch.randn(3, 2)
    with pytest.raises(InputError, match="int32"):
        SparseTensor(torch.zeros(3, 4, dtype=torch.int64), feats)
    with pytest.raises(InputError, match=r"\(N, 4\)"):
        SparseTensor(torch.zeros(3, 3, dtype=torch.int32), feats)
    with pytest.raises(InputError, match="one row per voxel"):
        SparseTensor(torch.zeros(4, 4, dtype=torch.int32), feats)


def test_replace_keeps_coords_and_cache_and_batch_size_counts_items():
    gen = torch.Generator().manual_seed(0)
    coords = torch.tensor([[0, 1, 2, 3], [2, 0, 0, 0], [0, 4, 4, 4]], dtype=torch.int32)
    x = SparseTensor(coords, torch.randn(3, 5, generator=gen))
    y = x.replace(torch.randn(3, 7, generator=gen))
    assert y.coords is x.coords and y.cache is x.cache and y.channels == 7
    assert x.batch_size == 3 and "batch_size" in y.cache
    assert torch.equal(y.batch_index, torch.tensor([0, 2, 0]))


def test_coordinate_keys_order_rows_lexicographically_and_invert():
    gen = torch.Generator().manual_seed(1)
    coords = torch.randint(0, 6, (50, 4), generator=gen, dtype=torch.int32)
    extent = [6, 6, 6, 6]
    keys = coordinate_keys(coords, extent)
    assert torch.equal(keys_to_coordinates(keys, extent), coords)
    lex = sorted(range(50), key=lambda i: coords[i].tolist())
    assert torch.equal(coords[keys.argsort(stable=True)], coords[lex])
