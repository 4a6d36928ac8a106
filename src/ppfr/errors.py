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


class UnsupportedError(PPFRError):
    """A valid request this configuration cannot carry out (e.g. deleting one subject from an
    encrypted gallery, whose packed ciphertexts hold several people per slot)."""


class UnknownNameError(PPFRError, KeyError):
    """A registry lookup (method, backbone, head, attack) got a name nobody registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0]) if self.args else ""


#: third-party modules of ppfr's optional extras -> the extra that installs them
#: (pyproject.toml's ``[project.optional-dependencies]``); the core needs none of them
EXTRA_MODULES = {
    "fastapi": "serve",
    "uvicorn": "serve",
    "httpx": "serve",
    "psycopg": "serve",
    "faiss": "serve",
    "ray": "cluster",  # ppfr serve --cluster
}


class MissingExtraError(PPFRError, ImportError):
    """A feature needs a dependency of an optional extra (``ppfr[serve]``) that is missing."""


def missing_extra(error: ImportError) -> MissingExtraError | None:
    """The clear error for ``error`` when it is a missing module of an extra, else None.

    >>> str(missing_extra(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")))
    "uvicorn is not installed; it comes with ppfr's 'serve' extra: pip install 'ppfr[serve]'"
    """
    top = (getattr(error, "name", None) or "").split(".")[0]
    extra = EXTRA_MODULES.get(top)
    if extra is None:
        return None
    return MissingExtraError(
        f"{top} is not installed; it comes with ppfr's {extra!r} extra: pip install 'ppfr[{extra}]'"
    )
