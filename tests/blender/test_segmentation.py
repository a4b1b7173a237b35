"""Click-to-segment without an event loop: the prompts (scene/prompts.py), the session that asks the engine for
masks (operators/segmentation.py), and its blocking operator through the real worker with a random tiny SAM."""
from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
import pytest

from tests.blender.support import HEIGHT, WIDTH, image_from_array, picture, snapshot


@pytest.fixture
def prompts_module(threedfy):
    return threedfy.submodule("scene.prompts")


def test_clicks_and_a_box_become_a_segment_request_and_undo_takes_back_the_last_edit(prompts_module):
    prompts = prompts_module.Prompts(WIDTH, HEIGHT)
    assert prompts.empty
    prompts.add_point(10.5, 20.25)
    prompts.add_point(30, 5, positive=False)
    prompts.set_box(50, 40, -5, 10)  # corners in any order; the part outside the picture is cut off
    assert prompts.request() == {"points": [[10.5, 20.25], [30.0, 5.0]], "labels": [1, 0],
                                 "box": [0.0, 10.0, 50.0, 40.0]}
    prompts.set_box(1, 1, 9, 9)
    assert prompts.undo() and prompts.box == (0.0, 10.0, 50.0, 40.0)  # the box before comes back
    assert prompts.undo() and prompts.box is None
    assert prompts.undo() and prompts.labels == [1]
    again = prompts_module.Prompts.from_json(prompts.to_json())
    assert again.request() == prompts.request() and (again.width, again.height) == (WIDTH, HEIGHT)


def test_a_click_or_box_outside_the_picture_is_refused_and_changes_nothing(threedfy, prompts_module):
    errors = threedfy.submodule("engine.errors")
    prompts = prompts_module.Prompts(WIDTH, HEIGHT)
    prompts.add_point(3, 4)
    for bad in ((WIDTH, 4), (-0.5, 4), (3, HEIGHT + 2)):
        with pytest.raises(errors.InputError, match=r"outside the picture \(64x48\)"):
            prompts.add_point(*bad)
    with pytest.raises(errors.InputError, match="does not cover a pixel"):
        prompts.set_box(70, 10, 90, 30)
    assert prompts.request() == {"points": [[3.0, 4.0]], "labels": [1], "box": None}
    with pytest.raises(errors.InputError, match="no clicks"):
        prompts_module.Prompts(WIDTH, HEIGHT).check()


def test_image_editor_view_coordinates_map_to_picture_pixels_from_the_top_left(prompts_module):
    assert prompts_module.pixel_from_view(0.0, 1.0, WIDTH, HEIGHT) == (0.0, 0.0)  # top-left corner
    assert prompts_module.pixel_from_view(0.5, 0.25, WIDTH, HEIGHT) == (32.0, 36.0)


