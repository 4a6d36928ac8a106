"""The service's matcher over encrypted galleries: same ``identify``/``verify`` as
:class:`ppfr.serve.matching.Matcher`, templates encrypted at enrolment, a key holder to ask.

One :class:`~ppfr.templates.encrypted.EncryptedGallery` per gallery name lives in
``directory/<gallery>/`` (public context, one file per block, subject names); the matching
server keeps no secret key. :meth:`EncryptedMatcher.enroll_templates` encrypts templates
under the key holder's public key and rewrites only the blocks it touched.

Scores. The key holder releases only rows at or above *its* threshold :math:`\tau` (a
ternary cosine, ``ppfr keyholder create --threshold``), so ``identify`` returns at most
``top_k`` subjects that already passed it, and ``verify`` returns the key holder's decision
as a score: 1 for a match, -1 otherwise. The service's threshold is then :math:`\tau`
itself (:attr:`EncryptedMatcher.threshold`; ``ppfr serve --encrypted-dir`` sets it), and
both answers read as with the plain matcher (the service accepts scores above its
threshold; a subject released at exactly :math:`\tau` is listed but not a match). Subjects
cannot be deleted from a packed block; re-enrol the gallery without them (or rotate the
key, which retires the whole gallery).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from torch import Tensor

from ppfr.errors import InputError, UnknownNameError, UnsupportedError
from ppfr.templates.encrypted import EncryptedGallery, KeyHolderAPI

__all__ = ["EncryptedMatcher"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class EncryptedMatcher:
    """Identification and verification over encrypted galleries kept in ``directory``.

    Args:
        directory: where the encrypted galleries are stored (one folder per gallery).
        keyholder: the key holder (:class:`ppfr.serve.keyholder.KeyHolderClient`, or an
            in-process :class:`~ppfr.templates.encrypted.KeyHolder`); it must also offer
            ``public_bytes()`` and ``config`` (both do).

    Thread-safe: one lock per matcher around enrolment; queries read immutable ciphertexts.
    """

    def __init__(self, directory: str | os.PathLike, keyholder: Any) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keyholder: KeyHolderAPI = keyholder
        self._public = keyholder.public_bytes()
        self._config = keyholder.config
        self._galleries: dict[str, EncryptedGallery] = {}
        self._lock = threading.Lock()

    def _gallery(self, name: str, create: bool = False) -> EncryptedGallery | None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(f"invalid gallery name {name!r:.80}")
        g = self._galleries.get(name)
        if g is None:
            d = self.directory / name
            if (d / "gallery.json").is_file():
                g = EncryptedGallery.load(d)
            elif create:
                g = EncryptedGallery.from_public(self._public, self._config)
            else:
                return None
            self._galleries[name] = g
        return g

    def enroll_templates(self, gallery: str, subject: str, templates: Tensor) -> list[int]:
        """Encrypt ``templates`` (m, D) of ``subject`` into ``gallery``; their row ids."""
        with self._lock:
            g = self._gallery(gallery, create=True)
            assert g is not None
            if g.key_id != self.keyholder.key_id:
                raise InputError(
                    f"gallery {gallery!r} is encrypted under key {g.key_id}, the key holder "
                    f"has {self.keyholder.key_id}: re-enrol it into a new gallery"
                )
            rows = g.enroll(templates, [subject] * len(templates))
            bs = self._config.block_size
            g.save(self.directory / gallery, blocks=sorted({r // bs for r in rows}))
            return rows

    def identify(
        self, gallery: str, queries: Tensor, top_k: int = 5
    ) -> list[list[tuple[str, float]]]:
        """For each query, at most ``top_k`` (subject, ternary cosine) the key holder released."""
        g = self._gallery(gallery)
        m = 1 if queries.ndim == 1 else int(queries.shape[0])
        if g is None:
            return [[] for _ in range(m)]
        return g.identify(queries.detach().cpu().numpy(), self.keyholder, top_k=top_k)

    @property
    def threshold(self) -> float:
        """The key holder's threshold: the service's decision threshold in this mode."""
        return float(self.keyholder.threshold)

    def subjects(self, gallery: str) -> list[str]:
        """The subjects enrolled in ``gallery``, sorted (no key holder needed)."""
        g = self._gallery(gallery)
        return [] if g is None else sorted(g._counts)

    def stats(self, gallery: str) -> dict[str, Any]:
        """Subject and template counts of ``gallery`` (the service's stats route)."""
        g = self._gallery(gallery)
        if g is None:
            return {"gallery": gallery, "subjects": 0, "templates": 0, "dim": None}
        return {
            "gallery": gallery,
            "subjects": len(g._counts),
            "templates": g.n,
            "dim": int(g.config.dim),
            "protection": "encrypted",
            "key_id": g.key_id,
        }

    def delete_subject(self, gallery: str, subject: str) -> int:
        """Refused: a packed block cannot drop one row (module docstring)."""
        raise UnsupportedError(
            "subjects cannot be deleted from an encrypted gallery: its ciphertexts pack "
            "several people per slot and only the key holder could unpack them. Rotate "
            "the key (ppfr keyholder rotate) and re-enrol the gallery without them"
        )

    def verify(self, gallery: str, query: Tensor, subject: str) -> float:
        """The key holder's decision as a score: 1.0 (match) or -1.0."""
        g = self._gallery(gallery)
        if g is None or subject not in g._counts:
            raise UnknownNameError(f"subject {subject!r} is not enrolled in gallery {gallery!r}")
        q = query.detach().cpu().numpy().reshape(-1)
        return 1.0 if g.verify(q, subject, self.keyholder) else -1.0
