"""Protection of stored face templates (the server's gallery), and its metrics.

* :mod:`ppfr.templates.slerpface`: the SlerpFace scheme (AAAI 2025): keys, ``protect``,
  group weights, scores by the direct form;
* :mod:`ppfr.templates.index`: :class:`SlerpFaceIndex`, the stored side of matching laid out
  so that a query streams it once;
* :mod:`ppfr.templates.kernel`: the numba-compiled scoring kernel and the slerp weights as
  polynomials it evaluates;
* :mod:`ppfr.templates.metrics`: ISO/IEC 24745 properties of protected templates
  (unlinkability, :func:`unlinkability`);
* :mod:`ppfr.templates.encrypted`: an encrypted gallery (ternary templates, CKKS, IDFace's
  additions-only packing) and its :class:`KeyHolder`; needs the ``encrypted`` extra.

Example:
    >>> import torch
    >>> from ppfr.templates import SlerpFace
    >>> sf = SlerpFace(64)
    >>> t = torch.nn.functional.normalize(torch.randn(3, 64), dim=1)
    >>> keys = sf.draw_keys(3)
    >>> sf.scores(t, sf.protect(t, keys), keys).shape
    torch.Size([3, 3])
"""

from ppfr.templates.encrypted import EncryptedConfig, EncryptedGallery, KeyHolder, ternarise
from ppfr.templates.index import SlerpFaceIndex
from ppfr.templates.kernel import slerp_weight_polynomials
from ppfr.templates.metrics import Unlinkability, kde, unlinkability
from ppfr.templates.slerpface import (
    SlerpFace,
    SlerpFaceConfig,
    expected_unrelated_score,
    group_weights_from_templates,
)

__all__ = [
    "EncryptedConfig",
    "EncryptedGallery",
    "KeyHolder",
    "SlerpFace",
    "SlerpFaceConfig",
    "SlerpFaceIndex",
    "Unlinkability",
    "expected_unrelated_score",
    "group_weights_from_templates",
    "kde",
    "slerp_weight_polynomials",
    "ternarise",
    "unlinkability",
]
