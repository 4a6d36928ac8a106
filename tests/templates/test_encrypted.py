"""The encrypted gallery (ppfr.templates.encrypted) against plaintext ternary scoring, and
what a breach of the matching side yields.

Small rings (N = 2048, still inside the 128-bit table) and 32-d templates keep every test
fast; the packing and decoding do not depend on the size. The default 128-bit parameter
set is built once (its context creation is cheap).
"""

from __future__ import annotations

import os
import shutil
import stat

import numpy as np
import pytest

ts = pytest.importorskip("tenseal")

from ppfr.errors import DataError, InputError  # noqa: E402
from ppfr.templates._ckks import MAX_COEFF_BITS_128, CKKSBackend, CKKSParams  # noqa: E402
from ppfr.templates.encrypted import (  # noqa: E402
    ROUND_TOL,
    EncryptedConfig,
    EncryptedGallery,
    KeyHolder,
    pack_message,
    ternarise,
    unpack_message,
)

#: 1,024 slots x 2 templates per slot: 2,048 templates per block
TINY = EncryptedConfig(
    dim=32, gallery_nnz=21, probe_nnz=6, pack=2, ckks=CKKSParams(2048, (30, 24), 18)
)


def templates(n: int, seed: int, dim: int = 32) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ternary_scores(probe: np.ndarray, gallery: np.ndarray, cfg: EncryptedConfig) -> np.ndarray:
    """The plaintext reference: integer ternary scores of one probe against every row."""
    g = ternarise(gallery, cfg.gallery_nnz).astype(np.int64)
    return g @ ternarise(probe, cfg.probe_nnz).astype(np.int64)


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.create(TINY, threshold=-1.0, max_k=10_000)


@pytest.fixture(scope="module")
def enrolled(holder):
    """2,500 templates (one full block and a partial one), enrolled in two batches."""
    t = templates(2500, seed=1)
    g = EncryptedGallery.for_key_holder(holder)
    g.enroll(t[:700], [f"p{i}" for i in range(700)])
    g.enroll(t[700:], [f"p{i}" for i in range(700, 2500)])
    return g, t


# ------------------------------------------------------------------------- parameters
def test_default_parameters_are_128_bit() -> None:
    cfg = EncryptedConfig()
    p = cfg.ckks
    assert (p.poly_modulus_degree, p.coeff_mod_bit_sizes) == (8192, (60, 60))
    assert sum(p.coeff_mod_bit_sizes) <= MAX_COEFF_BITS_128[8192] == 218
    assert (cfg.dim, cfg.gallery_nnz, cfg.probe_nnz, cfg.base) == (512, 341, 63, 127)
    # the packed scores fit the data modulus at this scale (module docstring's inequality)
    assert np.log2(cfg.max_abs_value) + p.scale_bits <= p.data_bits - 2
    backend = CKKSBackend.generate(p)  # SEAL itself refuses parameters outside its table
    assert backend.slots == 4096 and backend.has_secret_key


def test_default_parameters_decode_a_full_block_exactly() -> None:
    # a full block of 20,480 templates at the default parameters, and a probe reaching the
    # largest score there is, decode to the plaintext ternary scores, with the decrypted
    # values far inside the key holder's rounding tolerance (measured at most 0.04 over 5
    # probes, module docstring; ROUND_TOL is 0.25)
    holder = KeyHolder.create(threshold=-1.0)
    cfg = holder.config
    gallery = EncryptedGallery.for_key_holder(holder)
    rng = np.random.default_rng(0)
    t = rng.standard_normal((cfg.block_size, cfg.dim))
    t[-1] = t[0]  # the last digit of a slot holds a template identical to the probe
    gallery.enroll(t, [f"p{i}" for i in range(len(t))])
    blocks, ids = gallery.score_blocks(t[0])
    values = holder._backend.decrypt(holder._backend.loads(blocks[0]))
    assert np.abs(values - np.rint(values)).max() < ROUND_TOL / 2
    rows, scores = holder._scores(blocks, ids, gallery.n)
    want = ternarise(t, cfg.gallery_nnz).astype(np.int64) @ ternarise(t[0], cfg.probe_nnz)
    got = np.zeros(len(t), np.int64)
    got[rows] = scores
    assert len(rows) == len(t) and np.array_equal(got, want)
    assert want[0] == want[-1] == cfg.probe_nnz  # the largest score a probe can reach


def test_parameters_outside_the_table_or_the_modulus_are_refused() -> None:
    with pytest.raises(InputError, match="128-bit"):
        CKKSParams(8192, (60, 60, 60, 60))
    with pytest.raises(InputError, match="128-bit"):
        CKKSParams(2048, (30, 30))
    with pytest.raises(InputError, match="bits"):
        EncryptedConfig(pack=8)  # 127^8 * 63 * 2^21 overflows a 60-bit data prime


