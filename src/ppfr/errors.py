"""Exceptions raised by ppfr.

Every error a user can cause (bad input, bad file, unknown name) is a :class:`PPFRError`
with a message that names the problem, so callers and the CLI can report it without a
traceback from deep inside PyTorch or a decoder.
"""

from __future__ import annotations


class PPFRError(Exception):
    """Base class of every error ppfr raises on purpose."""


class InputError(PPFRError, ValueError):
    """A tensor or argument has the wrong shape, dtype, channel count or value range."""


class DataError(PPFRError):
    """A data file (image, .bin pack, .rec record, dataset folder) is missing or corrupt."""


class CheckpointError(PPFRError):
    """A model bundle or training checkpoint is missing, incomplete or corrupt."""


class UnknownNameError(PPFRError, KeyError):
    """A registry lookup (method, backbone, head, attack) got a name nobody registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0]) if self.args else ""
