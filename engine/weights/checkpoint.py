"""Reading `.ckpt` files (torch.save zip archives) without executing any pickled code.

A `.ckpt` written by `torch.save` is a zip archive: `<name>/data.pkl` (a pickle describing the object),
`<name>/data/<key>` (one uncompressed record of raw bytes per tensor storage), `<name>/byteorder`, `<name>/version`.
`torch.load` unpickles `data.pkl` with the full power of pickle, which can run arbitrary code. We never do that:

* `data.pkl` is read by a restricted unpickler. Containers, numbers and strings are built as usual; tensors are
  rebuilt by our own code from the storage records; **every other global becomes an inert placeholder**
  (`Opaque`) that records its name and the arguments pickle would have passed, and is never called. Nothing is
  imported: an unknown module name stays a string.
* Globals that only a malicious file would name (`os.system`, `builtins.eval`, `subprocess.Popen`, …) reject the
  whole file.
* Storage records are memory-mapped (copy-on-write, one mapping of the whole file) or, with `mmap=False`, read
  once into their own memory: a 6.7 GB file never needs two copies in RAM.

Any problem raises one `WeightsError` naming the file; no tensors escape from a file that failed to load.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError

_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ZIP_LOCAL_HEADER_SIZE = 30

# Storage classes as torch.save names them in a storage's persistent id -> the element dtype.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}

# torch dtypes may appear as values (e.g. in hyper-parameters); they are plain objects, never called.
_TORCH_DTYPES = {
    name: getattr(torch, name)
    for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool",
                 "float", "half", "double", "long", "int", "short")
}

# Builtins that are safe to call with any arguments pickle can give them.
_SAFE_BUILTINS = {
    "dict": dict, "list": list, "tuple": tuple, "set": set, "frozenset": frozenset, "int": int,
    "float": float, "complex": complex, "str": str, "bytes": bytes, "bool": bool, "slice": slice,
    "range": range,
}

# Globals from these modules (or their submodules) can only mean a file that tries to run code when unpickled.
_DANGEROUS_MODULES = {
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess", "sys", "importlib", "imp",
    "runpy", "shutil", "socket", "ctypes", "pickle", "_pickle", "cPickle", "marshal", "code", "codeop", "pty",
    "webbrowser", "multiprocessing", "signal", "asyncio", "pdb", "bdb", "timeit", "operator", "_operator",
    "commands", "popen2", "zipimport", "pkgutil", "torch.hub", "torch.jit", "torch._C", "torch.ops",
    "torch.utils.cpp_extension", "torch.serialization",
}
_DANGEROUS_NAMES = {("torch", "load"), ("torch", "save"), ("torch", "compile"), ("types", "CodeType"),
                    ("types", "FunctionType"), ("types", "LambdaType"), ("types", "MethodType")}


@dataclass
class Checkpoint:
    """A loaded `.ckpt`: the state dict as a flat name -> tensor dict, plus the rest of the top-level dict."""

    path: Path
    layout: str  # "lightning" (tensors under ckpt["state_dict"]) or "state_dict" (the top-level dict itself)
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)  # other top-level entries; unknown objects are `Opaque`


class Opaque:
    """Stands in for an object of a class the loader does not build (DictConfig, typing.Any, Lightning objects…).

    Holds the global's name and what pickle would have passed to it (`args`, `state`, `items`); never calls or
    imports anything. Instances compare by identity; they exist only to make metadata inspectable.
    """

    module = "?"
    name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        self.items = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # arguments are kept by __new__, never used
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<opaque {self.module}.{self.name}>"


def read_checkpoint(path: str | Path, *, mmap: bool = True, verify_crc: bool = False) -> Checkpoint:
    """Load the tensors of a torch.save zip `.ckpt` without running pickled code.

    Lightning files give `ckpt["state_dict"]`, raw state-dict files their top-level dict. With `mmap=True` the
    tensors are copy-on-write views of one memory mapping of the file (nothing is read until used); with
    `mmap=False` each storage is read once into memory. `verify_crc` checks every record's CRC-32 (reads the file).
    Raises `WeightsError` (naming the file) for an empty, truncated, foreign or malicious file.
    """
    path = Path(path)
    obj = read_torch_pickle(path, mmap=mmap, verify_crc=verify_crc)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {_kind(obj)}, not a dict of weights",
                           "choose the .ckpt file of the official release")
    if "state_dict" in obj:
        layout, tensors = "lightning", obj["state_dict"]
        metadata = {k: v for k, v in obj.items() if k != "state_dict"}
        if not isinstance(tensors, dict):
            raise WeightsError(f"{path}: its 'state_dict' entry is a {_kind(tensors)}, not a dict of tensors",
                               "the file is damaged or not a model checkpoint")
    else:
        layout, tensors, metadata = "state_dict", obj, {}
    state_dict: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: state-dict entry {key!r} is a {_kind(value)}, not a tensor",
                               "the file is damaged or not a model checkpoint")
        state_dict[key] = value
    return Checkpoint(path=path, layout=layout, state_dict=state_dict, metadata=metadata)


def read_torch_pickle(path: str | Path, *, mmap: bool = True, verify_crc: bool = False) -> Any:
    """The object stored in a torch.save zip archive, rebuilt safely (see the module docstring)."""
    path = Path(path)
    archive = _Archive.open(path, verify_crc=verify_crc)
    storages = _StorageSource(archive, mmap=mmap)
    unpickler = _RestrictedUnpickler(io.BytesIO(archive.pickle_bytes), storages)
    try:
        return unpickler.load()
    except _Rejected as e:
        raise WeightsError(f"{path}: refuses to load: the pickle names {e.qualname}, which would run code",
                           "this is not a genuine model checkpoint; delete it and download the official file") from None
    except WeightsError:
        raise
    except Exception as e:  # any malformed pickle: one clear line, nothing loaded
        raise WeightsError(f"{path}: its data.pkl is corrupt ({type(e).__name__}: {e})",
                           "re-download the file") from None


# ---------------------------------------------------------------------------------------------------------------
# helpers


class _Rejected(Exception):
    def __init__(self, qualname: str):
        super().__init__(qualname)
        self.qualname = qualname


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass
class _Archive:
    """The zip directory of a torch.save archive: where data.pkl and each storage record lie in the file."""

    path: Path
    size: int
    pickle_bytes: bytes
    records: dict[str, tuple[int, int]]  # storage key -> (byte offset in the file, byte length)

    @classmethod
    def open(cls, path: Path, verify_crc: bool) -> _Archive:
        if not path.is_file():
            raise WeightsError(f"{path}: file not found", "check the weights folder")
        size = path.stat().st_size
        if size == 0:
            raise WeightsError(f"{path}: is empty (0 bytes)", "re-download the file")
        with open(path, "rb") as f:
            head = f.read(64)
        if not head.startswith(_ZIP_LOCAL_HEADER):
            raise WeightsError(f"{path}: is not a PyTorch checkpoint ({_describe_foreign(head)})",
                               "choose the .ckpt file of the official release")
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise WeightsError(f"{path}: is truncated or corrupt (its zip directory is unreadable, {size} bytes)",
                               "the download was probably interrupted; re-download the file") from None
        with zf:
            infos = zf.infolist()
            pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
            if len(pickles) != 1:
                raise WeightsError(f"{path}: is a zip archive but not a torch.save checkpoint (no data.pkl)",
                                   "choose the .ckpt file of the official release")
            prefix = pickles[0].filename[: -len("data.pkl")]
            try:
                pickle_bytes = zf.read(pickles[0])
                has_order = prefix + "byteorder" in zf.NameToInfo
                byteorder = zf.read(prefix + "byteorder").strip() if has_order else b"little"
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise WeightsError(f"{path}: is truncated or corrupt ({e})", "re-download the file") from None
            if byteorder != b"little":
                raise WeightsError(f"{path}: stores tensors in {byteorder.decode(errors='replace')}-endian byte order",
                                   "re-save it on a little-endian machine")
            records: dict[str, tuple[int, int]] = {}
            with open(path, "rb") as f:
                for info in infos:
                    if not info.filename.startswith(prefix + "data/"):
                        continue
                    key = info.filename[len(prefix + "data/"):]
                    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                        raise WeightsError(f"{path}: storage record {key} is compressed, which torch.save never does",
                                           "re-download the file")
                    offset = _record_data_offset(f, info, path)
                    if offset + info.file_size > size:
                        raise WeightsError(f"{path}: is truncated (record {key} ends at byte {offset + info.file_size}"
                                           f" of {size})", "re-download the file")
                    if verify_crc:
                        _check_crc(f, offset, info, path, key)
                    records[key] = (offset, info.file_size)
        return cls(path=path, size=size, pickle_bytes=pickle_bytes, records=records)


class _StorageSource:
    """Hands out the storage records as tensors: views of one file mapping, or freshly read memory."""

    def __init__(self, archive: _Archive, mmap: bool):
        self.archive = archive
        self.mapping = (torch.UntypedStorage.from_file(str(archive.path), shared=False, nbytes=archive.size)
                        if mmap else None)
        self.loaded: dict[str, torch.UntypedStorage] = {}

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.UntypedStorage:
        path = self.archive.path
        if key not in self.archive.records:
            raise WeightsError(f"{path}: storage record {key} is missing", "the file is damaged; re-download it")
        offset, nbytes = self.archive.records[key]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if nbytes != numel * itemsize:
            raise WeightsError(f"{path}: storage record {key} has {nbytes} bytes, expected {numel * itemsize}",
                               "the file is damaged; re-download it")
        if key not in self.loaded:
            if self.mapping is not None:
                self.loaded[key] = self.mapping[offset: offset + nbytes]
            else:
                buffer = torch.empty(nbytes, dtype=torch.uint8)
                with open(path, "rb") as f:
                    f.seek(offset)
                    if f.readinto(memoryview(buffer.numpy())) != nbytes:
                        raise WeightsError(f"{path}: is truncated (record {key})", "re-download the file")
                self.loaded[key] = buffer.untyped_storage()
        return self.loaded[key]


@dataclass(frozen=True)
class _StorageRef:
    """A storage as the pickle refers to it: typed bytes of one record."""

    storage: torch.UntypedStorage
    dtype: torch.dtype
    numel: int


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, storages: _StorageSource):
        super().__init__(file)
        self._storages = storages
        self._placeholders: dict[tuple[str, str], type] = {}

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"unsupported storage {storage_type!r:.80}")
        key = key.decode() if isinstance(key, bytes) else str(key)
        storage = self._storages.storage(key, storage_type.dtype, numel)
        return _StorageRef(storage=storage, dtype=storage_type.dtype, numel=numel)

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles use Python 2 names (`__builtin__`, `commands`…): read them as Python 3 does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module == "builtins":
            if name in _SAFE_BUILTINS:
                return _SAFE_BUILTINS[name]
            if name == "object":
                return self._placeholder(module, name)
            raise _Rejected(f"{module}.{name}")
        root = module.split(".")[0]
        if root in _DANGEROUS_MODULES or any(module == m or module.startswith(m + ".") for m in _DANGEROUS_MODULES):
            raise _Rejected(f"{module}.{name}")
        if (module, name) in _DANGEROUS_NAMES:
            raise _Rejected(f"{module}.{name}")
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "collections" and name == "defaultdict":
            return _plain_dict  # default factory dropped: the items follow as SETITEMS
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return _rebuild_from_type
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        if module == "torch" and name == "Size":
            return _size
        return self._placeholder(module, name)

    def _placeholder(self, module: str, name: str) -> type:
        """One inert class per global, so metadata shows what each object was; nothing is imported."""
        if (module, name) not in self._placeholders:
            self._placeholders[(module, name)] = type(f"Opaque[{module}.{name}]", (Opaque,),
                                                      {"module": module, "name": name})
        return self._placeholders[(module, name)]


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    """Our `_rebuild_tensor_v2`: a view of a storage record, bounds-checked (requires_grad / hooks ignored)."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage record")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (storage_offset, *size, *stride))):
        raise pickle.UnpicklingError(f"malformed tensor layout {size!r:.60} / {stride!r:.60}")
    numel = 1
    for s in size:
        numel *= s
    if numel > 0:
        last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= storage.numel:
            raise pickle.UnpicklingError(f"tensor of size {size} reaches past its storage ({storage.numel} elements)")
    tensor = torch.empty(0, dtype=storage.dtype)
    tensor.set_(storage.storage, storage_offset, size, stride)
    return tensor


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter without tensor data")
    return data


