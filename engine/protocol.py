"""The engine protocol: how Blender (the client) and the engine worker talk over the worker's stdin and stdout.

Wire format: one message per line, a JSON array `[kind, payload]`, `payload` a JSON object. The worker's stdout
carries protocol messages only; its logs, warnings and any library chatter go to stderr. Large arrays never cross
the pipe: a `reconstruct` request names a job folder (`jobs.py`) and the worker writes the results into it; a
`segment` request names a picture file and the mask PNG the worker writes (`segment.py`).

Life of a worker: it starts, imports torch and sends `ready` (the handshake). It then handles requests one at a
time, in the order received. Every request carries an `id` chosen by the client and every message about it
carries the same `id`; exactly one of `result`, `error`, `cancelled` settles it, and `done` is always its last
message. `cancel` is a control message: it has no reply of its own, the request it names ends with `cancelled`.
An `error` with a null `id` is about the worker itself (e.g. its environment has no torch); the worker exits
after it.

Cancel cooperates: the worker passes a flag to the pipeline, which checks it between stages and sampler steps
(a `segment` checks it during a download and between loading SAM, embedding the picture and writing the mask).
The client sends SIGINT (the worker treats it as `cancel`, a second one as "exit now") only when a cancel was
not answered within a grace period, and kills the process only after a second grace period.

Text mode (`python -m engine.worker --text`) serves people: requests are typed as words (`reconstruct JOB_DIR`,
`segment IMAGE OUT X,Y[,LABEL] ... [box=X0,Y0,X1,Y1] [sam=SPEC] [multimask]`, `status`, `cancel`, `release`,
`quit`) and messages print as aligned lines.

Stdlib only: imported by Blender (never torch) and by the worker (never bpy).
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

__all__ = [
    "PROTOCOL_VERSION", "REQUESTS", "MESSAGES", "ERROR_KINDS", "Message", "ProtocolError",
    "encode", "decode", "format_text", "parse_text",
]

PROTOCOL_VERSION = 2  # bump on any incompatible change; client and worker refuse a mismatch at the handshake

# ------------------------------------------------------------------------------------------------------------------
# Vocabulary

# Client -> worker. Every payload has `id` (a string unique within the client's session).
REQUESTS = {
    "reconstruct": "Run the job folder `job` (inputs and settings from jobs.write_job); results are written into it.",
    "segment": "Segment the picture file `image` with SAM at `points` [[x, y], ...] (pixels, origin top-left, y "
               "down) with `labels` [1 add, 0 remove, ...] and/or `box` [x0, y0, x1, y1]; `multimask` (bool); "
               "write the mask PNG `out` (8-bit, the picture's size, 255 = object). `sam`: a .pth file, "
               "hf:OWNER/NAME[@REV]/FILE.pth or random:PRESET; `sam_size` (optional): the size it must be. "
               "Progress stages: download (hub files only), load, embed, write.",
    "status": "Report the device and free memory now; answered by `result` (the `ready` fields) and `done`.",
    "release": "Unload the pipeline and SAM (and its cached embeddings) and free their GPU memory; the next "
               "`reconstruct` or `segment` loads them again.",
    "shutdown": "Answer `done`, then exit; the client's way to stop the worker cleanly.",
    "cancel": "Control, no reply of its own: stop request `id` at its next check; it then ends with `cancelled`.",
}

# Worker -> client.
MESSAGES = {
    "ready": "Handshake, always the first message: protocol, python, torch, numpy, engine (versions), device, "
             "device_name, vram_free and vram_total (bytes; null without a GPU), pid.",
    "progress": "Request `id` is in `stage` (the pipeline's stage name) at `fraction` in [0, 1] of that stage. "
                "Repeated at least every KEEPALIVE_S while a request runs, so silence means a hung worker.",
    "warning": "Request `id` goes on, but the artist should know `message` (an assumption taken, a fallback).",
    "result": "Request `id` succeeded. reconstruct: job, objects (count), weights {source, id, revision}, "
              "seconds; segment: out, score (predicted IoU), area (pixels), bbox [x0, y0, x1, y1] (pixel edges, "
              "x1 and y1 exclusive), size [W, H], cached (the picture's embedding was reused); status: the "
              "`ready` fields; release: vram_free.",
    "error": "Request `id` (null: the worker itself) failed: `kind` (ERROR_KINDS), `message` (one line: what "
             "happened), `hint` (what to do), `traceback` (for the log; empty for expected failures).",
    "cancelled": "Request `id` stopped because it was asked to (`message`); not a failure.",
    "done": "Always the last message of request `id`; nothing about it follows.",
}

# Values of `error.kind`. The first four are the engine's own error classes (engine/errors.py).
ERROR_KINDS = {
    "bad_input": "The image, a mask, the pointmap, the intrinsics or an option is unusable.",
    "weights": "Weights are missing, incomplete, gated or do not match the model.",
    "out_of_memory": "The device ran out of memory; the client restarts the worker so all of it is freed.",
    "error": "Another failure the engine knows how to explain.",
    "bad_job": "The job folder is missing, incomplete or not readable.",
    "engine_missing": "The engine's Python is missing or lacks the engine's requirements (torch, numpy).",
    "internal": "An unexpected exception in the engine: a bug. The traceback goes to the engine log.",
    "crashed": "Client side: the worker process ended while a request was running.",
    "timed_out": "Client side: the worker did not start, or went silent, within the configured time.",
    "protocol": "Client side: the worker speaks another protocol version, or sent something unreadable.",
}

KEEPALIVE_S = 20.0  # the worker repeats the latest progress at least this often while a request runs


# ------------------------------------------------------------------------------------------------------------------
# Messages


class ProtocolError(ValueError):
    """A line that is not a valid message of this protocol."""


@dataclass(frozen=True)
class Message:
    kind: str
    payload: dict = field(default_factory=dict)

    @property
    def id(self) -> str | None:
        return self.payload.get("id")


def encode(kind: str, payload: dict | None = None) -> str:
    """One protocol line (without the newline) for `kind`; raises ProtocolError for an unknown kind."""
    if kind not in REQUESTS and kind not in MESSAGES:
        raise ProtocolError(f"unknown message kind {kind!r}")
    return json.dumps([kind, payload or {}], separators=(",", ":"), allow_nan=False)


def decode(line: str) -> Message:
    """The message on one protocol line; raises ProtocolError with the reason when the line is not one."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON ({exc.msg}): {line[:120]!r}") from None
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], str) and isinstance(data[1], dict)):
        raise ProtocolError(f"not a [kind, payload] pair: {line[:120]!r}")
    kind, payload = data
    if kind not in REQUESTS and kind not in MESSAGES:
        raise ProtocolError(f"unknown message kind {kind!r}")
    return Message(kind, payload)


