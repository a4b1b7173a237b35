"""The flow transformers' element-wise chains, each one plain PyTorch function that torch.compile can fuse.

Between two matrix products (or a product and an attention call) a flow block runs chains of element-wise work:
norm + adaLN modulation, gated residual + the next norm, q/k RMS norm + the pose stream's key concatenation.
Eager, each op is its own kernel and its own pass over the activations; compiled by inductor, each chain is one or
two generated kernels. Matrix products and attention stay outside (cuBLAS, SDPA).

Policy, decided per call: a function runs compiled when `ENABLED` (env THREEDFY_COMPILE=0 turns it off; a
pipeline or benchmark may set the module attribute), its first tensor is on a device type in `DEVICE_TYPES`
(CUDA only, and only where Triton imports; tests add "cpu" to check inductor's C++ code), and gradients are
off (training keeps eager autograd). Otherwise the same function runs eagerly, so both paths compute the same
math and differ by rounding only. A compile failure warns once and turns compilation off for the process.

Shapes are static (stage 1's never change; static code costs the least host time per call), except inside
`varying_rows()`, which the SLAT flow enters because its voxel count differs per object: there every dimension
of a tensor argument but the last is dynamic from the first compile, the last (channels, head dim) static, so
norms still reduce over a known width (sizes 0 and 1 get graphs of their own). The two kinds are compiled and
cached apart. Compilation happens on the first call with new shapes, so warm up before capturing a CUDA graph;
while a capture runs nothing recompiles (new shapes run eagerly), nor once a function has reached dynamo's
recompile limit (its compiled shapes keep their code; the others run eagerly). The compiled code does no host
synchronisation.

Shapes: G groups of L tokens (the SS flow's batch rows, or the SLAT flow's batch items; one group when the
items' sizes differ), C channels, H heads, D head dim, P pose tokens, N shape tokens, V voxels, B batch items.
"""
from __future__ import annotations

import contextvars
import functools
import importlib.util
import os
import types
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F

from .norms import rms_norm_heads

ENV_SWITCH = "THREEDFY_COMPILE"  # "0" turns compilation off
ENABLED: bool = os.environ.get(ENV_SWITCH, "1").strip() != "0"  # the switch a pipeline or benchmark may set
DEVICE_TYPES: tuple[str, ...] = ("cuda",)  # device types that run compiled code (tests add "cpu")

_failure: str | None = None  # the first compile failure; set, everything runs eagerly
_varying = contextvars.ContextVar("threedfy_fused_varying_rows", default=False)


class FusedFunction:
    """`fn`, run through torch.compile when the module policy allows (see the module docstring), else as is."""

    def __init__(self, fn: Callable[..., Any]):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._compiled: dict[bool, Callable[..., Any]] = {}  # varying rows? -> compiled function
        self.saturated = False  # dynamo's recompile limit reached: the graphs it has serve, new shapes run eagerly

    def __call__(self, *args: Any) -> Any:
        if _compiles(args[0]):
            try:
                compiled = self._compiled_for(_varying.get(), args)
                if _capturing(args[0]) or self.saturated:
                    with torch.compiler.set_stance("eager_on_recompile"):  # no compiling inside a CUDA graph
                        return compiled(*args)
                return compiled(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - a compile failure (no Triton/compiler, inductor bug)...
                out = self.fn(*args)  # ...unless the call itself is wrong: then eager raises that error here
                if type(exc).__name__ == "FailOnRecompileLimitHit":  # torch._dynamo.exc's
                    # Many shapes or dtypes in one process (a float32 reference beside bf16 runs, several
                    # presets): keep what is compiled rather than turning compilation off for everything.
                    self.saturated = True
                else:
                    _give_up(self.__name__, exc)
                return out
        return self.fn(*args)

    def _compiled_for(self, varying: bool, args: tuple[Any, ...]) -> Callable[..., Any]:
        if varying:
            _mark_dynamic_rows(args)
        if varying not in self._compiled:
            # dynamo caches compiled graphs per code object: the varying kind gets a copy of fn's, so a dynamic
            # graph never serves (and slows) the static calls
            fn = _with_own_code(self.fn) if varying else self.fn
            self._compiled[varying] = torch.compile(fn, fullgraph=True, dynamic=False)
        return self._compiled[varying]


def fused(fn: Callable[..., Any]) -> FusedFunction:
    return FusedFunction(fn)


@contextmanager
def varying_rows() -> Iterator[None]:
    """Inside, compiled chains keep every dim but the last dynamic (for inputs whose token counts vary)."""
    token = _varying.set(True)
    try:
        yield
    finally:
        _varying.reset(token)


def compile_failure() -> str | None:
    """Why compilation was turned off for this process, or None."""
    return _failure


# ---- the chains ----------------------------------------------------------------------------------------------


@fused
def norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine-free LayerNorm of x (G, L, C), then · (1 + scale) + shift, each (G, 1 | L, C) -> (G, L, C).
    Eager: F.layer_norm keeps float32 statistics and arithmetic inside for bf16 input; addcmul rounds once."""
    return torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=eps), 1 + scale)


@fused
def gated_residual_norm(
    x: torch.Tensor,
    gate: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x + gate · h for x, h (G, L, C), gate (G, 1 | L, C); and the affine LayerNorm (weight, bias (C,)) of the
    result -> (G, L, C) twice. (All rows are normalised, also those of a guided batch that need none: so the
    norm reads the sum where it is made, in one kernel.)"""
    x = torch.addcmul(x, gate, h)
    return x, F.layer_norm(x, x.shape[-1:], weight, bias, eps)


@fused
def residual_norm_modulate(
    x: torch.Tensor,
    h: torch.Tensor,
    null_out: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x + h, then `norm_modulate` of that, for x (G, L, C) -> (G, L, C) twice. h: rows of x (the same shape,
    or (rows, C)); with `null_out` (C,) the rows of x after h's get + null_out instead (a guided batch's
    unconditional rows, whose cross-attention output is that constant)."""
    c = x.shape[-1]
    if null_out is None:
        x = x + h.view_as(x)
    else:
        flat, h = x.reshape(-1, c), h.reshape(-1, c)  # (G·L, C), (rows, C)
        m = h.shape[0]
        x = torch.cat([flat[:m] + h, flat[m:] + null_out]).view_as(x)
    return x, torch.addcmul(shift, F.layer_norm(x, (c,), eps=eps), 1 + scale)


class GatedResidual(NamedTuple):
    """A flow block's gated MLP residual, x + gate · update, left for the next block to add inside its first chain
    (`gated_residual_norm_modulate`); the last block's is added by `add_to`."""

    gate: torch.Tensor  # (G, 1 | L, C)
    update: torch.Tensor  # (G, L, C)

    def add_to(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, C) -> feats + gate · update, (N, C)."""
        return torch.addcmul(feats.view_as(self.update), self.gate, self.update).view_as(feats)


@fused
def gated_residual_norm_modulate(
    x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x + gate · h (the previous flow block's gated MLP residual) for x, h (G, L, C), gate (G, 1 | L, C), then
    `norm_modulate` of the sum -> (G, L, C) twice. One pass where the residual alone took a kernel of its own
    (in the SLAT flow its strided gate went through addcmul's generic kernel: 43 µs for 2 items of 6,192 voxels,
    H200), and the norm read the sum back."""
    x = torch.addcmul(x, gate, h)
    return x, torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=eps), 1 + scale)


