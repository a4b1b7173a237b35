"""The engine protocol's vocabulary, wire format and text mode (engine/protocol.py)."""
from __future__ import annotations

import json

import pytest

from engine import protocol
from engine.protocol import Message, ProtocolError, decode, encode, format_text, parse_text


def test_every_message_kind_is_documented_and_requests_and_replies_do_not_share_names():
    kinds = {**protocol.REQUESTS, **protocol.MESSAGES}
    assert len(kinds) == len(protocol.REQUESTS) + len(protocol.MESSAGES)
    assert all(isinstance(text, str) and len(text) > 20 for text in kinds.values())
    assert {"reconstruct", "cancel", "status", "release", "shutdown"} <= set(protocol.REQUESTS)
    assert {"ready", "progress", "result", "error", "cancelled", "done"} <= set(protocol.MESSAGES)
    assert {"out_of_memory", "weights", "bad_input", "crashed", "timed_out", "engine_missing"} <= set(
        protocol.ERROR_KINDS)


def test_every_kind_round_trips_through_one_json_line():
    for kind in [*protocol.REQUESTS, *protocol.MESSAGES]:
        payload = {"id": "r7", "stage": "geometry", "fraction": 0.25, "nested": {"a": [1, 2]}, "text": "é\n"}
        line = encode(kind, payload)
        assert "\n" not in line
        assert json.loads(line) == [kind, payload]
        assert decode(line) == Message(kind, payload)


@pytest.mark.parametrize("line, reason", [
    ("progress 0.5", "not JSON"),
    ('{"kind": "done"}', r"not a \[kind, payload\] pair"),
    ('["done"]', r"not a \[kind, payload\] pair"),
    ('["done", [1]]', r"not a \[kind, payload\] pair"),
    ('["explode", {}]', "unknown message kind"),
])
def test_decode_names_what_is_wrong_with_a_bad_line(line, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode(line)


def test_encode_refuses_unknown_kinds_and_non_finite_numbers():
    with pytest.raises(ProtocolError, match="unknown message kind"):
        encode("progres", {"id": "r1"})
    with pytest.raises(ValueError):
        encode("progress", {"id": "r1", "fraction": float("nan")})


def test_text_mode_shows_progress_as_percent_and_errors_with_their_hint_and_traceback():
    progress = format_text(Message("progress", {"id": "r3", "stage": "texture", "fraction": 0.426}))
    assert progress.split() == ["progress", "r3", "texture", "42.6%"]
    error = format_text(Message("error", {"id": "r3", "kind": "out_of_memory", "message": "GPU full",
                                          "hint": "use quality 'fast'", "traceback": "Traceback\n  line 1"}))
    lines = error.splitlines()
    assert lines[0].split()[:3] == ["error", "r3", "[out_of_memory]"] and lines[0].endswith("GPU full")
    assert lines[1].strip() == "hint: use quality 'fast'"
    assert lines[2].strip() == "Traceback"
    ready = format_text(Message("ready", {"protocol": 1, "device": "cuda:0", "vram_free": None}))
    assert ready.split()[:2] == ["ready", "-"] and 'device="cuda:0"' in ready and "vram_free=null" in ready


def test_typed_commands_become_requests_and_json_lines_pass_through():
    assert parse_text("  ", "t1") is None
    assert parse_text("reconstruct '/tmp/my job'", "t2") == Message("reconstruct", {"id": "t2", "job": "/tmp/my job"})
    assert parse_text("STATUS", "t3") == Message("status", {"id": "t3"})
    assert parse_text("cancel", "t4") == Message("cancel", {"id": None})
    assert parse_text("cancel r9", "t5") == Message("cancel", {"id": "r9"})
    assert parse_text("quit", "t6") == Message("shutdown", {"id": "t6"})
    assert parse_text('["release", {"id": "x"}]', "t7") == Message("release", {"id": "x"})
    with pytest.raises(ProtocolError, match="reconstruct JOB_DIR"):
        parse_text("reconstruct", "t8")
