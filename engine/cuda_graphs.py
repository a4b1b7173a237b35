"""A velocity function replayed from CUDA graphs, for one sampling run of one object, or kept across runs.

`KeptVelocity` keeps a wrapper's graphs for later runs of a network that stays loaded (stage 1: fixed shapes), its
condition copied into the captured buffers; `KeptFunction` does the same for any call on a dict of tensors (the
condition embedders). `RepeatedCall` replays an in-place call each time it comes again (the decimation's rounds).

Why: a flow transformer step is ~1,700 small kernels, and launching them eagerly from Python takes about as long
as the GPU needs to run them, so a stage's wall time follows the host's hiccups. A captured graph launches them
all with one call.

`GraphedVelocity(velocity, backend)` wraps `velocity(x, t, d, condition)` (the callable `sampling.sample` takes;
x a tensor or a dict of tensors). Calls are grouped by signature: the latent's leaf names, shapes, dtypes and
devices, those of t and d (or d None), and the condition object itself (guided and unguided steps pass different
ones). Per signature:

1. the first `warmup_calls` calls run eagerly on a side stream, as PyTorch's CUDA-graph notes require; they are
   real sampler steps, and they build everything lazy (SparseTensor neighbour and resampling maps, cuBLAS
   workspaces) that must not happen during capture;
2. the next call copies its inputs into static buffers, captures one graph that reads them into the wrapper's
   private memory pool (one pool for all its graphs: they never run concurrently and outputs are copied out
   before the next replay), and replays it;
3. every later call copies its inputs into those buffers, replays, and returns clones of the static outputs (the
   next replay overwrites them, so nobody may hold them).

A graph reads the condition (cross-attention keys/values) and the network's weights where they were at capture.
The wrapper holds each signature's condition so it cannot be freed under a graph; it serves one object's
sampling run, and `release()` (or leaving its `with` block) drops graphs, buffers and pool before the condition
or the network goes. If a capture fails (out of memory, an operation that cannot be captured), the wrapper warns
and runs eagerly for the rest of the run: graphs are a speed-up, never a reason for a run to fail.

The captured call may not synchronise with the host (`.item()`, `.tolist()`, `nonzero`, `bool(tensor)`, bincount
on CUDA) nor copy from host memory: whatever does must be built by the warm-up calls and cached.

The CUDA calls live in `CudaGraphBackend`; the bookkeeping here is tested on the CPU against a fake backend.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Union

import torch

Tree = Union[torch.Tensor, dict[str, torch.Tensor]]  # a latent or a velocity: a tensor or a dict of tensors
VelocityFn = Callable[[Tree, torch.Tensor, Union[torch.Tensor, None], Any], Tree]
WARMUP_CALLS = 2  # eager calls per signature before its capture


class GraphBackend(Protocol):
    """What `GraphedVelocity` needs from a device; `CudaGraphBackend` is the real one."""

    def new_pool(self) -> Any:
        """A private memory pool for the wrapper's graphs."""

    def warm_up(self, call: Callable[[], Tree]) -> Tree:
        """Run `call()` eagerly, as capture requires beforehand, and return its outputs."""

    def capture(self, call: Callable[[], Tree], pool: Any) -> tuple[Any, Tree]:
        """Capture `call()` into a graph drawing on `pool`: the graph and its static outputs (valid after a replay)."""

    def replay(self, graph: Any) -> None:
        """Run a captured graph once."""

    def release(self, graphs: list[Any]) -> None:
        """Free the graphs and hand their pool's memory back (their static tensors are already dropped)."""


@dataclass
class _Signature:
    """One call signature's state: eager calls so far, then its graph and static tensors."""

    condition: Any  # held: the graph reads its tensors
    eager_calls: int = 0
    graph: Any = None
    inputs: list[torch.Tensor] | None = None  # static x leaves, t, [d]
    outputs: Tree | None = None  # static outputs, overwritten by every replay


