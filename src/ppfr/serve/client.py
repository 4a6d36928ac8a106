"""``ppfr.Client``: protect faces on this machine, send only the protected representations.

Example:
    >>> import ppfr                                                   # doctest: +SKIP
    >>> c = ppfr.Client("http://127.0.0.1:8000", "ppfr_...", model="bundle-client")
    >>> c.enroll("staff", "alice", ["alice1.jpg", "alice2.jpg"])     # doctest: +SKIP
    >>> c.identify("staff", ["door-camera.jpg"], top_k=3)            # doctest: +SKIP
    [{'candidates': [{'subject': 'alice', 'score': 0.71}, ...], 'match': 'alice'}]

What leaves the machine. Each image is read, the largest face found and aligned with
YuNet (:func:`ppfr.align.align_image`; ``align=False`` takes images that are already aligned
112x112 faces), protected with the *client* bundle (a fresh random permutation per image
and call), and packed with :func:`ppfr.serve.wire.encode_representation` together with the
client fingerprint. Pixels never leave. Images may be file paths, RGB uint8 arrays
``(H, W, 3)``, or already aligned face tensors ``(3, 112, 112)`` in [-1, 1].

Errors: an HTTP error becomes :class:`ServerError` with the status and the server's message
(``status`` 0 when the server cannot be reached); bad images become
:class:`~ppfr.errors.InputError` / :class:`~ppfr.errors.DataError` naming the image.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import torch

from ppfr.align import align_image, default_detector
from ppfr.data.images import FACE_SIZE, read_image, to_tensor
from ppfr.errors import InputError, PPFRError
from ppfr.methods import load
from ppfr.serve import wire

ImageLike = str | os.PathLike | np.ndarray | torch.Tensor


class ServerError(PPFRError):
    """The service answered with an error (``status``, ``detail``) or could not be reached."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


