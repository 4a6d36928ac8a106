"""Alignment: the similarity fit, the warp's pixel geometry, YuNet on real faces, align_tree."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from ppfr.align import (
    REPORT_NAME,
    TEMPLATE,
    FaceDetector,
    align_image,
    align_tree,
    estimate_similarity,
    refine_landmarks,
    transform_points,
    warp_face,
)
from ppfr.data.images import read_image, save_image
from ppfr.data.orl import aligned_orl, orl_root
from ppfr.errors import InputError


def similarity_matrix(angle_deg: float, scale: float, shift) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, np.asarray(shift, float)[:, None]])


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def orl_photo() -> np.ndarray:
    return read_image(orl_root() / "s1" / "1.pgm")  # 92x112, grey as RGB


# --- geometry --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "angle,scale,shift", [(0, 1, (0, 0)), (17, 2.5, (30, -4)), (-120, 0.3, (5, 9))]
)
def test_estimate_similarity_recovers_known_transform(angle, scale, shift):
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (7, 2))
    m = similarity_matrix(angle, scale, shift)
    np.testing.assert_allclose(estimate_similarity(src, transform_points(m, src)), m, atol=1e-9)


def test_estimate_similarity_least_squares_and_no_reflection():
    rng = np.random.default_rng(1)
    m = similarity_matrix(10, 1.3, (4, 2))
    noisy = transform_points(m, TEMPLATE) + rng.normal(0, 0.5, (5, 2))
    est = estimate_similarity(TEMPLATE, noisy)

    def sse(mat):
        return float(((transform_points(mat, TEMPLATE) - noisy) ** 2).sum())

    # The least-squares fit explains the noisy points at least as well as the truth...
    assert sse(est) <= sse(m) + 1e-9
    # ...and no nearby similarity does better.
    for _ in range(20):
        other = similarity_matrix(10 + rng.normal(0, 0.3), 1.3 + rng.normal(0, 0.01), (0, 0))
        other[:, 2] = est[:, 2] + rng.normal(0, 0.2, 2)
        assert sse(est) <= sse(other) + 1e-9
    np.testing.assert_allclose(est[:, :2], m[:, :2], atol=0.03)
    # A mirrored point set has no exact similarity fit: the fit must stay a rotation.
    mirrored = TEMPLATE * [-1, 1]
    est = estimate_similarity(TEMPLATE, mirrored)
    assert np.linalg.det(est[:, :2]) > 0


def test_estimate_similarity_rejects_bad_points():
    with pytest.raises(InputError):
        estimate_similarity(np.zeros((5, 2)), TEMPLATE)  # all one point
    with pytest.raises(InputError):
        estimate_similarity(TEMPLATE[:4], TEMPLATE)
    with pytest.raises(InputError):
        estimate_similarity(np.zeros((5, 3)), np.zeros((5, 3)))


def test_warp_puts_synthetic_face_landmarks_on_template():
    """A synthetic face: five bright dots at known positions, seen through a random
    similarity. Warping with those positions must bring the dots onto the template."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:240]
    gy, gx = np.mgrid[0:112, 0:112]
    worst = 0.0
    for _ in range(5):
        # Spin and scale the template about its centre, placed near the canvas centre.
        m = similarity_matrix(rng.uniform(-40, 40), rng.uniform(0.8, 1.8), (0, 0))
        pts = transform_points(m, TEMPLATE - TEMPLATE.mean(0)) + rng.uniform(100, 140, 2)
        canvas = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18.0) for x, y in pts)
        img = np.repeat((255 * np.clip(canvas, 0, 1)).astype(np.uint8)[..., None], 3, axis=2)
        out = warp_face(img, pts).astype(float)[..., 0]
        for x, y in TEMPLATE:
            w = out * (((gx - x) ** 2 + (gy - y) ** 2) < 64)
            centre = np.array([(w * gx).sum(), (w * gy).sum()]) / w.sum()
            worst = max(worst, float(np.hypot(*(centre - (x, y)))))
    assert worst < 1.0, f"dot landed {worst:.3f} px from the template"
    assert worst < 0.1  # measured ~0.01 px: the warp itself adds no offset