@fused
def normed_qkv(qkv: torch.Tensor, gamma_q: torch.Tensor, gamma_k: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v of a to_qkv output (G, L, 3, H, D), q and k through their per-head RMS norms (gamma (H, D) each)
    -> q, k (G, L, H, D), v the (strided) view of qkv."""
    q, k = rms_norm_heads(qkv[:, :, :2], torch.stack([gamma_q, gamma_k])).unbind(2)
    return q, k, qkv[:, :, 2]


@fused
def mot_qkv(
    qkv_shape: torch.Tensor,
    qkv_pose: torch.Tensor,
    gammas_shape: tuple[torch.Tensor, torch.Tensor],
    gammas_pose: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """The MoT self-attention inputs from both streams' to_qkv outputs (B, N | P, 3, H, D) and their (q, k) RMS
    norm gammas (H, D): q, k, v of the shape stream (B, N, H, D); q of the pose stream (B, P, H, D) and the keys
    and values it attends to, [pose; shape] (B, P + N, H, D). Compiled, the shape keys are written once for both."""
    q_s, k_s, v_s = normed_qkv.fn(qkv_shape, *gammas_shape)  # .fn: the plain function, traced into this one
    q_p, k_p, v_p = normed_qkv.fn(qkv_pose, *gammas_pose)
    return q_s, k_s, v_s, q_p, torch.cat([k_p, k_s], dim=1), torch.cat([v_p, v_s], dim=1)


@fused
def norm_silu(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """SiLU(LayerNorm(x)) for x (V, C), float32 statistics, in x's dtype (the SLAT res blocks' first half)."""
    return F.silu(F.layer_norm(x, x.shape[-1:], weight, bias, eps))


@fused
def norm_modulate_silu(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, batch: torch.Tensor, eps: float
) -> torch.Tensor:
    """SiLU(LayerNorm(x) · (1 + scale) + shift) for x (V, C) with each voxel's item's shift, scale (B, C) picked
    by batch (V,) int (the SLAT res blocks' modulated norm). index_select, not shift[batch]: its backward is an
    atomic index_add (advanced indexing's sorts are ~3x slower)."""
    shift, scale = shift.index_select(0, batch), scale.index_select(0, batch)  # (V, C) each
    return F.silu(torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=eps), 1 + scale))


# ---- policy -------------------------------------------------------------------------------------------------------


def _compiles(x: torch.Tensor) -> bool:
    return (
        ENABLED
        and _failure is None
        and x.device.type in DEVICE_TYPES
        and not torch.is_grad_enabled()
        and _compiler_available(x.device.type)
    )


@functools.cache
def _compiler_available(device_type: str) -> bool:
    """Inductor generates Triton kernels on CUDA (Triton ships with PyTorch's Linux wheels, not Windows') and C++
    on the CPU (needs a C++ compiler: only tried where a test asks)."""
    if device_type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return device_type == "cpu"


def _capturing(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _mark_dynamic_rows(args: tuple[Any, ...]) -> None:
    """Tell dynamo (read when it compiles) which dims are dynamic: all but the last of every tensor argument, and
    the one dim of integer vectors (per-row indices such as a voxel's batch item; float vectors are per channel)."""
    for t in args:
        if not isinstance(t, torch.Tensor):
            continue
        if t.ndim == 1 and not t.is_floating_point():
            torch._dynamo.maybe_mark_dynamic(t, 0)
            continue
        if t.ndim > 1:
            torch._dynamo.maybe_mark_dynamic(t, list(range(t.ndim - 1)))
        torch._dynamo.mark_static(t, t.ndim - 1)


def _with_own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn with a code object of its own (the same code): dynamo keeps a separate cache for it."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _give_up(name: str, exc: Exception) -> None:
    global _failure
    _failure = f"{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    warnings.warn(
        f"torch.compile of the flow transformers' fused element-wise code failed ({_failure}); running them "
        f"eagerly from now on (same results, slower). Set {ENV_SWITCH}=0 to skip compiling.",
        RuntimeWarning,
        stacklevel=3,
    )