# ------------------------------------------------------------------------ ternarise
@pytest.mark.parametrize("seed", [0, 1])
def test_ternarise_keeps_the_largest_coordinates_with_their_signs(seed) -> None:
    x = np.random.default_rng(seed).standard_normal((50, 32))
    t = ternarise(x, 9)
    assert t.dtype == np.int8 and ((t != 0).sum(1) == 9).all()
    kept = t != 0
    assert (np.sign(x[kept]) == t[kept]).all()
    # every kept magnitude is at least every dropped one, row by row
    a = np.abs(x)
    assert (np.where(kept, a, np.inf).min(1) >= np.where(kept, -np.inf, a).max(1)).all()


# ---------------------------------------------------------------- exact encrypted scores
@pytest.mark.parametrize("probe_seed", [2, 3, 4])
def test_decrypted_scores_equal_plaintext_ternary_scores(enrolled, holder, probe_seed) -> None:
    g, t = enrolled
    probe = templates(1, probe_seed)[0]
    blocks, ids = g.score_blocks(probe)
    assert ids == [0, 1] and len(g.blocks) == 2
    rows, s = holder._scores(blocks, ids, g.n)
    assert (rows == np.arange(g.n)).all()
    np.testing.assert_array_equal(s, ternary_scores(probe, t, TINY))


@pytest.mark.parametrize("probe_seed", [5, 6])
def test_identify_ranks_like_plaintext_ternary_scoring(enrolled, holder, probe_seed) -> None:
    g, t = enrolled
    probe = t[probe_seed * 100] + 0.05 * templates(1, probe_seed)[0]
    k = 20
    got = holder.top_k(*g.score_blocks(probe), g.n, k)
    ref = ternary_scores(probe, t, TINY)
    order = np.lexsort((np.arange(len(ref)), -ref))[:k]  # best first, ties by row
    assert [r for r, _ in got] == order.tolist()
    np.testing.assert_allclose([s for _, s in got], ref[order] / TINY.score_scale)
    # the subject-level answer: the best row's subject and score (ties: the lower row)
    assert g.identify(probe, holder, top_k=1)[0] == [(f"p{order[0]}", got[0][1])]


def test_key_holder_releases_at_most_k_rows_above_its_threshold(enrolled, holder) -> None:
    g, t = enrolled
    probe = t[7]
    ref = ternary_scores(probe, t, TINY) / TINY.score_scale
    thr = float(np.sort(ref)[-4])  # at least four rows reach it (ties: maybe more)
    strict = KeyHolder(holder._backend, TINY, threshold=thr, max_k=50)
    got = strict.top_k(*g.score_blocks(probe), g.n, 1000, key_id=g.key_id)
    assert len(got) == min(50, int((ref >= thr - 1e-9).sum())) >= 4
    assert all(s >= thr - 1e-9 for _, s in got)
    capped = KeyHolder(holder._backend, TINY, threshold=-1.0, max_k=5)
    assert len(capped.top_k(*g.score_blocks(probe), g.n, 1000)) == 5  # never the vector
    # the decision: the enrolled row itself matches, the farthest row does not
    far = int(np.argmin(ref))
    blocks, ids = g.score_blocks(probe)
    assert strict.decide(blocks, ids, g.n, [7]) and not strict.decide(blocks, ids, g.n, [far])


def test_verify_is_a_decision(enrolled, holder) -> None:
    g, t = enrolled
    thr = 0.5
    kh = KeyHolder(holder._backend, TINY, threshold=thr)
    ref = ternary_scores(t[42], t, TINY) / TINY.score_scale
    assert g.verify(t[42], "p42", kh) is True
    other = int(np.argmin(ref))
    assert g.verify(t[42], f"p{other}", kh) is bool(ref[other] >= thr)
    with pytest.raises(InputError, match="not enrolled"):
        g.verify(t[42], "nobody", kh)


def test_enrolment_rerandomises_every_ciphertext_of_the_block(holder) -> None:
    g = EncryptedGallery.for_key_holder(holder)
    t = templates(3, seed=8)
    g.enroll(t[:2], ["a", "b"])
    before = [g.backend.dumps(c) for c in g.blocks[0]]
    g.enroll(t[2:], ["c"])
    after = [g.backend.dumps(c) for c in g.blocks[0]]
    # also the coordinates where the new template is 0: snapshots do not reveal its support
    assert all(x != y for x, y in zip(before, after, strict=True))


