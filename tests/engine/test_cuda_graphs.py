"""The CUDA-graph velocity wrapper's bookkeeping, on the CPU against a fake backend.

The fake keeps graph semantics where they matter: a capture records the call (its static outputs hold NaN until
the first replay, as a real capture runs nothing), and a replay re-runs the recorded call on the static input
buffers and writes into the same static output tensors.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from engine.cuda_graphs import GraphedVelocity, KeptVelocity, RepeatedCall
from engine.sampling import SamplerSettings, sample


class FakeBackend:
    def __init__(self, fail_capture: bool = False):
        self.fail_capture = fail_capture
        self.events: list[str] = []
        self.released: list[int] = []  # graphs freed per release

    def new_pool(self) -> object:
        self.events.append("pool")
        return object()

    def warm_up(self, call):
        self.events.append("warm_up")
        return call()

    def capture(self, call, pool):
        self.events.append("capture")
        if self.fail_capture:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        outputs = call()
        for a in _leaves(outputs):
            a.fill_(float("nan"))  # a real capture runs nothing: only a replay fills the outputs
        return (call, outputs), outputs

    def replay(self, graph) -> None:
        self.events.append("replay")
        call, outputs = graph
        for static, fresh in zip(_leaves(outputs), _leaves(call())):
            static.copy_(fresh)

    def release(self, graphs) -> None:
        self.released.append(len(graphs))


def _leaves(tree):
    return list(tree.values()) if isinstance(tree, dict) else [tree]


def _velocity(weight: torch.Tensor):
    """A velocity that depends on every input: x (a dict of two latents), t, d and the condition."""

    def velocity(x, t, d, condition):
        scale = (t / 1000)[:, None, None] + (0 if d is None else (d / 1000)[:, None, None])
        return {
            "shape": torch.tanh(x["shape"] @ weight.to(x["shape"].dtype)) * scale + condition.mean(dim=1, keepdim=True),
            "pose": x["pose"] * scale - condition[:, :1, : x["pose"].shape[-1]],
        }

    return velocity


def _inputs(gen: torch.Generator, rows: int = 1):
    x = {"shape": torch.randn(rows, 6, 4, generator=gen), "pose": torch.randn(rows, 1, 3, generator=gen)}
    t = torch.rand(rows, generator=gen) * 1000
    d = torch.rand(rows, generator=gen) * 100
    return x, t, d


def test_each_signature_warms_up_then_captures_once_and_replays_with_the_eager_results():
    gen = torch.Generator().manual_seed(0)
    velocity = _velocity(torch.randn(4, 4, generator=gen))
    cond = torch.randn(1, 5, 4, generator=gen)
    guided = torch.randn(2, 5, 4, generator=gen)  # another condition object, for batch-2 calls
    backend = FakeBackend()
    graphed = GraphedVelocity(velocity, backend, warmup_calls=2)
    for step in range(6):
        for c, rows in ((guided, 2), (cond, 1)):  # interleaved signatures
            x, t, d = _inputs(gen, rows)
            got = graphed(x, t, d, c)
            want = velocity(x, t, d, c)
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"step {step}, rows {rows}, {k}")
    assert backend.events.count("warm_up") == 4  # 2 per signature
    assert backend.events.count("capture") == 2 and backend.events.count("pool") == 1  # one pool for both
    assert backend.events.count("replay") == 2 * 4  # the capturing call replays too
    assert graphed.graphs == 2


def test_returned_velocities_survive_later_replays():
    gen = torch.Generator().manual_seed(1)
    velocity = _velocity(torch.randn(4, 4, generator=gen))
    cond = torch.randn(1, 5, 4, generator=gen)
    graphed = GraphedVelocity(velocity, FakeBackend(), warmup_calls=1)
    kept = []
    for _ in range(5):
        x, t, d = _inputs(gen)
        kept.append((graphed(x, t, d, cond), velocity(x, t, d, cond)))
    for got, want in kept:  # the static outputs were overwritten four times since the first replay
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_new_shapes_dtypes_d_or_condition_objects_get_their_own_graph():
    gen = torch.Generator().manual_seed(2)
    velocity = _velocity(torch.randn(4, 4, generator=gen))
    cond = torch.randn(1, 5, 4, generator=gen)
    same_values = cond.clone()  # equal values, another object: a graph must never read another condition
    backend = FakeBackend()
    graphed = GraphedVelocity(velocity, backend, warmup_calls=1)

    def call(c, d_none=False, tokens=6, dtype=torch.float32):
        x, t, d = _inputs(gen)
        x["shape"] = torch.randn(1, tokens, 4, generator=gen).to(dtype)
        d = None if d_none else d
        got, want = graphed(x, t, d, c), velocity(x, t, d, c)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)

    for variant in ({}, {"d_none": True}, {"tokens": 7}, {"dtype": torch.float64}):
        for _ in range(3):
            call(cond, **variant)
    for _ in range(3):
        call(same_values)
    assert backend.events.count("capture") == 5 and graphed.graphs == 5


def test_a_failed_capture_warns_and_the_run_goes_on_eagerly_with_the_same_results():
    gen = torch.Generator().manual_seed(3)
    velocity = _velocity(torch.randn(4, 4, generator=gen))
    cond = torch.randn(1, 5, 4, generator=gen)
    backend = FakeBackend(fail_capture=True)
    graphed = GraphedVelocity(velocity, backend, warmup_calls=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            x, t, d = _inputs(gen)
            got, want = graphed(x, t, d, cond), velocity(x, t, d, cond)
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "OutOfMemoryError" in messages[0] and "cuda_graphs=False" in messages[0]
    assert backend.events.count("capture") == 1  # never tried again
    assert "replay" not in backend.events
    assert graphed.fallback is not None and graphed.graphs == 0


def test_release_frees_graphs_and_conditions_and_refuses_later_calls():
    gen = torch.Generator().manual_seed(4)
    velocity = _velocity(torch.randn(4, 4, generator=gen))
    cond = torch.randn(1, 5, 4, generator=gen)
    backend = FakeBackend()
    with GraphedVelocity(velocity, backend, warmup_calls=1) as graphed:
        for _ in range(3):
            graphed(*_inputs(gen), cond)
        assert graphed.graphs == 1
    assert backend.released == [1] and graphed.graphs == 0
    assert not graphed._signatures  # nothing holds the condition's tensors any more
    with pytest.raises(RuntimeError, match="make a new one for each sampling run"):
        graphed(*_inputs(gen), cond)


def test_a_latent_that_is_not_a_tensor_or_a_dict_of_tensors_is_refused():
    graphed = GraphedVelocity(lambda x, t, d, c: x, FakeBackend())
    with pytest.raises(TypeError, match="tensors or dicts of tensors"):
        graphed([torch.ones(1)], torch.ones(1), None, None)
    with pytest.raises(ValueError, match="warmup_calls must be at least 1"):
        GraphedVelocity(lambda x, t, d, c: x, FakeBackend(), warmup_calls=0)


def test_the_sampler_gives_the_same_latents_through_the_graphs():
    gen = torch.Generator().manual_seed(5)
    velocity = _velocity(torch.randn(4, 4, generator=gen))
    cond = torch.randn(1, 5, 4, generator=gen)
    noise, _, _ = _inputs(gen)
    settings = SamplerSettings(steps=20, rescale_t=2.0, cfg_strength=2.0, cfg_interval=(0.0, 500.0), takes_d=True)
    backend = FakeBackend()
    with GraphedVelocity(velocity, backend) as graphed:
        got = sample(graphed, noise, cond, settings)
    want = sample(velocity, noise, cond, settings)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    assert backend.events.count("capture") == 2  # guided and unguided steps
    assert backend.released == [2]


def test_a_kept_velocity_serves_later_conditions_from_the_graphs_of_the_first():
    gen = torch.Generator().manual_seed(11)
    velocity = _velocity(torch.randn(4, 4, generator=gen))
    first = [{"a": (torch.randn(1, 5, 4, generator=gen), torch.randn(1, 5, 4, generator=gen))}]
    second = [{"a": (torch.randn(1, 5, 4, generator=gen), torch.randn(1, 5, 4, generator=gen))}]
    settings = SamplerSettings(steps=12, rescale_t=2.0, cfg_strength=2.0, cfg_interval=(0.0, 500.0), takes_d=True)

    def as_tensor(c):  # the kept condition is a nested tree of tensors like the flows' keys/values
        return c[0]["a"][0] + c[0]["a"][1]

    def make_guided(c):  # holds the condition's tensors, as the flows' guided_kv does
        return {"source": c}

    def guided_velocity(x, t, d, c):
        if isinstance(c, dict):  # guided: the conditional row, then an all-zero condition row
            return velocity(x, t, d, torch.cat([as_tensor(c["source"]), as_tensor(c["source"]) * 0]))
        return velocity(x, t, d, as_tensor(c))

    backend = FakeBackend()
    first_values = [{"a": tuple(a.clone() for a in first[0]["a"])}]  # `first` becomes the static buffers
    kept = KeptVelocity(guided_velocity, backend, first, make_guided)
    noise, _, _ = _inputs(gen)
    got_first = sample(kept, noise, kept.condition, settings, guided_condition=kept.guided)
    captures = backend.events.count("capture")
    assert captures == 2  # guided and unguided calls
    assert kept.accepts(second)
    kept.load(second)
    got_second = sample(kept, noise, kept.condition, settings, guided_condition=kept.guided)
    assert backend.events.count("capture") == captures and backend.events.count("warm_up") == 4  # replays only
    for cond, got in ((first_values, got_first), (second, got_second)):
        want = sample(guided_velocity, noise, cond, settings, guided_condition=make_guided(cond))
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    assert not torch.equal(got_first["shape"], got_second["shape"])

    other = [{"a": (torch.randn(1, 6, 4, generator=gen), torch.randn(1, 6, 4, generator=gen))}]
    assert not kept.accepts(other) and not kept.accepts([{"b": second[0]["a"]}])
    with pytest.raises(ValueError, match="differ"):
        kept.load(other)
    kept.release()
    assert backend.released == [2] and kept.condition is None


def test_the_pipeline_samples_stage_1_through_kept_graphs_when_on(monkeypatch):
    from engine import pipeline as pipeline_mod
    from tests.engine.test_pipeline import _scene

    pipe = pipeline_mod.Pipeline.from_source("random", "tiny", device="cpu", seed=3, cuda_graphs=True)
    assert not pipe.cuda_graphs  # ignored off CUDA
    image, mask, pointmap = _scene()
    args = dict(pointmap=pointmap, seed=9, quality="default", outputs=("gaussians",), postprocess=None)
    eager = pipe.reconstruct(image, [mask], **args)
    other_image = _scene(seed=1)[0]  # another picture: other condition keys/values
    eager_other = pipe.reconstruct(other_image, [mask], **{**args, "seed": 10})

    backends: list[FakeBackend] = []
    monkeypatch.setattr(pipeline_mod, "CudaGraphBackend", lambda device: backends.append(FakeBackend()) or backends[-1])
    pipe.cuda_graphs = True  # as on CUDA, with the fake backend
    graphed = pipe.reconstruct(image, [mask], **args)
    stage1 = pipe._kept_geometry.graphed.backend
    embedders = [pipe._kept_embedders[name].graphed.backend for name in ("ss_condition", "slat_condition")]
    assert sorted(map(id, backends)) == sorted(map(id, [stage1, *embedders]))  # stage 2 runs eagerly
    assert "capture" in stage1.events and "replay" in stage1.events
    assert all(set(b.events) == {"warm_up"} for b in embedders)  # one eager call per input layout first
    before = list(stage1.events)
    graphed_other = pipe.reconstruct(other_image, [mask], **{**args, "seed": 10})
    assert len(backends) == 3 and set(stage1.events[len(before):]) == {"replay"}  # no warm-up or capture again
    assert all({"capture", "replay"} <= set(b.events) for b in embedders)
    assert not any(b.released for b in backends)  # all kept while their networks stay loaded
    for got, want in ((graphed, eager), (graphed_other, eager_other)):
        for key in ("stage1.shape", "stage2.x1_normalized"):
            np.testing.assert_array_equal(got.objects[0].raw[key].numpy(), want.objects[0].raw[key].numpy())
        np.testing.assert_array_equal(got.objects[0].gaussians.xyz, want.objects[0].gaussians.xyz)
    pipe.models.release("ss_flow", "ss_condition")  # the networks go: their graphs first
    assert stage1.released == [2] and pipe._kept_geometry is None
    assert embedders[0].released == [2] and not embedders[1].released
    assert list(pipe._kept_embedders) == ["slat_condition"]


def test_graphs_are_not_kept_when_networks_are_freed_after_each_run(monkeypatch):
    from engine import pipeline as pipeline_mod
    from tests.engine.test_pipeline import _scene

    pipe = pipeline_mod.Pipeline.from_source("random", "tiny", device="cpu", seed=3, keep_loaded=False)
    backends: list[FakeBackend] = []
    monkeypatch.setattr(pipeline_mod, "CudaGraphBackend", lambda device: backends.append(FakeBackend()) or backends[-1])
    pipe.cuda_graphs = True
    image, mask, pointmap = _scene()
    pipe.reconstruct(image, [mask], pointmap=pointmap, seed=9, quality="default", outputs=("gaussians",),
                     postprocess=None)
    assert len(backends) == 1 and backends[0].released and pipe._kept_geometry is None  # stage 1's own, freed


def test_the_pipeline_graphs_only_sampling_runs_with_enough_steps(monkeypatch):
    """Short stage-1 runs whose graphs are not kept (the fast preset, networks freed after each run) run eagerly:
    their few calls per signature do not repay warm-up and capture."""
    from types import SimpleNamespace

    import engine.pipeline as pipeline

    monkeypatch.setattr(pipeline, "CudaGraphBackend", lambda device: FakeBackend())
    owner = SimpleNamespace(cuda_graphs=True, device=torch.device("cpu"))

    def velocity(x, t, d, c):
        return x

    with pipeline.Pipeline._steps(owner, velocity, pipeline.GRAPH_MIN_STEPS - 1) as step:
        assert step is velocity
    with pipeline.Pipeline._steps(owner, velocity, pipeline.GRAPH_MIN_STEPS) as step:
        assert isinstance(step, GraphedVelocity)
    owner.cuda_graphs = False
    with pipeline.Pipeline._steps(owner, velocity, 50) as step:
        assert step is velocity


def test_kept_stage_1_graphs_are_not_replayed_for_another_flow(monkeypatch):
    from engine import pipeline as pipeline_mod
    from tests.engine.test_pipeline import _scene

    pipe = pipeline_mod.Pipeline.from_source("random", "tiny", device="cpu", seed=3)
    backends: list[FakeBackend] = []
    monkeypatch.setattr(pipeline_mod, "CudaGraphBackend", lambda device: backends.append(FakeBackend()) or backends[-1])
    pipe.cuda_graphs = True
    flow = pipe.models.get("ss_flow")
    from engine.model_store import build

    other = build("ss_flow", pipe.config).to(pipe.dtype).eval()  # same shapes, other (freshly drawn) weights
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(1, pipe.config.ss_condition.num_tokens, pipe.config.ss_condition.embed_dim, generator=gen)
    shapes = pipeline_mod.noise_lib.stage1_shapes(pipe.config.ss_flow.resolution, pipe.config.ss_flow.shape_channels)
    noise = pipeline_mod.noise_lib.draw_stage1(shapes, gen, torch.device("cpu"))
    settings = pipe.config.stage1
    pipe.sample_geometry(flow, cond, noise, settings)
    first = pipe._kept_geometry
    got = pipe.sample_geometry(other, cond, noise, settings)
    assert pipe._kept_geometry is not first and first.condition is None  # the first flow's graphs were dropped
    pipe.cuda_graphs = False
    want = pipe.sample_geometry(other, cond, noise, settings)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_kept_embedder_graphs_follow_the_embedder_they_read(monkeypatch):
    from engine import pipeline as pipeline_mod
    from engine.model_store import build

    pipe = pipeline_mod.Pipeline.from_source("random", "tiny", device="cpu", seed=3)
    monkeypatch.setattr(pipeline_mod, "CudaGraphBackend", lambda device: FakeBackend())
    pipe.cuda_graphs = True
    embedder = pipe.models.get("ss_condition")
    first = pipe._embed("ss_condition", embedder)
    assert pipe._embed("ss_condition", embedder) is first  # kept
    second = pipe._embed("ss_condition", build("ss_condition", pipe.config))  # another network of the same name
    assert second is not first and first.owner is None and first.graphed._released
    pipe.models.release("ss_condition")
    assert "ss_condition" not in pipe._kept_embedders and second.graphed._released


class RecordingBackend:
    """A capture records the call without running it (as CUDA's does); a replay runs it."""

    def __init__(self, fail_capture: bool = False):
        self.fail_capture = fail_capture
        self.events: list[str] = []

    def new_pool(self) -> object:
        self.events.append("pool")
        return object()

    def capture(self, call, pool):
        self.events.append("capture")
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        return call, None

    def replay(self, graph) -> None:
        self.events.append("replay")
        graph()

    def release(self, graphs) -> None:
        self.events.append(f"release {len(graphs)}")


def _accumulating_pass(state: torch.Tensor, step: torch.Tensor):
    def call() -> None:
        state.mul_(0.5).add_(step)
    return call


def test_a_repeated_call_runs_eagerly_first_then_replays_one_graph_per_key_with_the_eager_result():
    gen = torch.Generator().manual_seed(51)
    step = torch.randn(7, generator=gen)
    starts = torch.randn(2, 7, generator=gen)
    eager, graphed = starts.clone(), starts.clone()
    order = [0, 0, 0, 1, 1, 0, 1, 0]  # two calls (on their own state), interleaved
    for i in order:
        _accumulating_pass(eager[i], step)()
    backend = RecordingBackend()
    with RepeatedCall(backend) as repeat:
        calls = [_accumulating_pass(graphed[i], step) for i in range(2)]
        for i in order:
            repeat(calls[i])
        # the first call warms up eagerly; each call is then captured once and replayed, in any order
        assert backend.events == ["pool", "capture", "replay", "replay", "capture"] + ["replay"] * 5
        assert repeat.graphs == 2
        repeat(_accumulating_pass(graphed[0], step), key=calls[0])  # a key stands for the call it was captured with
        assert backend.events[-1] == "replay" and repeat.graphs == 2
        repeat.forget(calls[1])
        assert backend.events[-1] == "release 1" and repeat.graphs == 1
    assert backend.events[-1] == "release 1"
    _accumulating_pass(eager[0], step)()
    assert torch.equal(graphed, eager)


def test_a_repeated_call_without_a_backend_or_after_a_failed_capture_runs_eagerly():
    gen = torch.Generator().manual_seed(52)
    step, start = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    expected = start.clone()
    for _ in range(6):
        _accumulating_pass(expected, step)()

    plain = start.clone()
    with RepeatedCall(None) as repeat:
        call = _accumulating_pass(plain, step)
        for _ in range(6):
            repeat(call)
    assert torch.equal(plain, expected)

    failing, backend = start.clone(), RecordingBackend(fail_capture=True)
    with pytest.warns(RuntimeWarning, match="capture of a repeated call failed"):
        with RepeatedCall(backend) as repeat:
            call = _accumulating_pass(failing, step)
            for _ in range(6):  # eager warm-up, a failed capture (eager, state untouched by it), then eager
                repeat(call)
            assert repeat.fallback is not None
    assert backend.events == ["pool", "capture"]
    assert torch.equal(failing, expected)


def test_decimation_rounds_replay_one_graph_per_slot_layout_and_give_the_eager_result(monkeypatch):
    """The decimation on CUDA's slots (powers of two, dead slots kept until the mesh fits smaller ones) with a
    recording backend's "graphs" kept across two meshes, against the same rounds run eagerly: the same meshes; the
    first mesh captures one graph per layout, the second (of the same size) captures none."""
    from engine.postprocess import collapse
    from engine.postprocess.procedural import noisy_sphere

    monkeypatch.setattr(collapse, "ROUNDED_SLOTS", {"cuda", "cpu"})
    meshes = []
    for seed in (54, 55):
        mesh = noisy_sphere(12_000, seed=seed)
        meshes.append((torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces).long()))
    eager = [collapse.collapse_to_count(v, f, 1_000, graphs=False) for v, f in meshes]

    backend = RecordingBackend()
    kept = collapse.RoundGraphs("cpu")
    kept.repeat.backend = backend  # the CPU runs the recorded "graphs"
    graphed = [collapse.collapse_to_count(meshes[0][0], meshes[0][1], 1_000, graphs=kept)]
    first = {"captures": backend.events.count("capture"), "replays": backend.events.count("replay")}
    graphed.append(collapse.collapse_to_count(meshes[1][0], meshes[1][1], 1_000, graphs=kept))
    assert first["captures"] >= 3 and first["replays"] >= 2 * first["captures"]  # several layouts, several rounds each
    assert backend.events.count("capture") == first["captures"]  # the second mesh only replays
    assert backend.events.count("replay") > first["replays"] + 10
    kept.release()
    assert backend.events[-1] == f"release {first['captures']}"
    for (gv, gf), (ev, ef) in zip(graphed, eager):
        assert torch.equal(gf, ef) and torch.equal(gv, ev)
        assert 1_000 <= gf.shape[0] <= 1_000 * (1 + collapse.STOP_SLACK) + 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decimation_with_graphed_rounds_equals_the_eager_one_on_cuda(monkeypatch):
    from engine.postprocess import collapse
    from engine.postprocess.procedural import noisy_sphere

    # The initial quadrics' float atomics are the only order-dependent sums; make them on the CPU so that both
    # runs start from the same bits (every later step is integer or element-wise).
    quadrics = collapse.vertex_quadrics
    monkeypatch.setattr(collapse, "vertex_quadrics",
                        lambda p, f, b: quadrics(p.cpu(), f.cpu(), b.cpu()).to(p.device))
    used = []

    class Spy(RepeatedCall):
        def release(self):
            used.append((self.graphs, self.fallback))
            super().release()

    monkeypatch.setattr(collapse, "RepeatedCall", Spy)
    mesh = noisy_sphere(60_000, seed=53)
    vertices = torch.from_numpy(mesh.vertices).cuda()
    faces = torch.from_numpy(mesh.faces).long().cuda()
    graphed = collapse.collapse_to_count(vertices, faces, 5_000, graphs=True)
    eager = collapse.collapse_to_count(vertices, faces, 5_000, graphs=False)
    assert used[0][0] >= 3 and used[0][1] is None and used[1][0] == 0  # a graph per layout, replayed
    assert torch.equal(graphed[1], eager[1]) and torch.equal(graphed[0], eager[0])
    # graphs kept across meshes of other sizes, in interleaved order, against eager runs
    others = [noisy_sphere(n, seed=58) for n in (40_000, 90_000)]
    inputs = [(torch.from_numpy(m.vertices).cuda(), torch.from_numpy(m.faces).long().cuda()) for m in others]
    kept = collapse.RoundGraphs(vertices.device)
    for v, f, target in [(*inputs[0], 5_000), (*inputs[1], 3_000), (vertices, faces, 5_000), (*inputs[0], 5_000)]:
        replayed = collapse.collapse_to_count(v, f, target, graphs=kept)
        plain = collapse.collapse_to_count(v, f, target, graphs=False)
        assert torch.equal(replayed[1], plain[1]) and torch.equal(replayed[0], plain[0])
    assert kept.repeat.fallback is None and kept.repeat.graphs >= 3
    kept.release()