# ------------------------------------------------------------------------------------------------------------------
# Text mode


def format_text(message: Message) -> str:
    """A message as one human-readable line: kind, request id, then the fields that matter for that kind."""
    p = dict(message.payload)
    rid = p.pop("id", None)
    head = f"{message.kind:<10} {rid or '-':<6}"
    if message.kind == "progress":
        return f"{head} {p.get('stage', '?'):<24} {100.0 * float(p.get('fraction', 0.0)):5.1f}%"
    if message.kind == "error":
        text = f"{head} [{p.get('kind')}] {p.get('message', '')}"
        if p.get("hint"):
            text += f"\n{'':17} hint: {p['hint']}"
        if p.get("traceback"):
            text += "\n" + "\n".join(f"{'':17} {line}" for line in p["traceback"].rstrip().splitlines())
        return text
    if message.kind in ("warning", "cancelled"):
        return f"{head} {p.get('message', '')}"
    fields = " ".join(f"{k}={json.dumps(v)}" for k, v in p.items())
    return f"{head} {fields}".rstrip()


def parse_text(line: str, request_id: str) -> Message | None:
    """A typed command as a request message (None for a blank line); raises ProtocolError with usage on a bad one.

    Commands: `reconstruct JOB_DIR`, `segment IMAGE OUT X,Y[,LABEL] ... [box=X0,Y0,X1,Y1] [sam=SPEC]
    [sam_size=SIZE] [multimask]` (a click without a label adds), `status`, `release`, `cancel [ID]` (default: the
    running request), `quit` (= shutdown). A line that starts with `[` is taken as a JSON protocol line.
    """
    line = line.strip()
    if not line:
        return None
    if line.startswith("["):
        return decode(line)
    words = shlex.split(line)
    verb, args = words[0].lower(), words[1:]
    if verb == "reconstruct" and len(args) == 1:
        return Message("reconstruct", {"id": request_id, "job": args[0]})
    if verb == "segment" and len(args) >= 2:
        return Message("segment", {"id": request_id, "image": args[0], "out": args[1], **_segment_words(args[2:])})
    if verb in ("status", "release") and not args:
        return Message(verb, {"id": request_id})
    if verb == "cancel" and len(args) <= 1:
        return Message("cancel", {"id": args[0] if args else None})
    if verb in ("quit", "exit", "shutdown") and not args:
        return Message("shutdown", {"id": request_id})
    raise ProtocolError(_USAGE)


_USAGE = ("commands: reconstruct JOB_DIR | segment IMAGE OUT X,Y[,LABEL] ... [box=X0,Y0,X1,Y1] [sam=SPEC] "
          "[sam_size=SIZE] [multimask] | status | release | cancel [ID] | quit (or a JSON [kind, payload] line)")


def _segment_words(words: list[str]) -> dict:
    """The prompt and option words of a typed `segment` command as payload fields."""
    fields: dict = {"points": [], "labels": [], "box": None, "multimask": False}
    for word in words:
        name, sep, value = word.partition("=")
        try:
            if word == "multimask":
                fields["multimask"] = True
            elif sep and name in ("sam", "sam_size"):
                fields[name] = value
            elif sep and name == "box":
                fields["box"] = [float(v) for v in value.split(",")]
            elif not sep and word.count(",") in (1, 2):
                x, y, *label = word.split(",")
                fields["points"].append([float(x), float(y)])
                fields["labels"].append(int(label[0]) if label else 1)
            else:
                raise ValueError(word)
        except ValueError:
            raise ProtocolError(f"segment: cannot read {word!r}; {_USAGE}") from None
    return fields