class GraphedVelocity:
    """`velocity(x, t, d, condition)` for one sampling run, replayed from one CUDA graph per call signature."""

    def __init__(self, velocity: VelocityFn, backend: GraphBackend, warmup_calls: int = WARMUP_CALLS):
        if warmup_calls < 1:
            raise ValueError(f"warmup_calls must be at least 1 (capture needs a warmed-up call), got {warmup_calls}")
        self.velocity = velocity
        self.backend = backend
        self.warmup_calls = warmup_calls
        self.fallback: str | None = None  # why the run went eager, once a capture failed
        self._signatures: dict[tuple, _Signature] = {}
        self._pool: Any = None
        self._released = False

    @property
    def graphs(self) -> int:
        """Graphs captured and held now."""
        return sum(s.graph is not None for s in self._signatures.values())

    def __call__(self, x: Tree, t: torch.Tensor, d: torch.Tensor | None, condition: Any) -> Tree:
        if self._released:
            raise RuntimeError("this GraphedVelocity was released; make a new one for each sampling run")
        if self.fallback is not None:
            return self.velocity(x, t, d, condition)
        key = _signature(x, t, d, condition)
        sig = self._signatures.get(key)
        if sig is None:
            sig = self._signatures[key] = _Signature(condition)
        if sig.graph is not None:
            for static, value in zip(sig.inputs, _inputs(x, t, d)):
                static.copy_(value)
            self.backend.replay(sig.graph)
            return _map(torch.clone, sig.outputs)
        if sig.eager_calls < self.warmup_calls:
            sig.eager_calls += 1
            return self.backend.warm_up(lambda: self.velocity(x, t, d, condition))
        return self._capture(sig, x, t, d, condition)

    def _capture(self, sig: _Signature, x: Tree, t: torch.Tensor, d: torch.Tensor | None, condition: Any) -> Tree:
        static_x = _map(torch.clone, x)  # these clones are the static input buffers, holding this call's inputs
        static_t = t.clone()
        static_d = None if d is None else d.clone()
        if self._pool is None:
            self._pool = self.backend.new_pool()
        try:
            graph, outputs = self.backend.capture(lambda: self.velocity(static_x, static_t, static_d, condition),
                                                  self._pool)
        except Exception as exc:  # any capture failure: the eager call is known to work (the warm-up calls ran it)
            self._give_up(exc)
            return self.velocity(x, t, d, condition)
        sig.graph, sig.inputs, sig.outputs = graph, _inputs(static_x, static_t, static_d), outputs
        self.backend.replay(graph)  # capture records the kernels without running them
        return _map(torch.clone, outputs)

    def _give_up(self, exc: Exception) -> None:
        # A failed capture can leave its pool half-used: drop every graph and run the rest of this sampling run
        # eagerly rather than mix graphs with a pool in an unknown state.
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}"
        self.fallback = reason
        self._drop()
        warnings.warn(
            f"CUDA graph capture failed ({reason}); the rest of this sampling run goes eagerly (same results, "
            "slower). Pass cuda_graphs=False to the Pipeline to skip graphs.",
            RuntimeWarning,
            stacklevel=3,
        )

    def release(self) -> None:
        """Drop every graph, static buffer, held condition and the pool; later calls are refused."""
        self._drop()
        self._released = True

    def _drop(self) -> None:
        graphs = [s.graph for s in self._signatures.values() if s.graph is not None]
        self._signatures.clear()  # the static tensors and conditions go first, so the pool can be freed
        self._pool = None
        if graphs:
            self.backend.release(graphs)

    def __enter__(self) -> GraphedVelocity:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class KeptVelocity:
    """A `GraphedVelocity` kept across sampling runs: its condition lives in static buffers that each run refills.

    A graph reads the condition's tensors where they were at capture, so a wrapper made per run serves one object.
    This one owns the first run's condition (`condition`) and its guided form (`guided`, from `make_guided`, which
    must hold the condition's tensors rather than copies); a later run with a condition of the same structure and
    shapes copies its values in (`load`) and replays the graphs already captured. For a network kept loaded
    between runs, whose stage has fixed shapes (stage 1): the warm-up calls and captures are paid once.
    `release()` must run before the network it calls goes (the graphs read its weights).
    """

    def __init__(self, velocity: VelocityFn, backend: GraphBackend, condition: Any,
                 make_guided: Callable[[Any], Any], warmup_calls: int = WARMUP_CALLS):
        self.graphed = GraphedVelocity(velocity, backend, warmup_calls)
        self.condition = condition
        self.guided = make_guided(condition)
        self.owner: Any = None  # what the caller keys these graphs on besides the shapes (the network they read)
        self._layout = _tree_layout(condition)

    def accepts(self, condition: Any) -> bool:
        """Can `load(condition)` take it: the same nesting, names and tensor shapes, dtypes and devices."""
        return _tree_layout(condition) == self._layout

    def load(self, condition: Any) -> None:
        """Copy `condition`'s values into the static condition (the graphs read them from there)."""
        if not self.accepts(condition):
            raise ValueError("this condition's structure or shapes differ from the kept one; make a new KeptVelocity")
        for static, value in zip(_tree_leaves(self.condition), _tree_leaves(condition)):
            if static is not value:
                static.copy_(value)

    def __call__(self, x: Tree, t: torch.Tensor, d: torch.Tensor | None, condition: Any) -> Tree:
        return self.graphed(x, t, d, condition)

    @property
    def fallback(self) -> str | None:
        return self.graphed.fallback

    def release(self) -> None:
        self.graphed.release()
        self.condition = self.guided = self.owner = None


