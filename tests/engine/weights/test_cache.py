"""engine/weights/cache.py: one-time conversion to .safetensors, atomic writes, memory-mapped reloads."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch

from engine.errors import WeightsError
from engine.weights.cache import cache_path, cached_weights, load_cache_file, write_cache_file
from engine.weights.locations import default_cache_dir
from engine.weights.release import FLOAT32_KEYS, open_release

SOURCE = {"repo": "test/model", "commit": "0" * 40, "file": "checkpoints/x.ckpt"}


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "blocks.0.weight": torch.randn(16, 8, generator=g),
        "blocks.0.norm.weight": torch.randn(8, generator=g),
        "latent_mapping.shape.pos_emb": torch.randn(64, 8, generator=g),
        "half": torch.randn(5, 3, generator=g).half(),
        "index": torch.randint(-5, 1000, (9,), generator=g, dtype=torch.int64),
        "small_int": torch.randint(0, 7, (4,), generator=g, dtype=torch.int32),
        "mask": torch.rand(6, generator=g) > 0.5,
        "scalar": torch.randn((), generator=g),
        "strided": torch.randn(6, 4, generator=g).t(),
    }


class _Counting(Mapping):
    """A state dict whose loads are counted, and which can fail part-way (an interrupted conversion)."""

    def __init__(self, tensors: dict, fail_at: int | None = None):
        self.tensors, self.fail_at, self.reads, self.builds = tensors, fail_at, 0, 0

    def __call__(self) -> _Counting:
        self.builds += 1
        return self

    def __getitem__(self, key):
        self.reads += 1
        if self.fail_at is not None and self.reads > self.fail_at:
            raise KeyboardInterrupt("conversion interrupted")
        return self.tensors[key]

    def __iter__(self) -> Iterator:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_float32_round_trip_is_exact_and_keeps_integers(tmp_path: Path):
    tensors = _tensors(1)
    out = cached_weights("m", SOURCE, lambda: tensors, dtype=torch.float32, cache_dir=tmp_path)
    assert set(out) == set(tensors)
    for key, value in tensors.items():
        expected_dtype = value.dtype if not value.is_floating_point() else torch.float32
        assert out[key].dtype == expected_dtype and out[key].shape == value.shape, key
        assert torch.equal(out[key], value.to(expected_dtype)), key


def test_float16_keeps_fp16_representable_values_exactly_and_listed_keys_in_float32(tmp_path: Path):
    tensors = {k: (v.half().float() if v.is_floating_point() else v) for k, v in _tensors(2).items()}
    tensors["latent_mapping.shape.pos_emb"] = torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
    out = cached_weights("m", SOURCE, lambda: tensors, dtype=torch.float16, keep_float32=FLOAT32_KEYS,
                         cache_dir=tmp_path)
    assert out["blocks.0.weight"].dtype == torch.float16 and out["half"].dtype == torch.float16
    assert out["blocks.0.norm.weight"].dtype == torch.float32  # "*norm*"
    assert out["latent_mapping.shape.pos_emb"].dtype == torch.float32
    assert out["index"].dtype == torch.int64 and out["mask"].dtype == torch.bool
    for key, value in tensors.items():
        assert torch.equal(out[key].to(value.dtype), value), key  # exact, including the non-fp16 pos_emb


def test_bfloat16_cache_rounds_like_torch(tmp_path: Path):
    tensors = _tensors(4)
    out = cached_weights("m", SOURCE, lambda: tensors, dtype=torch.bfloat16, cache_dir=tmp_path)
    assert torch.equal(out["blocks.0.weight"], tensors["blocks.0.weight"].bfloat16())
    assert torch.equal(out["half"], tensors["half"].bfloat16())


def test_second_load_reads_the_cache_memory_mapped_without_converting(tmp_path: Path):
    source = _Counting(_tensors(5))
    first = cached_weights("m", SOURCE, source, cache_dir=tmp_path)
    second = cached_weights("m", SOURCE, source, cache_dir=tmp_path)
    assert source.builds == 1
    for key in first:
        assert torch.equal(first[key], second[key])
    expected = cache_path("m", SOURCE, dtype=torch.float16, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [expected]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_large_cache_file_is_mapped_not_read(tmp_path: Path):
    path = tmp_path / "big.safetensors"
    write_cache_file(path, {"w": torch.ones(16 * 1024 * 1024)}, identity=SOURCE, dtype=torch.float32)
    before = _rss_bytes()
    out = load_cache_file(path, identity=SOURCE)
    assert _rss_bytes() - before < 16 * 1024 * 1024
    assert out["w"][-1].item() == 1.0


def test_interrupted_conversion_leaves_no_cache_file(tmp_path: Path):
    tensors = _tensors(6)
    source = _Counting(tensors, fail_at=len(tensors) + 4)  # fails while writing the 5th tensor's data
    with pytest.raises(KeyboardInterrupt):
        cached_weights("m", SOURCE, source, cache_dir=tmp_path)
    assert source.reads == len(tensors) + 5
    assert list(tmp_path.iterdir()) == []  # neither a cache file nor a temporary one
    source.fail_at = None
    out = cached_weights("m", SOURCE, source, cache_dir=tmp_path)
    assert torch.equal(out["index"], source.tensors["index"])


def test_truncated_cache_file_is_detected_and_rebuilt(tmp_path: Path):
    source = _Counting(_tensors(7))
    cached_weights("m", SOURCE, source, dtype=torch.float32, cache_dir=tmp_path)
    path = cache_path("m", SOURCE, dtype=torch.float32, cache_dir=tmp_path)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(WeightsError) as e:
        load_cache_file(path)
    assert str(path) in e.value.message and "truncated or corrupt" in e.value.message
    out = cached_weights("m", SOURCE, source, dtype=torch.float32, cache_dir=tmp_path)
    assert source.builds == 2 and torch.equal(out["blocks.0.weight"], source.tensors["blocks.0.weight"])


def test_flipped_data_byte_is_found_by_verify_and_rebuilt(tmp_path: Path):
    source = _Counting(_tensors(8))
    cached_weights("m", SOURCE, source, dtype=torch.float32, cache_dir=tmp_path)
    path = cache_path("m", SOURCE, dtype=torch.float32, cache_dir=tmp_path)
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x40
    path.write_bytes(bytes(data))
    load_cache_file(path)  # structure intact: only the checksum can tell
    with pytest.raises(WeightsError, match="checksum"):
        load_cache_file(path, verify=True)
    out = cached_weights("m", SOURCE, source, dtype=torch.float32, cache_dir=tmp_path, verify=True)
    assert source.builds == 2
    for key, value in source.tensors.items():
        assert torch.equal(out[key], value.float() if value.is_floating_point() else value), key


def test_file_from_another_source_or_format_is_not_used(tmp_path: Path):
    path = tmp_path / "m.safetensors"
    write_cache_file(path, _tensors(9), identity=SOURCE)
    with pytest.raises(WeightsError, match="another source"):
        load_cache_file(path, identity={**SOURCE, "commit": "1" * 40})
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="not a cache file of format"):
        load_cache_file(tmp_path / "plain.safetensors")


def test_key_depends_on_source_dtype_and_policy(tmp_path: Path):
    base = cache_path("ss_flow", SOURCE, dtype=torch.float16, cache_dir=tmp_path)
    assert base.parent == tmp_path and base.name.startswith("ss_flow-") and base.suffix == ".safetensors"
    assert base == cache_path("ss_flow", dict(reversed(list(SOURCE.items()))), dtype=torch.float16, cache_dir=tmp_path)
    others = {cache_path("ss_flow", {**SOURCE, "commit": "1" * 40}, dtype=torch.float16, cache_dir=tmp_path),
              cache_path("ss_flow", SOURCE, dtype=torch.bfloat16, cache_dir=tmp_path),
              cache_path("ss_flow", SOURCE, dtype=torch.float16, keep_float32=["*norm*"], cache_dir=tmp_path),
              cache_path("ss_condition", SOURCE, dtype=torch.float16, cache_dir=tmp_path)}
    assert base not in others and len(others) == 4
    with pytest.raises(WeightsError, match="float16, bfloat16 or float32"):
        cache_path("ss_flow", SOURCE, dtype=torch.int8, cache_dir=tmp_path)


def test_cache_folder_defaults_to_user_data_and_follows_threedfy_cache(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("THREEDFY_CACHE", raising=False)
    monkeypatch.setenv("THREEDFY_DATA", str(tmp_path / "data"))
    assert default_cache_dir() == tmp_path / "data" / "weights"
    monkeypatch.setenv("THREEDFY_CACHE", str(tmp_path / "elsewhere"))
    assert cache_path("m", SOURCE, dtype=torch.float16).parent == tmp_path / "elsewhere"


def test_tiny_release_round_trips_exactly_through_an_fp16_cache(parity_dir: Path, tmp_path: Path):
    release = open_release(parity_dir / "official_format_tiny")
    weights = release.load()
    for name, w in weights.items():
        out = cached_weights(name, release.identity(name), lambda: w.tensors, dtype=torch.float16,
                             keep_float32=FLOAT32_KEYS, cache_dir=tmp_path)
        assert set(out) == set(w.tensors)
        for key, value in w.tensors.items():
            assert torch.equal(out[key].to(value.dtype), value), f"{name}: {key}"