def _rebuild_from_type(func: Any, _new_type: Any, args: Any, _state: Any) -> Any:
    """Tensor subclasses: rebuild the plain tensor with our own function; the subclass and its state are dropped."""
    if func is not _rebuild_tensor or not isinstance(args, tuple):
        raise pickle.UnpicklingError("unsupported tensor subclass")
    return _rebuild_tensor(*args)


def _plain_dict(*_ignored: Any) -> dict:
    return {}


def _size(dims: Any = ()) -> tuple:
    if not (isinstance(dims, tuple) and all(isinstance(d, int) for d in dims)):
        raise pickle.UnpicklingError("malformed torch.Size")
    return dims


def _record_data_offset(f: Any, info: zipfile.ZipInfo, path: Path) -> int:
    """Where a stored record's bytes start: after its local header, whose name/extra lengths may differ from the
    central directory's."""
    f.seek(info.header_offset)
    header = f.read(_ZIP_LOCAL_HEADER_SIZE)
    if len(header) != _ZIP_LOCAL_HEADER_SIZE or not header.startswith(_ZIP_LOCAL_HEADER):
        raise WeightsError(f"{path}: is corrupt (bad zip header for {info.filename})", "re-download the file")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + _ZIP_LOCAL_HEADER_SIZE + name_len + extra_len


def _check_crc(f: Any, offset: int, info: zipfile.ZipInfo, path: Path, key: str) -> None:
    f.seek(offset)
    crc, left = 0, info.file_size
    while left:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    if crc != info.CRC:
        raise WeightsError(f"{path}: storage record {key} fails its CRC check", "the file is damaged; re-download it")


def _describe_foreign(head: bytes) -> str:
    """A short guess at what a file that is not a zip archive is."""
    if head.startswith(b"\x89PNG"):
        return "it is a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "it is a JPEG image"
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        return "it is a bare pickle or a legacy torch.save file, which cannot be read safely"
    if len(head) >= 9 and head[8:9] == b"{":
        return "it looks like a .safetensors file"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf")):
        return "it is a compressed archive"
    if head.lstrip().startswith((b"<!DOCTYPE", b"<html", b"<?xml", b"<")):
        return "it is an HTML/XML page, e.g. an error page saved instead of the download"
    try:
        head.decode("utf-8")
        return "it is a text file"
    except UnicodeDecodeError:
        return f"unknown format, starts with {head[:8].hex()}"


def _kind(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, Opaque) else f"{value.module}.{value.name}"