# ------------------------------------------------------------------------------ breach
def test_breach_of_the_matching_side_decrypts_nothing(enrolled, holder, tmp_path) -> None:
    """Copy everything the matching server holds; nothing there decrypts a template or a
    score, and nothing there is the secret key."""
    g, t = enrolled
    g.save(tmp_path / "server")
    stolen = tmp_path / "stolen"
    shutil.copytree(tmp_path / "server", stolen)
    loot = EncryptedGallery.load(stolen)
    assert loot.n == g.n and loot.key_id == holder.key_id
    assert not loot.backend.has_secret_key
    ct = loot.blocks[0][0]  # an encrypted template coordinate
    with pytest.raises(ValueError):  # TenSEAL itself refuses: no secret key in the context
        ct.decrypt()
    with pytest.raises(InputError, match="secret key"):
        loot.backend.decrypt(ct)
    blocks, _ = loot.score_blocks(t[0])  # the attacker can compute score blocks...
    with pytest.raises(ValueError):  # ...and cannot read them
        loot.backend.loads(blocks[0]).decrypt()
    with pytest.raises(InputError, match="secret key"):  # nor become a key holder
        KeyHolder(loot.backend, TINY)
    # the secret key's bytes appear in no stolen file
    secret = holder._backend.secret_bytes()
    public = holder.public_bytes()
    assert len(secret) > len(public) and public in (stolen / "public.ctx").read_bytes()
    for f in stolen.iterdir():
        data = f.read_bytes()
        assert secret not in data and secret[-4096:] not in data
    # and the stolen gallery still works for the legitimate key holder
    best = int(np.argmax(ternary_scores(t[9], t, TINY)))  # ties: the lowest row
    assert loot.identify(t[9], holder, top_k=1)[0][0][0] == f"p{best}"


def test_matching_side_refuses_a_secret_context(holder) -> None:
    with pytest.raises(InputError, match="public context"):
        EncryptedGallery(holder._backend, TINY, holder.key_id)


# --------------------------------------------------------------------------- renewal
def test_rekey_old_gallery_no_longer_decrypts_or_matches(enrolled, holder) -> None:
    g, t = enrolled
    new = KeyHolder.create(TINY, threshold=-1.0)
    assert new.key_id != holder.key_id
    blocks, ids = g.score_blocks(t[3])
    with pytest.raises(DataError, match="key"):  # named key mismatch
        new.top_k(blocks, ids, g.n, 5, key_id=g.key_id)
    with pytest.raises(DataError, match="another key"):  # and cryptographically
        new.top_k(blocks, ids, g.n, 5)
    # what the new secret key makes of an old score block: noise, nowhere near the scores
    v = np.asarray(ts.ckks_vector_from(new._backend._ctx, blocks[0]).decrypt())
    truth = holder._backend.decrypt(holder._backend.loads(blocks[0]))
    assert np.abs(v - truth).min() > 1.0
    # re-enrolment from the clients' templates under the new key works again
    g2 = EncryptedGallery.for_key_holder(new)
    g2.enroll(t[:100], [f"p{i}" for i in range(100)])
    best = int(np.argmax(ternary_scores(t[3], t[:100], TINY)))
    assert g2.identify(t[3], new, top_k=1)[0][0][0] == f"p{best}"
    with pytest.raises(DataError):  # the old key holder cannot read the new gallery
        holder.top_k(*g2.score_blocks(t[3]), g2.n, 5)


# ----------------------------------------------------------------------- files, wire
def test_key_file_round_trip_is_private(holder, tmp_path) -> None:
    path = tmp_path / "kh.key"
    holder.save(path, {"tokens": [{"id": "x"}]})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, extra = KeyHolder.load(path)
    assert again.key_id == holder.key_id and extra == {"tokens": [{"id": "x"}]}
    assert again.config == TINY
    path.write_bytes(b"nonsense")
    with pytest.raises(DataError, match="not a ppfr key-holder key file"):
        KeyHolder.load(path)


def test_gallery_round_trip_and_corrupt_files(enrolled, holder, tmp_path) -> None:
    g, t = enrolled
    nbytes = g.save(tmp_path / "g")
    assert nbytes > 0 and g.memory_bytes() > 0
    back = EncryptedGallery.load(tmp_path / "g")
    a = holder.top_k(*g.score_blocks(t[11]), g.n, 3)
    assert holder.top_k(*back.score_blocks(t[11]), back.n, 3) == a
    (tmp_path / "g" / "block-00001.bin").write_bytes(b"PPFRHE01garbage")
    with pytest.raises(DataError):
        EncryptedGallery.load(tmp_path / "g")
    with pytest.raises(DataError, match="no encrypted gallery"):
        EncryptedGallery.load(tmp_path / "nothing")


def test_message_round_trip_and_malformed() -> None:
    blobs = [b"abc", b"", bytes(range(256))]
    header = {"k": 3, "block_ids": [0, 1, 2]}
    assert unpack_message(pack_message(header, blobs)) == (header, blobs)
    msg = pack_message(header, blobs)
    for bad in (msg[:-1], msg + b"x", b"XXXXXXXX" + msg[8:], b""):
        with pytest.raises(DataError):
            unpack_message(bad)


def test_bad_inputs_are_named(enrolled, holder) -> None:
    g, _ = enrolled
    with pytest.raises(InputError, match="shape"):
        g.enroll(np.ones((2, 16)), ["a", "b"])
    with pytest.raises(InputError, match="subject names"):
        g.enroll(np.ones((2, 32)), ["a"])
    with pytest.raises(InputError, match="all zeros"):
        g.score_blocks(np.zeros(32))
    with pytest.raises(InputError, match="block id"):
        holder.top_k(*g.score_blocks(np.ones(32))[:1], [7, 8], g.n, 1)