class Client:
    """Client of the ppfr recognition service (see the module docstring).

    Args:
        url: the service's base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: ``ppfr_<key_id>_<secret>`` from ``ppfr keys create``.
        model: client bundle directory; needed by the calls that send faces.
        align: detect and align faces with YuNet (False: images are aligned 112x112 faces).
        timeout: seconds per HTTP request.
        wire_dtype: ``"float32"`` or ``"float16"`` (half the bytes).
        generator: seeds the protection's randomness (tests); None draws it fresh.
        batch_size: images per identify request (the server refuses batches over its
            ``max_batch``, 64 by default); an enrolment is always one request.
        http: an ``httpx.Client`` to use instead of opening one (tests pass FastAPI's
            ``TestClient``); its base URL is used as is.
        retry_for: seconds to keep retrying a request the server answered 503 (overloaded,
            or a shard being rebuilt), waiting what its ``Retry-After`` says (with jitter
            from a seeded generator); 0 raises at the first 503. Safe for every call: a
            503 means the request was refused before any work.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        model: str | os.PathLike | None = None,
        *,
        align: bool = True,
        timeout: float = 60.0,
        wire_dtype: str = "float32",
        generator: torch.Generator | None = None,
        batch_size: int = 32,
        http: httpx.Client | None = None,
        retry_for: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry_for = float(retry_for)
        self._jitter = random.Random(0)
        self.align = align
        self.wire_dtype = wire_dtype
        self.generator = generator
        self.batch_size = batch_size
        self.model = None
        self.fingerprint: str | None = None
        if model is not None:
            self.model = load(model, part="client")
            self.fingerprint = self.model.fingerprint("client")
        self._own_http = http is None
        self._http = http if http is not None else httpx.Client(base_url=self.url, timeout=timeout)
        self._headers = {"Authorization": f"Bearer {api_key.strip()}"}
        self._detector = None

    # ---- local work
    def faces(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Aligned faces ``(N, 3, 112, 112)`` in [-1, 1] from paths, arrays or tensors."""
        if isinstance(images, str | os.PathLike | np.ndarray | torch.Tensor):
            images = [images]
        if not images:
            raise InputError("no images given")
        out = []
        for i, img in enumerate(images):
            name = str(img) if isinstance(img, str | os.PathLike) else f"image {i}"
            if isinstance(img, torch.Tensor):
                if img.shape != (3, FACE_SIZE, FACE_SIZE) or not img.is_floating_point():
                    raise InputError(f"{name}: face tensors must be float (3, 112, 112) in [-1, 1]")
                out.append(img.float().cpu())
                continue
            arr = read_image(Path(img)) if isinstance(img, str | os.PathLike) else img
            if self.align:
                self._detector = self._detector or default_detector()
                res = align_image(arr, self._detector)
                if res.face is None:
                    raise InputError(f"{name}: no face found")
                arr = res.face
            elif arr.shape[:2] != (FACE_SIZE, FACE_SIZE):
                raise InputError(
                    f"{name}: expected an aligned {FACE_SIZE}x{FACE_SIZE} face with align=False, "
                    f"got {arr.shape[1]}x{arr.shape[0]}"
                )
            out.append(to_tensor(arr))
        return torch.stack(out)

    def protect(self, images: Sequence[ImageLike]) -> bytes:
        """The wire message for ``images``: what is sent, and all that is sent."""
        if self.model is None:
            raise InputError("this Client has no model: pass model=CLIENT_BUNDLE_DIR")
        faces = self.faces(images)
        with torch.inference_mode():
            gen = self.generator
            p = torch.cat([self.model.protect(b, generator=gen) for b in faces.split(32)])
        return wire.encode_representation(p, self.fingerprint, dtype=self.wire_dtype)

    # ---- HTTP
    def _call(self, method: str, path: str, body: bytes | None = None, **params: Any) -> Any:
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = wire.MEDIA_TYPE
        give_up = time.monotonic() + self.retry_for
        while True:
            try:
                r = self._http.request(
                    method, path, content=body, headers=headers, params=params or None
                )
            except httpx.HTTPError as e:
                raise ServerError(0, f"cannot reach {self.url}: {e}") from None
            if r.status_code != 503:
                break
            wait = _retry_after(r.headers.get("retry-after")) * (0.5 + self._jitter.random())
            if time.monotonic() + wait > give_up:
                break
            time.sleep(wait)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServerError(r.status_code, str(detail))
        return r.json()

    @staticmethod
    def _g(gallery: str, subject: str | None = None) -> str:
        path = f"/v1/galleries/{quote(gallery, safe='')}"
        return path if subject is None else f"{path}/subjects/{quote(subject, safe='')}"

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def info(self) -> dict[str, Any]:
        """Method, representation shape/dtype, fingerprints and threshold of the server."""
        return self._call("GET", "/v1/info")

    def enroll(self, gallery: str, subject: str, images: Sequence[ImageLike]) -> dict[str, Any]:
        """Enroll ``subject`` with one template per image."""
        return self._call("POST", self._g(gallery, subject), self.protect(images))

    def identify(
        self, gallery: str, images: Sequence[ImageLike], top_k: int = 5
    ) -> list[dict[str, Any]]:
        """Per image: ``{"candidates": [{"subject", "score"}...], "match": subject or None}``."""
        if isinstance(images, str | os.PathLike | np.ndarray | torch.Tensor):
            images = [images]
        results = []
        for i in range(0, len(images), self.batch_size):  # the server caps a request's batch
            body = self.protect(images[i : i + self.batch_size])
            out = self._call("POST", f"{self._g(gallery)}/identify", body, top_k=top_k)
            results += out["results"]
        return results

    def verify(self, gallery: str, subject: str, image: ImageLike) -> dict[str, Any]:
        """``{"score", "match", "threshold", ...}`` of one image against ``subject``."""
        return self._call("POST", f"{self._g(gallery, subject)}/verify", self.protect([image]))

    def delete(self, gallery: str, subject: str) -> dict[str, Any]:
        return self._call("DELETE", self._g(gallery, subject))

    def subjects(self, gallery: str) -> list[str]:
        return self._call("GET", f"{self._g(gallery)}/subjects")["subjects"]

    def stats(self, gallery: str) -> dict[str, Any]:
        return self._call("GET", f"{self._g(gallery)}/stats")

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header (delay-seconds form); 1 if absent or a date."""
    try:
        return min(max(float(value), 0.1), 30.0) if value is not None else 1.0
    except ValueError:
        return 1.0