class _FakeRequest:
    """A segment request settled on the first pump, as the worker would answer it."""

    def __init__(self, answer):
        self.answer, self.finished, self.cancelled = answer, False, False

    def pump(self, timeout=0.0):
        self.finished = True
        return True

    def outcome(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def cancel(self):
        self.cancelled = True


class _FakeClient:
    """Answers `segment` with a mask PNG of what `mask_for(points, box)` returns, or with `error`."""

    def __init__(self, mask_for, error=None):
        self.mask_for, self.error, self.sent = mask_for, error, []

    def segment(self, image, out, points, labels, box=None, multimask=False, sam=None, sam_size=None):
        from engine.jobs import write_png

        assert Path(image).is_file() and sam == "random:tiny"
        self.sent.append((points, labels, box))
        if self.error is not None:
            return _FakeRequest(self.error)
        mask = self.mask_for(points, box)
        write_png(out, (mask * 255).astype(np.uint8))
        return _FakeRequest({"out": out, "score": 0.9, "area": int(mask.sum()), "size": [WIDTH, HEIGHT]})


def _session(threedfy, client, tmp_path):
    segmentation = threedfy.submodule("operators.segmentation")
    tmp_path.mkdir(parents=True, exist_ok=True)
    return segmentation.SegmentSession(picture(), tmp_path, client, "random:tiny")


def test_the_session_sends_only_the_newest_prompts_and_shows_the_answer_to_them(threedfy, tmp_path):
    def square_at(points, box):
        mask = np.zeros((HEIGHT, WIDTH), bool)
        x, y = points[-1]
        mask[int(y) - 2:int(y) + 2, int(x) - 2:int(x) + 2] = True
        return mask

    client = _FakeClient(square_at)
    segment = _session(threedfy, client, tmp_path)
    segment.prompts.add_point(10, 10)
    assert not segment.pump() and segment.request is not None  # sent; the answer comes with the next pump
    segment.prompts.add_point(20, 30)  # clicked again before the answer: only these prompts go next
    segment.prompts.add_point(40, 30)
    assert segment.pump() and segment.answered["points"] == [[10.0, 10.0]]
    mask = segment.result()
    assert [len(points) for points, _labels, _box in client.sent] == [1, 3]
    assert mask.shape == (HEIGHT, WIDTH) and mask[30, 40] and not mask[10, 10] and segment.up_to_date
    segment.close()
    assert not tmp_path.exists()


def test_an_empty_answer_or_an_engine_error_is_reported_and_no_mask_is_kept(threedfy, tmp_path):
    errors = threedfy.submodule("engine.errors")
    client_module = threedfy.submodule("engine.client")
    empty = _session(threedfy, _FakeClient(lambda points, box: np.zeros((HEIGHT, WIDTH), bool)), tmp_path / "a")
    empty.prompts.add_point(5, 5)
    with pytest.raises(errors.InputError, match="found nothing at these clicks: the mask is empty"):
        empty.result()
    refused = client_module.RemoteError("bad_input", "SAM found no object at these prompts: the mask is empty",
                                        "click on the object")
    failing = _session(threedfy, _FakeClient(None, error=refused), tmp_path / "b")
    failing.prompts.add_point(5, 5)
    with pytest.raises(client_module.RemoteError, match="SAM found no object"):
        failing.result()
    assert failing.mask is None and failing.error is refused and failing.up_to_date


def test_add_mask_from_clicks_runs_sam_in_the_worker_and_adds_a_mask_of_the_pictures_size(threedfy):
    settings = bpy.context.scene.threedfy
    settings.image = image_from_array("photo", picture())
    result = bpy.ops.threedfy.add_prompt_mask(prompts='{"points": [[20, 20], [50, 40]], "labels": [1, 0]}',
                                              name="Lamp")
    assert result == {"FINISHED"}
    (item,) = settings.masks
    assert (item.name, item.source, item.select) == ("Lamp", "PROMPT", True)
    assert tuple(item.image.size) == (WIDTH, HEIGHT) and item.image.packed_file is not None
    mask = threedfy.submodule("scene.images").mask_array(item.image)
    assert 0 < (mask > 0.5).sum() and set(np.unique(mask)) <= {0.0, 1.0}
    prompts = threedfy.submodule("scene.prompts").Prompts.from_json(item.prompts)
    assert prompts.labels == [1, 0] and prompts.points == [(20.0, 20.0), (50.0, 40.0)]


def test_clicks_outside_the_picture_or_an_empty_answer_add_nothing(threedfy, monkeypatch):
    settings = bpy.context.scene.threedfy
    settings.image = image_from_array("photo", picture())
    before = snapshot()
    with pytest.raises(RuntimeError, match=r"The click at \(80, 10\) is outside the picture \(64x48\)"):
        bpy.ops.threedfy.add_prompt_mask(prompts='{"points": [[80, 10]]}')
    with pytest.raises(RuntimeError, match="does not cover a pixel"):
        bpy.ops.threedfy.add_prompt_mask(prompts='{"box": [-20, -20, -1, -1]}')
    with pytest.raises(RuntimeError, match="no clicks"):
        bpy.ops.threedfy.add_prompt_mask()
    with pytest.raises(RuntimeError, match="not readable"):
        bpy.ops.threedfy.add_prompt_mask(prompts="[20, 20]")
    monkeypatch.setattr(threedfy.session, "client",
                        lambda prefs=None: _FakeClient(lambda points, box: np.zeros((HEIGHT, WIDTH), bool)))
    with pytest.raises(RuntimeError, match="the mask is empty"):
        bpy.ops.threedfy.add_prompt_mask(prompts='{"points": [[8, 8]]}')
    assert snapshot() == before and len(settings.masks) == 0


def test_without_a_sam_model_the_tool_says_where_to_choose_one(threedfy):
    settings = bpy.context.scene.threedfy
    settings.image = image_from_array("photo", picture())
    threedfy.prefs.sam_source = "FILE"
    threedfy.prefs.sam_file = ""
    with pytest.raises(RuntimeError, match="No Segment Anything model is set.*preferences"):
        bpy.ops.threedfy.add_prompt_mask(prompts='{"points": [[8, 8]]}')
    threedfy.prefs.sam_source, threedfy.prefs.sam_hf_repo, threedfy.prefs.sam_size = "HF", "someone/sam", "vit_l"
    assert threedfy.session.sam_spec() == "hf:someone/sam/sam_vit_l_0b3195.pth"
    threedfy.prefs.sam_hf_revision = "v1"
    assert threedfy.session.sam_spec() == "hf:someone/sam@v1/sam_vit_l_0b3195.pth"
    assert threedfy.session.sam_size() == "vit_l"


def test_the_tools_events_click_shift_click_drag_undo_and_enter_make_one_mask(threedfy, tmp_path):
    """The modal's event handling, played with stand-ins for the region and the window (there is no event loop):
    the 250 x 150 px region is 100 px right of and 50 px above the window's corner and shows the 64 x 48 picture
    as 200 x 150 px from 25 px in, so a mouse at window (125 + 200 u, 50 + 150 v) is at view (u, v)."""
    from types import SimpleNamespace

    segment_tool = threedfy.submodule("operators.segment_tool")
    operator = segment_tool.THREEDFY_OT_segment_tool
    settings = bpy.context.scene.threedfy
    settings.image = image_from_array("photo", picture())

    def square_at(points, box):
        mask = np.zeros((HEIGHT, WIDTH), bool)
        for (x, y), label in zip(points, [1] * len(points)):
            mask[int(y) - 2:int(y) + 2, int(x) - 2:int(x) + 2] = True
        return mask

    class Tool:  # the operator's methods on a plain object
        modal, _pixel, _finish, _end, _status = (operator.__dict__[name] for name in
                                                 ("modal", "_pixel", "_finish", "_end", "_status"))

    reports, status = [], []
    tool = Tool()
    tool.segment = _session(threedfy, _FakeClient(square_at), tmp_path)
    sidebar = SimpleNamespace(type="UI", x=340, y=50, width=10, height=150)  # over the region's right end
    tool.area = SimpleNamespace(tag_redraw=lambda: None, regions=[sidebar])
    view2d = SimpleNamespace(region_to_view=lambda x, y: ((x - 25) / 200, y / 150))
    tool.region = SimpleNamespace(x=100, y=50, width=250, height=150, view2d=view2d)
    tool.name, tool.color, tool._press, tool.drag, tool._keep, tool._timer = "Cup", (1, 0, 0), None, None, False, None
    tool._draw = bpy.types.SpaceImageEditor.draw_handler_add(lambda: None, (), "WINDOW", "POST_PIXEL")
    tool.report = lambda level, text: reports.append((level, text))
    context = SimpleNamespace(scene=bpy.context.scene, window_manager=SimpleNamespace(event_timer_remove=print),
                              workspace=SimpleNamespace(status_text_set=status.append))

    def event(kind, value="PRESS", at=(0.0, 0.0), shift=False, ctrl=False):
        u, v = at
        return SimpleNamespace(type=kind, value=value, mouse_x=125 + 200 * u, mouse_y=50 + 150 * v, shift=shift,
                               ctrl=ctrl, oskey=False)

    def click(at, shift=False):
        assert tool.modal(context, event("LEFTMOUSE", at=at, shift=shift)) == {"RUNNING_MODAL"}
        return tool.modal(context, event("LEFTMOUSE", "RELEASE", at=at, shift=shift))

    click((0.25, 0.75))  # picture pixel (16, 12): on the object
    click((0.5, 0.5), shift=True)  # (32, 24): not the object
    tool.modal(context, event("LEFTMOUSE", at=(0.1, 0.9)))
    tool.modal(context, event("MOUSEMOVE", "NOTHING", at=(0.3, 0.6)))
    assert tool.drag is not None  # drawn while dragging
    tool.modal(context, event("LEFTMOUSE", "RELEASE", at=(0.3, 0.6)))
    prompts = tool.segment.prompts
    assert prompts.points == [(16.0, 12.0), (32.0, 24.0)] and prompts.labels == [1, 0]
    assert prompts.box == pytest.approx((6.4, 4.8, 19.2, 19.2))
    assert tool.modal(context, event("BACK_SPACE")) == {"RUNNING_MODAL"} and prompts.box is None
    click((1.05, 0.5))  # in the region, beside the picture: refused, said, nothing changes
    assert reports[-1] == ({"WARNING"}, "The click at (67, 24) is outside the picture (64x48)")
    assert len(prompts.points) == 2
    assert tool.modal(context, event("LEFTMOUSE", at=(1.09, 0.5))) == {"PASS_THROUGH"}  # on the sidebar
    assert tool.modal(context, event("LEFTMOUSE", at=(1.5, 0.5))) == {"PASS_THROUGH"}  # beside the region
    assert tool.modal(context, event("WHEELUPMOUSE")) == {"PASS_THROUGH"}  # zoom and pan stay Blender's

    result = tool.modal(context, event("RET"))
    while result == {"RUNNING_MODAL"}:
        result = tool.modal(context, event("TIMER", "NOTHING"))  # the timer brings the answer, then keeps it
    assert result == {"FINISHED"} and reports[-1][0] == {"INFO"} and status[-1] is None
    (item,) = settings.masks
    assert (item.name, item.source) == ("Cup", "PROMPT") and item.image.size[:] == (WIDTH, HEIGHT)
    assert threedfy.submodule("scene.images").mask_array(item.image)[12, 16] == 1.0 and not tmp_path.exists()