def test_kept_round_graphs_hold_a_bounded_number_of_layouts(monkeypatch):
    from engine.postprocess import collapse
    from engine.postprocess.procedural import noisy_sphere

    monkeypatch.setattr(collapse, "ROUNDED_SLOTS", {"cuda", "cpu"})
    monkeypatch.setattr(collapse, "KEPT_LAYOUTS", 2)
    mesh = noisy_sphere(12_000, seed=57)
    v, f = torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces).long()
    backend = RecordingBackend()
    kept = collapse.RoundGraphs("cpu")
    kept.repeat.backend = backend
    out = collapse.collapse_to_count(v, f, 1_000, graphs=kept)
    assert backend.events.count("capture") >= 3  # more layouts than it keeps...
    assert len(kept._slots) == 2 and kept.repeat.graphs == 2  # ...so the oldest went, with their graphs
    assert backend.events.count("release 1") == backend.events.count("capture") - 2
    eager = collapse.collapse_to_count(v, f, 1_000, graphs=False)
    assert torch.equal(out[1], eager[1]) and torch.equal(out[0], eager[0])
    kept.release()


def test_the_pipeline_keeps_decimation_graphs_while_its_networks_stay_loaded_and_passes_them_on(monkeypatch):
    from engine import pipeline as pipeline_mod
    from engine.assets import Mesh
    from engine.postprocess import artist, collapse
    from engine.postprocess.procedural import noisy_sphere

    pipe = pipeline_mod.Pipeline.from_source("random", "tiny", device="cpu", seed=3)
    assert pipe.decimation_graphs() is None  # no CUDA graphs on the CPU
    pipe.cuda_graphs = True
    kept = pipe.decimation_graphs()
    assert isinstance(kept, collapse.RoundGraphs) and pipe.decimation_graphs() is kept
    staged = pipeline_mod.Pipeline.from_source("random", "tiny", device="cpu", seed=3, keep_loaded=False)
    staged.cuda_graphs = True
    assert staged.decimation_graphs() is None  # staged: each decimation frees its own

    # make_artist_mesh hands them to the torch decimator, which records its rounds there
    monkeypatch.setattr(collapse, "ROUNDED_SLOTS", {"cuda", "cpu"})
    backend = RecordingBackend()
    kept.repeat.backend = backend
    source = noisy_sphere(6_000, seed=56)
    colored = Mesh(vertices=source.vertices, faces=source.faces,
                   vertex_colors=np.full(source.vertices.shape, 0.5, np.float32))
    out = artist.make_artist_mesh(colored, None, 1_000, 512, device="cpu", decimator="torch", round_graphs=kept)
    assert backend.events.count("capture") >= 2 and kept.repeat.graphs == backend.events.count("capture")
    assert out.uvs is not None and len(out.faces) >= 1_000
    pipe.models.get("ss_condition")
    pipe.models.release()  # networks freed (after an out-of-memory error, say): the graphs go too
    assert pipe._kept_decimation is None and kept.repeat.graphs == 0 and backend.events[-1].startswith("release")