class KeptFunction:
    """`fn(inputs)` (a dict of tensors -> a tensor or a dict of tensors) replayed from one CUDA graph per input
    layout, kept until `release()`: for a network kept loaded whose calls repeat with fixed shapes (the condition
    embedders' image encoders). Per layout: `warmup_calls` eager calls, then a capture; later calls copy their
    inputs into the static ones, replay, and get clones of the outputs. A failed capture warns and leaves every
    later call eager, as `GraphedVelocity` does.
    """

    def __init__(self, fn: Callable[[dict[str, torch.Tensor]], Tree], backend: GraphBackend,
                 warmup_calls: int = WARMUP_CALLS):
        # The inputs ride as the velocity's latent; t, d and the condition are placeholders the graph never reads.
        self.graphed = GraphedVelocity(lambda x, t, d, condition: fn(x), backend, warmup_calls)
        self.owner: Any = None  # what the caller keys these graphs on (the network they read)
        self._t = torch.zeros(1)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> Tree:
        return self.graphed(dict(inputs), self._t, None, None)

    @property
    def fallback(self) -> str | None:
        return self.graphed.fallback

    def release(self) -> None:
        self.graphed.release()
        self.owner = None


class RepeatedCall:
    """`repeat(call, key)`: run `call()` once, replayed from the graph captured for `key` (default: the call itself).

    For work that repeats on the same shapes with host decisions in between (the decimation's rounds: ~1,000 small
    kernels on fixed-size buffers, which take the GPU a few milliseconds while launching them from Python takes
    ~10). `call` must only write tensors that exist before it runs and keep nothing it allocates, never
    synchronise with the host and never copy from host memory. The first call overall runs eagerly (it makes
    whatever kernels create lazily); a later call with a new key is captured, then replayed, and each further call
    with that key replays. Every call runs eagerly without a backend (CPU) or after a capture failed (which warns
    once). All graphs draw on one private pool: what one allocates are temporaries, so a capture may take the
    blocks the others used, and replays in any order never overlap (one stream). The keys (held) and graphs stay
    until `release()` (leaving the `with` block).
    """

    def __init__(self, backend: GraphBackend | None):
        self.backend = backend
        self.fallback: str | None = None  # why the calls went eager, once a capture failed
        self._warm = False
        self._pool: Any = None
        self._graphs: dict[Any, Any] = {}  # key -> graph

    def __call__(self, call: Callable[[], None], key: Any = None) -> None:
        if self.backend is None or self.fallback is not None or not self._warm:
            self._warm = True
            call()
            return
        key = call if key is None else key
        graph = self._graphs.get(key)
        if graph is None:
            if self._pool is None:
                self._pool = self.backend.new_pool()
            try:
                graph, _ = self.backend.capture(call, self._pool)
            except Exception as exc:  # capture records kernels without running them: the state is untouched
                self.fallback = f"{type(exc).__name__}: {exc}".strip()
                self.release()  # the pool may be half-used: no graph of it runs again
                warnings.warn(f"CUDA graph capture of a repeated call failed ({self.fallback}); running it eagerly "
                              "(same results, more launch overhead)", RuntimeWarning, stacklevel=2)
                call()
                return
            self._graphs[key] = graph
        self.backend.replay(graph)

    def forget(self, key: Any) -> None:
        """Free the graph captured for `key`, if any (its pool blocks go back to the other graphs)."""
        graph = self._graphs.pop(key, None)
        if graph is not None:
            self.backend.release([graph])

    @property
    def graphs(self) -> int:
        """Graphs captured and held now."""
        return len(self._graphs)

    def release(self) -> None:
        graphs = list(self._graphs.values())
        self._graphs, self._pool = {}, None
        if graphs:
            self.backend.release(graphs)

    def __enter__(self) -> RepeatedCall:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class CudaGraphBackend:
    """The CUDA side: warm-up and capture on one side stream, replays on the caller's stream."""

    def __init__(self, device: torch.device | str, settle_before_capture: bool = True):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {self.device}; run eagerly on other devices")
        self.stream = torch.cuda.Stream(self.device)
        # Whether a capture first waits for the device and empties the allocator's cache: worth it before a flow's
        # large captures (their pool takes the freed blocks); a capture every few milliseconds skips it.
        self.settle_before_capture = settle_before_capture

    def new_pool(self) -> Any:
        with torch.cuda.device(self.device):
            return torch.cuda.graph_pool_handle()

    def warm_up(self, call: Callable[[], Tree]) -> Tree:
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)  # the inputs were written on the main stream
        with torch.cuda.stream(self.stream):
            out = call()
        main.wait_stream(self.stream)  # the caller reads the outputs on the main stream
        return out

    def capture(self, call: Callable[[], Tree], pool: Any) -> tuple[Any, Tree]:
        # As torch.cuda.graph does: nothing pending crosses into the capture, and the eager calls' cached blocks go
        # back to the device so the graph's pool can take them. Written out (not `with torch.cuda.graph`) so that
        # a failed capture still ends it and restores the caller's stream.
        if self.settle_before_capture:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            # thread_local: CUDA calls of other threads (the worker answering a status request) neither fail nor
            # break the capture
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            try:
                outputs = call()
            except BaseException:
                try:
                    graph.capture_end()
                except Exception:  # noqa: BLE001 - the capture is already broken; report what broke it
                    pass
                raise
            graph.capture_end()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return graph, outputs

    def replay(self, graph: Any) -> None:
        graph.replay()

    def release(self, graphs: list[Any]) -> None:
        for graph in graphs:
            graph.reset()
        # A freed private pool stays reserved until the allocator next runs short; give it back now.
        torch.cuda.empty_cache()