def test_warp_face_checks_input():
    with pytest.raises(InputError):
        warp_face(np.zeros((50, 50, 3), np.float32), TEMPLATE)
    with pytest.raises(InputError):
        warp_face(np.zeros((50, 50), np.uint8), TEMPLATE)
    with pytest.raises(InputError):
        warp_face(np.zeros((50, 50, 3), np.uint8), TEMPLATE[:3])


# --- detection and alignment of real faces ----------------------------------------------


def test_yunet_landmarks_are_image_left_first(detector, orl_photo):
    faces = detector.detect(orl_photo)
    assert len(faces) == 1 and faces[0].score > 0.8
    lm = faces[0].landmarks
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # left eye/mouth on the image's left
    assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min()  # eyes above nose above mouth


def test_alignment_undoes_rotation_and_scale(detector, orl_photo):
    """A real face seen rotated and scaled: alignment must find the same landmarks as on
    the upright face (mapped back through the known transform) and level the eyes."""
    base = cv2.copyMakeBorder(orl_photo, 60, 60, 60, 60, cv2.BORDER_REPLICATE)
    ref = align_image(base, detector)
    to_template = estimate_similarity(ref.landmarks, TEMPLATE)  # measure in 112-px units
    errors = []
    for angle, scale in [(-25, 0.8), (20, 1.6), (10, 1.2)]:
        m = cv2.getRotationMatrix2D((base.shape[1] / 2, base.shape[0] / 2), angle, scale)
        img = cv2.warpAffine(
            base, m, (base.shape[1], base.shape[0]), borderMode=cv2.BORDER_REPLICATE
        )
        res = align_image(img, detector)
        assert res.face is not None and res.face.shape == (112, 112, 3)
        back = transform_points(cv2.invertAffineTransform(m), res.landmarks)
        err = np.linalg.norm(
            transform_points(to_template, back) - transform_points(to_template, ref.landmarks),
            axis=1,
        )
        errors.append(err.mean())
        assert err.mean() < 2.5, f"{angle} deg x{scale}: landmarks moved {err.mean():.2f} px"
        lm = detector.detect(res.face)[0].landmarks
        eyes = lm[1] - lm[0]
        roll = np.degrees(np.arctan2(eyes[1], eyes[0]))
        assert abs(roll) < 5, f"eye line still tilted by {roll:.1f} deg"
    assert np.mean(errors) < 2.0  # measured ~1.2 px; ~4.9 px without refinement


def test_refinement_steadies_landmarks(detector, orl_photo):
    base = cv2.copyMakeBorder(orl_photo, 60, 60, 60, 60, cv2.BORDER_REPLICATE)
    m = cv2.getRotationMatrix2D((base.shape[1] / 2, base.shape[0] / 2), -25, 0.8)
    img = cv2.warpAffine(base, m, (base.shape[1], base.shape[0]), borderMode=cv2.BORDER_REPLICATE)
    ref = transform_points(m, align_image(base, detector).landmarks)
    raw = align_image(img, detector, refine=0).landmarks
    refined = align_image(img, detector).landmarks
    assert np.linalg.norm(refined - ref, axis=1).mean() < np.linalg.norm(raw - ref, axis=1).mean()


def test_aligned_orl_landmarks_near_template(detector):
    faces, labels = aligned_orl()
    assert faces.shape == (400, 112, 112, 3) and faces.dtype == np.uint8
    assert np.array_equal(labels, np.repeat(np.arange(40), 10))
    errors = []
    for i in range(0, 400, 20):
        lm = refine_landmarks(faces[i], detector.detect(faces[i])[0].landmarks, detector)
        errors.append(np.linalg.norm(lm - TEMPLATE, axis=1).mean())
    # Measured 2.8 px: each face's shape differs from the mean-face template, so a
    # similarity fit cannot put all five points on it exactly.
    assert np.mean(errors) < 4.0


def test_small_and_tight_faces_are_found_by_retry(detector, orl_photo):
    ref = detector.detect(orl_photo)[0].landmarks
    crop = orl_photo[40:100, 30:62]  # 32x60, the face cut at the forehead and cheeks
    faces = detector.detect(crop)
    assert len(faces) == 1
    assert np.linalg.norm(faces[0].landmarks + [30, 40] - ref, axis=1).mean() < 6
    tiny = cv2.resize(orl_photo, (23, 28), interpolation=cv2.INTER_AREA)
    faces = detector.detect(tiny)
    assert len(faces) == 1
    assert np.linalg.norm(faces[0].landmarks * 4 - ref, axis=1).mean() < 6


