"""Registered methods and the model API: ``create``, ``list_methods``, ``load``.

The registry lives in :mod:`ppfr.methods._registry`; importing this package registers the
built-in methods (each module decorates its class with :func:`register_method`).

Example:
    >>> import ppfr
    >>> model = ppfr.create("minusface", backbone_width=0.125, generator_width=4)
    >>> p = model.protect(torch.zeros(2, 3, 112, 112))
    >>> p.shape, model.embed(p).shape
    (torch.Size([2, 3, 112, 112]), torch.Size([2, 512]))
"""

from ppfr.methods import (  # noqa: F401
    arcface,
    dctdp,
    duetface,
    fracface,
    minusface,
    minusface_hardened,
    partialface,
)
from ppfr.methods._registry import (
    METHODS,
    create,
    list_methods,
    load,
    register_method,
)
from ppfr.methods.base import Method, Stage

__all__ = ["METHODS", "Method", "Stage", "create", "list_methods", "load", "register_method"]
