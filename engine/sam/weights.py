"""Loading the public segment-anything checkpoints (`sam_vit_b_01ec64.pth`, `sam_vit_l_0b3195.pth`,
`sam_vit_h_4b8939.pth`), or a random model for tests and smoke runs.

The files are plain `torch.save` state dicts (names exactly as `Sam`'s, float32); they are read with the engine's
restricted reader (no pickled code runs). The size is read from the weights themselves (the image encoder's width:
768 ViT-B, 1024 ViT-L, 1280 ViT-H), so a renamed file still loads; the check is strict (no missing, no unexpected
key, equal shapes), and any failure is one `WeightsError` line naming the file.

Where the file comes from (`spec`):
* a path to the `.pth` file, or to a folder holding exactly one `sam_vit_*.pth` (or one of the asked-for size);
* `hf:OWNER/NAME[@REVISION]/PATH/IN/REPO.pth`: one file of a Hugging Face repository, fetched with progress and
  resume through `engine.weights.hub.download_file` (offline, the copy fetched before is used). Meta publishes the
  files on its own CDN, not on the Hub, so there is no built-in default repository;
* `random:PRESET` (`tiny`, `vit_b`, `vit_l`, `vit_h`): `random_sam(PRESET, seed=RANDOM_SEED)`, for tests and smoke
  runs (only `load_sam` takes it: there is no file).
Any other `scheme:` is refused by name, rather than looked for as a file.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import WeightsError
from ..weights.keys import check_state_dict
from ..weights.keys import expected_shapes
from ..random_weights import randomize_
from ..weights.checkpoint import read_checkpoint
from ..weights.hub import ProgressFn, download_file
from .model import PRESETS, Sam

PUBLIC_FILES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}
WIDTH_KEY = "image_encoder.patch_embed.proj.weight"  # (C, 3, 16, 16): C names the size
_HUB_SPEC = re.compile(r"hf:(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<revision>[^/\s]+))?/(?P<path>\S+)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]+:")  # two letters at least: `C:\...` stays a Windows path
_RANDOM_PREFIX = "random:"
RANDOM_SEED = 0  # `random:PRESET` weights; fixed, so a worker's random SAM equals random_sam(PRESET) in a test
_SPEC_HINT = ("choose a sam_vit_b/l/h .pth file of the segment-anything release, hf:OWNER/NAME[@REVISION]/FILE.pth, "
             "or random:tiny (random weights, for tests)")


def load_sam(
    spec: str | Path,
    *,
    variant: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: ProgressFn | None = None,
    offline: bool | None = None,
    download_dir: str | Path | None = None,
) -> Sam:
    """The SAM model of a checkpoint (see the module docstring for `spec`), in eval mode on `device`, weights cast
    to `dtype`. `variant` ("vit_b", "vit_l", "vit_h", or "tiny" for test files) is checked against the weights
    when given, else read from them."""
    if variant is not None and variant not in PRESETS:
        raise WeightsError(f"unknown SAM size {variant!r}", f"choose one of {', '.join(sorted(PRESETS))}")
    if isinstance(spec, str) and spec.startswith(_RANDOM_PREFIX):
        preset = spec[len(_RANDOM_PREFIX):]
        if preset not in PRESETS:
            raise WeightsError(f"unknown SAM model spec {spec!r}: no SAM size {preset!r}",
                               f"write random:PRESET with PRESET one of {', '.join(sorted(PRESETS))}")
        if variant is not None and PRESETS[variant] != PRESETS[preset]:
            raise WeightsError(f"SAM model spec {spec!r} is a {preset} model, not {variant}",
                               f"ask for random:{variant} or for {preset}")
        return random_sam(preset, seed=RANDOM_SEED, device=device, dtype=dtype)
    path = resolve_sam_file(spec, variant=variant, progress=progress, offline=offline, download_dir=download_dir)
    # Read into memory, not mapped: the worker keeps SAM loaded between clicks, and a mapped file that is replaced
    # in place meanwhile (a new download copied over it) would take the process down with SIGBUS.
    state_dict = read_checkpoint(path, mmap=False).state_dict
    found = infer_variant(state_dict, path)
    if variant is not None and found is not None and found != variant:
        raise WeightsError(f"SAM checkpoint {path} holds a {found} model, not {variant}",
                           f"choose the {variant} file or ask for {found}")
    variant = variant or found
    if variant is None:
        width = tuple(state_dict[WIDTH_KEY].shape)[0] if WIDTH_KEY in state_dict else None
        raise WeightsError(f"SAM checkpoint {path} is not one of the public SAM sizes (image encoder width {width})",
                           "choose sam_vit_b/l/h .pth from the segment-anything release")
    with torch.device("meta"):
        model = Sam(PRESETS[variant])
    check_state_dict(state_dict, expected_shapes(model), file=path, model="SAM", floats_only=True)
    model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True, assign=True)
    return model.to(device).eval()


def random_sam(preset: str = "tiny", *, seed: int = 0, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> Sam:
    """A SAM of `preset` with seeded random weights (engine.random_weights' rule; the Fourier matrix N(0, 1))."""
    model = Sam(PRESETS[preset])
    randomize_(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    matrix = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    with torch.no_grad():
        matrix.copy_(torch.randn(matrix.shape, generator=g))
    return model.to(device=device, dtype=dtype).eval()


def resolve_sam_file(
    spec: str | Path,
    *,
    variant: str | None = None,
    progress: ProgressFn | None = None,
    offline: bool | None = None,
    download_dir: str | Path | None = None,
) -> Path:
    """The local checkpoint file `spec` names: a file, a folder's one `sam_vit_*.pth`, or a fetched hub file."""
    if isinstance(spec, str) and not spec.strip():
        raise WeightsError("no SAM weights were given", _SPEC_HINT)
    if isinstance(spec, str) and _SCHEME.match(spec) and not spec.startswith("hf:"):
        raise WeightsError(f"unknown SAM model spec {spec!r}", _SPEC_HINT)
    if isinstance(spec, str) and spec.startswith("hf:"):
        repo, revision, filename = parse_hub_spec(spec)
        return download_file(repo, filename, revision=revision, offline=offline, progress=progress,
                             download_dir=download_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        pattern = f"sam_vit_{variant[-1]}*.pth" if variant in PUBLIC_FILES else "sam_vit_*.pth"
        found = sorted(path.glob(pattern))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
            raise WeightsError(f"folder {path} holds {what} {pattern} files", "choose the checkpoint file itself")
        return found[0]
    if not path.is_file():
        raise WeightsError(f"SAM checkpoint {path} not found",
                           f"download {PUBLIC_FILES['vit_b']} (or the _l / _h file) from the segment-anything "
                           "release and choose it, or give hf:OWNER/REPO/FILE.pth")
    return path


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """`hf:OWNER/NAME[@REVISION]/PATH` -> (repo, revision or None, path in the repo)."""
    match = _HUB_SPEC.fullmatch(spec.strip())
    if not match:
        raise WeightsError(f"SAM weights {spec!r} are not a hub file spec",
                           "write hf:OWNER/NAME/FILE.pth or hf:OWNER/NAME@REVISION/FILE.pth")
    return match["repo"], match["revision"], match["path"]


def infer_variant(state_dict: dict[str, torch.Tensor], path: str | Path) -> str | None:
    """The public size whose image-encoder width the weights have ("vit_b" / "vit_l" / "vit_h"), None for another
    width. Raises WeightsError when the file has no SAM image encoder at all."""
    if WIDTH_KEY not in state_dict:
        sample = ", ".join(sorted(state_dict)[:3]) or "nothing"
        raise WeightsError(f"{path} is not a SAM checkpoint: it has no {WIDTH_KEY} (found {sample})",
                           "choose sam_vit_b/l/h .pth from the segment-anything release")
    width = tuple(state_dict[WIDTH_KEY].shape)[0]
    by_width = {PRESETS[name].encoder_embed_dim: name for name in PUBLIC_FILES}
    return by_width.get(width)