def test_no_face_in_blank_image(detector):
    res = align_image(np.full((120, 100, 3), 128, np.uint8), detector)
    assert res.face is None and res.num_faces == 0 and res.landmarks is None


def test_detector_threshold_is_checked():
    with pytest.raises(InputError):
        FaceDetector(score_threshold=1.5)


# --- align_tree ---------------------------------------------------------------------


@pytest.fixture()
def photo_tree(tmp_path, orl_photo):
    src = tmp_path / "src"
    (src / "alice").mkdir(parents=True)
    (src / "bob" / "deeper").mkdir(parents=True)
    other = read_image(orl_root() / "s2" / "1.pgm")
    shutil.copy(orl_root() / "s1" / "1.pgm", src / "alice" / "one.pgm")
    save_image(other, src / "bob" / "deeper" / "two.jpg")
    save_image(np.hstack([orl_photo, other]), src / "bob" / "pair.png")  # two people
    save_image(np.zeros((112, 92, 3), np.uint8), src / "bob" / "blank.png")
    (src / "bob" / "broken.jpg").write_bytes(b"not an image")
    (src / "bob" / "notes.txt").write_text("ignored")
    save_image(orl_photo, src / "alice" / ".hidden.png")
    save_image(orl_photo, src / "alice" / "one.png")  # same output name as one.pgm
    return src


def test_align_tree_keeps_folders_and_reports(photo_tree, tmp_path):
    dst = tmp_path / "out"
    rep = align_tree(photo_tree, dst, progress=False)
    assert sorted(rep.written) == ["alice/one.pgm", "bob/deeper/two.jpg", "bob/pair.png"]
    assert rep.no_face == ["bob/blank.png"]
    assert [p for p, _ in rep.unreadable] == ["bob/broken.jpg"]
    assert rep.multiple_faces == [("bob/pair.png", 2)]
    assert rep.name_clashes == ["alice/one.png"]
    for rel in ["alice/one.png", "bob/deeper/two.png", "bob/pair.png"]:
        assert read_image(dst / rel).shape == (112, 112, 3)
    assert not (dst / "alice" / ".hidden.png").exists()
    saved = json.loads((dst / REPORT_NAME).read_text())
    assert saved["no_face"] == ["bob/blank.png"] and "summary" in saved
    assert not list(dst.rglob(".*partial*"))


def test_align_tree_never_overwrites_silently(photo_tree, tmp_path):
    dst = tmp_path / "out"
    align_tree(photo_tree, dst, progress=False)
    marker = np.full((112, 112, 3), 7, np.uint8)
    save_image(marker, dst / "alice" / "one.png")
    rep = align_tree(photo_tree, dst, progress=False)
    assert rep.written == [] and "alice/one.pgm" in rep.skipped_existing
    assert np.array_equal(read_image(dst / "alice" / "one.png"), marker)
    rep = align_tree(photo_tree, dst, overwrite=True, progress=False)
    assert "alice/one.pgm" in rep.written
    assert not np.array_equal(read_image(dst / "alice" / "one.png"), marker)


def test_align_tree_refuses_destination_in_source(photo_tree, tmp_path):
    with pytest.raises(InputError):
        align_tree(photo_tree, photo_tree, progress=False)
    with pytest.raises(InputError):
        align_tree(photo_tree, photo_tree / "aligned", progress=False)
    assert not (photo_tree / "aligned").exists()


def test_align_command(photo_tree, tmp_path):
    import typer

    from ppfr.cli.align import align_cmd

    app = typer.Typer()
    app.command("align")(align_cmd)
    app.command("noop")(lambda: None)  # two commands, so "align" is a real sub-command
    runner = CliRunner()
    dst = tmp_path / "cli_out"
    res = runner.invoke(app, ["align", str(photo_tree), str(dst), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "3 aligned" in res.output and "blank.png" in res.output
    res = runner.invoke(app, ["align", str(photo_tree), str(photo_tree / "x")])
    assert res.exit_code == 2 and "inside the source" in res.output
