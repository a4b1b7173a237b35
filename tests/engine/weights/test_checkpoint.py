"""engine/weights/checkpoint.py: reading .ckpt files without running pickled code."""
from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from engine.errors import WeightsError
from engine.weights.checkpoint import Opaque, read_checkpoint

TINY_DECODERS = ["ss_decoder.ckpt", "slat_decoder_gs.ckpt", "slat_decoder_gs_4.ckpt", "slat_decoder_mesh.ckpt"]


def _random_state(seed: int) -> collections.OrderedDict:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 10, generator=g)
    return collections.OrderedDict([
        ("a.weight", torch.randn(4, 3, generator=g)),
        ("a.half", torch.randn(5, generator=g).half()),
        ("a.bf16", torch.randn(2, 3, generator=g).bfloat16()),
        ("a.index", torch.randint(0, 100, (7,), generator=g)),
        ("a.mask", torch.rand(3, generator=g) > 0.5),
        ("a.scalar", torch.randn((), generator=g)),
        ("a.view", base[1:4, 2:7]),  # shares storage with the next entry, offset + strides
        ("a.base", base),
        ("a.transposed", base.t()),
        ("a.empty", torch.empty(0, 5)),
    ])


def _same(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert actual[key].shape == value.shape, key
        assert torch.equal(actual[key], value), key


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Evil:
    """Pickles as a call of `target(*args)`: what a malicious checkpoint would contain."""

    def __init__(self, target, args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def test_reads_official_tiny_decoders_exactly_like_torch_load(parity_dir: Path):
    for name in TINY_DECODERS:
        path = parity_dir / "official_format_tiny" / name
        ckpt = read_checkpoint(path)
        assert ckpt.layout == "state_dict" and ckpt.metadata == {}
        _same(ckpt.state_dict, dict(torch.load(path, weights_only=True, map_location="cpu")))


def test_reads_lightning_generators_with_dictconfig_as_inert_metadata(parity_dir: Path):
    path = parity_dir / "official_format_tiny" / "ss_generator.ckpt"
    ckpt = read_checkpoint(path)
    assert ckpt.layout == "lightning"
    assert len(ckpt.state_dict) == 289 and all(isinstance(v, torch.Tensor) for v in ckpt.state_dict.values())
    assert ckpt.state_dict["_base_models.condition_embedder.idx_emb"].dtype == torch.float32
    config = ckpt.metadata["hyper_parameters"]["config"]
    assert isinstance(config, Opaque) and (config.module, config.name) == ("omegaconf.dictconfig", "DictConfig")
    assert "omegaconf" not in sys.modules  # named, never imported
    kth = next(iter(ckpt.metadata["callbacks"].values()))["kth_value"]
    assert isinstance(kth, torch.Tensor) and torch.isinf(kth)


def test_matches_torch_load_for_shared_strided_and_every_dtype(tmp_path: Path):
    state = _random_state(11)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "hparams": {"lr": 0.5, "dims": [1, 2]}}, path)
    for mmap in (True, False):
        ckpt = read_checkpoint(path, mmap=mmap, verify_crc=True)
        assert ckpt.layout == "lightning" and ckpt.metadata == {"epoch": 3, "hparams": {"lr": 0.5, "dims": [1, 2]}}
        _same(ckpt.state_dict, dict(torch.load(path, weights_only=True)["state_dict"]))
        # views of one storage stay views of one storage
        view, base = ckpt.state_dict["a.view"], ckpt.state_dict["a.base"]
        assert view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()


def test_raw_state_dict_file_gives_its_top_level_dict(tmp_path: Path):
    state = _random_state(12)
    path = tmp_path / "decoder.ckpt"
    torch.save(state, path)
    ckpt = read_checkpoint(path)
    assert ckpt.layout == "state_dict"
    _same(ckpt.state_dict, state)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_large_file_is_memory_mapped_not_read(tmp_path: Path):
    path = tmp_path / "big.ckpt"
    torch.save({"w": torch.ones(16 * 1024 * 1024)}, path)  # 64 MiB
    before = _rss_bytes()
    ckpt = read_checkpoint(path, mmap=True)
    assert _rss_bytes() - before < 16 * 1024 * 1024
    assert ckpt.state_dict["w"][-1].item() == 1.0  # pages come in on use


