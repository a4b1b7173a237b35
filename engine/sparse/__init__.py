"""Sparse voxel tensors and the operators on them, in plain PyTorch (no spconv / torchsparse).

`tensor.SparseTensor` holds (batch, x, y, z) coordinates and one feature row per voxel, plus a cache of
everything that depends on the coordinates only (neighbour maps, window partitions, resampling maps), so a
sampler that changes only the features pays for those once.
"""
