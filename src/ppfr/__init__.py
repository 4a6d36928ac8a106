"""ppfr: privacy-preserving face recognition.

The core method is MinusFace: the device turns a face into a noise-like protected image
and the server still recognises the person from it. Every method shares one API::

    import ppfr
    model = ppfr.create("minusface", num_classes=1000)   # or ppfr.load("runs/x/model")
    p = model.protect(faces)        # client: (B, 3, 112, 112) in [-1, 1] -> protected
    t = model.embed(p)              # server: protected -> L2-normalised templates
    model.save("bundle"); ppfr.load("bundle", part="client")

A program that runs ppfr's heavy loops (training, protecting batches) calls
``ppfr.tune_allocator()`` once at start-up; the ``ppfr`` commands do it themselves
(:mod:`ppfr.runtime` says why).
"""

__version__ = "0.1.0"

from ppfr.errors import (  # noqa: E402
    CheckpointError,
    DataError,
    InputError,
    PPFRError,
    UnknownNameError,
    missing_extra,
)
from ppfr.methods import Method, create, list_methods, load  # noqa: E402
from ppfr.runtime import tune_allocator  # noqa: E402


def __getattr__(name: str):
    if name == "Client":
        try:
            # deferred: httpx (and the serving package) load only for those who use ppfr.Client
            from ppfr.serve.client import Client
        except ImportError as e:  # a lean install: name the extra that brings httpx
            clear = missing_extra(e)
            if clear is None:
                raise
            raise clear from e
        return Client
    raise AttributeError(f"module 'ppfr' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "Client",
    "DataError",
    "InputError",
    "Method",
    "PPFRError",
    "UnknownNameError",
    "__version__",
    "create",
    "list_methods",
    "load",
    "tune_allocator",
]