def test_truncated_file_is_rejected_naming_it(tmp_path: Path):
    source = tmp_path / "full.ckpt"
    torch.save({"state_dict": _random_state(13)}, source)
    data = source.read_bytes()
    for cut in (len(data) // 3, len(data) - 30, len(data) - 1):
        path = tmp_path / f"cut{cut}.ckpt"
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsError) as e:
            read_checkpoint(path)
        assert str(path) in e.value.message and "truncated" in e.value.message
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("content, says", [
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "PNG image"),
    (b"model weights, honestly\n" * 20, "text file"),
    (b"", "empty"),
    (b"<!DOCTYPE html><html>Access denied</html>", "HTML"),
    (pickle.dumps({"w": [1.0, 2.0]}, protocol=2), "bare pickle"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":{}}", "safetensors"),
])
def test_wrong_kind_of_file_is_rejected_with_what_it_is(tmp_path: Path, content: bytes, says: str):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as e:
        read_checkpoint(path)
    assert str(path) in e.value.message and says in e.value.message


def test_zip_that_is_not_a_torch_archive_is_rejected(tmp_path: Path):
    path = tmp_path / "release.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("checkpoints/pipeline.yaml", "a: 1\n")
    with pytest.raises(WeightsError, match="no data.pkl"):
        read_checkpoint(path)


@pytest.mark.parametrize("target, args", [
    (os.system, ("touch {marker}",)),
    (eval, ("open({marker!r}, 'w').close()",)),
    (exec, ("open({marker!r}, 'w').close()",)),
    (subprocess.Popen, (["touch", "{marker}"],)),
    (getattr, ("{marker}", "join")),
])
def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path, target, args):
    marker = tmp_path / "ran.txt"
    def fill(arg):
        return [fill(a) for a in arg] if isinstance(arg, list) else arg.format(marker=str(marker))

    filled = tuple(fill(arg) for arg in args)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _random_state(14), "payload": _Evil(target, filled)}, path)
    with pytest.raises(WeightsError) as e:
        read_checkpoint(path)
    assert "would run code" in e.value.message and str(path) in e.value.message
    assert f"{target.__module__}.{target.__name__}".replace("__builtin__", "builtins") in e.value.message
    assert not marker.exists()


def test_bare_pickle_with_payload_is_never_unpickled(tmp_path: Path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(_Evil(os.system, (f"touch {marker}",)), protocol=2))
    with pytest.raises(WeightsError, match="bare pickle"):
        read_checkpoint(path)
    assert not marker.exists()


def test_unknown_globals_become_inert_placeholders_and_are_never_imported(tmp_path: Path, monkeypatch):
    marker = tmp_path / "imported.txt"
    module = tmp_path / "threedfy_trap_module.py"
    module.write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "class Trap:\n"
        "    def __init__(self, x): self.x = x\n"
        "    def __reduce__(self): return (Trap, (self.x,), {'state': 1})\n"
        f"    def __setstate__(self, s): pathlib.Path({str(marker)!r}).write_text('setstate')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import threedfy_trap_module  # noqa: the module exists only to be pickled here

    path = tmp_path / "trap.ckpt"
    torch.save({"state_dict": _random_state(15), "trap": threedfy_trap_module.Trap(42)}, path)
    del sys.modules["threedfy_trap_module"]
    marker.unlink()

    ckpt = read_checkpoint(path)
    trap = ckpt.metadata["trap"]
    assert isinstance(trap, Opaque) and (trap.module, trap.name) == ("threedfy_trap_module", "Trap")
    assert trap.args == (42,) and trap.state == {"state": 1}
    assert "threedfy_trap_module" not in sys.modules and not marker.exists()


def test_state_dict_entry_that_is_not_a_tensor_is_an_error(tmp_path: Path):
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(2), "b": [1, 2]}}, path)
    with pytest.raises(WeightsError, match="'b' is a list, not a tensor"):
        read_checkpoint(path)


def test_crc_check_finds_a_flipped_byte(tmp_path: Path):
    path = tmp_path / "model.ckpt"
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, path)
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    data[start + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    read_checkpoint(path)  # without the check the bytes are taken as they are
    with pytest.raises(WeightsError, match="CRC"):
        read_checkpoint(path, verify_crc=True)
