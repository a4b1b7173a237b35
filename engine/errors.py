"""Failures the engine knows how to explain. Anything else is a bug and keeps its traceback.

Every message is one line that says what is wrong and what to do about it. The worker sends these across the
process boundary as data (kind, message, hint), never as pickled exceptions.
"""
from __future__ import annotations


class EngineError(Exception):
    """Base class. `kind` names the failure for the protocol; `hint` says what to do next (optional)."""

    kind = "error"

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(EngineError):
    """The image, a mask, a pointmap, the intrinsics or an option is unusable."""

    kind = "bad_input"


class WeightsError(EngineError):
    """Weights are missing, truncated, of the wrong kind, or do not match the model (names the file)."""

    kind = "weights"


class OutOfMemoryError(EngineError):
    """The device ran out of memory; the engine has released what it held."""

    kind = "out_of_memory"


class Cancelled(EngineError):
    """The caller asked to stop; not a failure."""

    kind = "cancelled"