# ---- trees ---------------------------------------------------------------------------------------------------


def _signature(x: Tree, t: torch.Tensor, d: torch.Tensor | None, condition: Any) -> tuple:
    # The condition by identity: a graph reads the tensors it was captured with, so another condition object
    # (the guided calls' keys/values, or another object's) needs its own graph. Held by _Signature: ids stay unique.
    if isinstance(x, dict):
        layout = tuple((name, *_layout(_tensor(a))) for name, a in x.items())
    else:
        layout = _layout(_tensor(x))
    return layout, _layout(t), None if d is None else _layout(d), id(condition)


def _tree_leaves(tree: Any) -> list[torch.Tensor]:
    """The tensors of a condition (nested lists, tuples and dicts of tensors), depth first."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [a for key in tree for a in _tree_leaves(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [a for item in tree for a in _tree_leaves(item)]
    return []


def _tree_layout(tree: Any) -> Any:
    """A condition's structure with each tensor's layout, each other leaf's value (comparable with ==)."""
    if isinstance(tree, torch.Tensor):
        return ("tensor", *_layout(tree))
    if isinstance(tree, dict):
        return ("dict", tuple((key, _tree_layout(value)) for key, value in tree.items()))
    if isinstance(tree, (list, tuple)):
        return (type(tree).__name__, tuple(_tree_layout(item) for item in tree))
    return ("value", tree)


def _layout(a: torch.Tensor) -> tuple:
    return tuple(a.shape), a.dtype, a.device


def _tensor(a: Any) -> torch.Tensor:
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"GraphedVelocity needs latents that are tensors or dicts of tensors, got {type(a).__name__}")
    return a


def _inputs(x: Tree, t: torch.Tensor, d: torch.Tensor | None) -> list[torch.Tensor]:
    leaves = list(x.values()) if isinstance(x, dict) else [x]
    return leaves + [t] + ([] if d is None else [d])


def _map(fn: Callable[[torch.Tensor], torch.Tensor], tree: Tree) -> Tree:
    if isinstance(tree, dict):
        return {name: fn(a) for name, a in tree.items()}
    return fn(_tensor(tree))
