"""The key-holder service (ppfr.serve.keyholder) and ``ppfr keyholder``: tokens, answers
that never carry a score vector, rotation and revocation while serving."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tenseal")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from ppfr.cli import app as cli_app  # noqa: E402
from ppfr.errors import DataError, InputError  # noqa: E402
from ppfr.serve.keyholder import (  # noqa: E402
    KeyHolderClient,
    add_token,
    create_key_file,
    create_keyholder_app,
    list_tokens,
    revoke_key_file,
    revoke_token,
    rotate_key_file,
)
from ppfr.templates._ckks import CKKSParams  # noqa: E402
from ppfr.templates.encrypted import (  # noqa: E402
    EncryptedConfig,
    EncryptedGallery,
    KeyHolder,
    pack_message,
    ternarise,
)

TINY = EncryptedConfig(
    dim=32, gallery_nnz=21, probe_nnz=6, pack=2, ckks=CKKSParams(2048, (30, 24), 18)
)


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 32))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def served(tmp_path):
    """A key file with one token, its app, an authorised client and a 1,500-row gallery."""
    key = tmp_path / "kh.key"
    create_key_file(key, TINY, threshold=0.3, max_k=8)
    _, token = add_token(key)
    http = TestClient(create_keyholder_app(key))
    client = KeyHolderClient(token=token, client=http)
    gallery = EncryptedGallery.from_public(client.public_bytes(), client.config)
    t = unit(1500, seed=0)
    gallery.enroll(t, [f"s{i // 3}" for i in range(1500)])  # 500 subjects x 3 rows
    return key, token, http, client, gallery, t


def test_public_endpoint_gives_no_secret_key(served) -> None:
    key, _, _, client, gallery, _ = served
    holder, _ = KeyHolder.load(key)
    assert client.key_id == holder.key_id == gallery.key_id
    assert not gallery.backend.has_secret_key
    assert client.config == TINY


def test_identify_over_http_equals_in_process_and_releases_no_score_vector(served) -> None:
    key, token, http, client, gallery, t = served
    holder, _ = KeyHolder.load(key)
    for probe in t[[0, 700, 1499]]:
        blocks, ids = gallery.score_blocks(probe)
        remote = client.top_k(blocks, ids, gallery.n, 1000, key_id=gallery.key_id)
        assert remote == holder.top_k(blocks, ids, gallery.n, 1000)
        assert len(remote) <= 8  # max_k caps whatever k the caller asks
        assert all(s >= 0.3 - 1e-9 for _, s in remote)
        # the raw response: a key id and at most max_k (row, score) pairs, nothing else
        body = pack_message(
            {"key_id": gallery.key_id, "n": gallery.n, "k": 1000, "block_ids": ids}, blocks
        )
        r = http.post("/v1/identify", content=body, headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200 and set(r.json()) == {"key_id", "matches"}
        assert len(r.json()["matches"]) <= 8 and len(r.content) < 1000
    # by subject: the plaintext ternary best (ties: lowest row); its own rows match
    ref = ternarise(t, 21).astype(int) @ ternarise(t[700], 6).astype(int)
    assert gallery.identify(t[700], client, top_k=1)[0][0][0] == f"s{int(np.argmax(ref)) // 3}"
    assert gallery.verify(t[700], "s233", client) is True


def test_requests_need_a_valid_unrevoked_token(served) -> None:
    key, token, http, _, gallery, t = served
    blocks, ids = gallery.score_blocks(t[0])
    body = pack_message(
        {"key_id": gallery.key_id, "n": gallery.n, "k": 1, "block_ids": ids}, blocks
    )
    for auth in (None, "Bearer nonsense", "Bearer kh_000000000000_" + "0" * 48):
        headers = {"authorization": auth} if auth else {}
        assert http.post("/v1/identify", content=body, headers=headers).status_code == 401
        assert http.get("/v1/public", headers=headers).status_code == 401
    tid = token.split("_")[1]
    revoke_token(key, tid)
    assert list_tokens(key)[0]["revoked"] is True
    r = http.post("/v1/identify", content=body, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 401
    with pytest.raises(InputError, match="no token"):
        revoke_token(key, "ffffffffffff")


def test_rotation_while_serving_refuses_the_old_gallery(served) -> None:
    key, token, http, client, gallery, t = served
    old_id, new = rotate_key_file(key)
    assert old_id == gallery.key_id != new.key_id
    blocks, ids = gallery.score_blocks(t[5])
    with pytest.raises(DataError, match="key"):
        client.top_k(blocks, ids, gallery.n, 3, key_id=gallery.key_id)
    # even without naming its key, an old block does not decode under the new key
    with pytest.raises(DataError, match="another key"):
        client.top_k(blocks, ids, gallery.n, 3)
    # re-enrolment under the new public key (fetched again) works; the token survived
    fresh = KeyHolderClient(token=token, client=http)
    assert fresh.key_id == new.key_id
    g2 = EncryptedGallery.from_public(fresh.public_bytes(), fresh.config)
    g2.enroll(t[:30], [f"s{i // 3}" for i in range(30)])
    ref = ternarise(t[:30], 21).astype(int) @ ternarise(t[5], 6).astype(int)
    assert g2.identify(t[5], fresh, top_k=1)[0][0][0] == f"s{int(np.argmax(ref)) // 3}"


def test_revoked_key_answers_nothing(served) -> None:
    key, token, http, client, gallery, t = served
    revoke_key_file(key)
    assert not key.exists()
    with pytest.raises(DataError, match="revoked"):
        client.top_k(*gallery.score_blocks(t[0]), gallery.n, 1)


def test_malformed_bodies_are_refused(served) -> None:
    _, token, http, _, gallery, _ = served
    headers = {"authorization": f"Bearer {token}"}
    assert http.post("/v1/identify", content=b"junk", headers=headers).status_code == 422
    body = pack_message({"key_id": gallery.key_id, "n": gallery.n, "k": "3", "block_ids": [0]}, [])
    assert http.post("/v1/identify", content=body, headers=headers).status_code == 422


def test_key_file_refuses_overwrite(tmp_path) -> None:
    key = tmp_path / "k"
    create_key_file(key, TINY)
    with pytest.raises(InputError, match="exists"):
        create_key_file(key, TINY)


def test_cli_create_token_rotate_revoke(tmp_path) -> None:
    runner = CliRunner()
    key = tmp_path / "kh.key"
    r = runner.invoke(
        cli_app, ["keyholder", "create", "--key-file", str(key), "--threshold", "0.2"]
    )
    assert r.exit_code == 0, r.output
    holder, _ = KeyHolder.load(key)
    assert holder.config == EncryptedConfig() and holder.threshold == 0.2  # 128-bit defaults
    r = runner.invoke(cli_app, ["keyholder", "token", "create", "--key-file", str(key)])
    assert r.exit_code == 0 and r.stdout.strip().startswith("kh_")
    r = runner.invoke(
        cli_app, ["keyholder", "public", "--key-file", str(key), "--out", str(tmp_path / "p")]
    )
    assert r.exit_code == 0 and (tmp_path / "p").read_bytes() == holder.public_bytes()
    r = runner.invoke(cli_app, ["keyholder", "rotate", "--key-file", str(key)])
    assert r.exit_code == 0 and KeyHolder.load(key)[0].key_id != holder.key_id
    assert len(list_tokens(key)) == 1  # tokens survive a rotation
    r = runner.invoke(cli_app, ["keyholder", "revoke", "--key-file", str(key)])
    assert r.exit_code == 2 and key.exists()  # needs --yes
    r = runner.invoke(cli_app, ["keyholder", "revoke", "--key-file", str(key), "--yes"])
    assert r.exit_code == 0 and not key.exists()


def test_probe_ternarisation_is_what_the_matching_side_sees(served) -> None:
    """Documented leak: the matching side handles the probe's ternary vector in the clear
    (63 signed coordinates of 512 by default); check that nothing else of it is used."""
    _, _, _, client, gallery, t = served
    p = t[3]
    q = np.sign(p) * (np.abs(p) >= np.sort(np.abs(p))[-TINY.probe_nnz])  # same ternary
    a = gallery.score_blocks(p)[1]
    assert (ternarise(p, TINY.probe_nnz) == ternarise(q, TINY.probe_nnz)).all()
    hits_p = client.top_k(*gallery.score_blocks(p), gallery.n, 5)
    hits_q = client.top_k(*gallery.score_blocks(q), gallery.n, 5)
    assert a == [0] and hits_p == hits_q
    assert json.dumps(hits_p)  # plain JSON-able answers


def test_encrypted_matcher_enrols_identifies_and_verifies_through_the_key_holder(
    served, tmp_path
) -> None:
    import torch

    from ppfr.serve.encrypted_matcher import EncryptedMatcher

    _, token, http, client, _, t = served
    m = EncryptedMatcher(tmp_path / "galleries", client)
    for i in range(40):  # subject s{i} has rows 3i..3i+2
        m.enroll_templates("g", f"s{i}", torch.from_numpy(t[3 * i : 3 * i + 3]))
    probe = torch.from_numpy(t[31])
    # the plaintext reference: best subject (ties: lowest row), and a subject below 0.3
    ref = ternarise(t[:120], 21).astype(int) @ ternarise(t[31], 6).astype(int) / np.sqrt(126)
    best = f"s{int(np.argmax(ref)) // 3}"
    low = f"s{int(np.argmin(ref.reshape(40, 3).max(1)))}"
    assert ref.reshape(40, 3).max(1).min() < 0.3
    assert m.identify("g", probe, top_k=1) == m.identify("g", probe[None], top_k=1)
    assert m.identify("g", probe, top_k=1)[0][0] == (best, pytest.approx(ref.max()))
    assert m.threshold == client.threshold == 0.3
    assert m.verify("g", probe, "s10") == 1.0  # its own row: a match
    assert m.verify("g", probe, low) == -1.0
    assert m.identify("empty", torch.from_numpy(t[:2])) == [[], []]
    # a restart reads the galleries back from disk (only public material is there)
    again = EncryptedMatcher(tmp_path / "galleries", KeyHolderClient(token=token, client=http))
    assert again.identify("g", probe, top_k=1)[0][0][0] == best
    with pytest.raises(Exception, match="not enrolled"):
        again.verify("g", probe, "nobody")
    with pytest.raises(InputError, match="invalid gallery"):
        again.identify("../x", probe)


def test_service_with_an_encrypted_gallery(bundle, tmp_path) -> None:
    """``ppfr serve --encrypted-dir``'s wiring: enrol, identify and verify over HTTP, the
    templates encrypted under the key holder's public key, its threshold the service's."""
    from _api import served_app

    from ppfr.serve.encrypted_matcher import EncryptedMatcher

    cfg = EncryptedConfig(
        dim=64, gallery_nnz=42, probe_nnz=8, pack=2, ckks=CKKSParams(2048, (30, 24), 18)
    )
    key = tmp_path / "kh.key"
    create_key_file(key, cfg, threshold=0.3)
    _, token = add_token(key)
    client = KeyHolderClient(token=token, client=TestClient(create_keyholder_app(key)))
    enc = EncryptedMatcher(tmp_path / "enc", client)
    s = served_app(bundle, tmp_path, matcher=lambda store, protection: enc, threshold=enc.threshold)
    reps = s.reps(4, seed=1)
    for i, name in enumerate(["ann", "bob"]):
        r = s.post(f"/v1/galleries/g1/subjects/{name}", s.body(reps[2 * i : 2 * i + 2]))
        assert r.status_code == 200 and r.json()["template_ids"] == [2 * i, 2 * i + 1]
    assert (tmp_path / "enc" / "g1" / "block-00000.bin").is_file()
    r = s.post("/v1/galleries/g1/identify?top_k=2", s.body(reps[:1]))
    assert r.status_code == 200, r.text
    cands = r.json()["results"][0]["candidates"]
    assert 1 <= len(cands) <= 2 and all(c["score"] >= 0.3 for c in cands)
    # its own representation scores the most a ternary score can: h / sqrt(g h)
    assert max(c["score"] for c in cands) == pytest.approx(np.sqrt(8 / 42))
    r = s.post("/v1/galleries/g1/subjects/ann/verify", s.body(reps[:1]))
    assert r.status_code == 200 and r.json()["match"] is True
    assert s.post("/v1/galleries/g1/subjects/nobody/verify", s.body(reps[:1])).status_code == 404
    # the gallery routes read the encrypted gallery, not the (empty) SlerpFace store
    h = s.headers()
    assert s.client.get("/v1/galleries/g1/subjects", headers=h).json()["subjects"] == ["ann", "bob"]
    stats = s.client.get("/v1/galleries/g1/stats", headers=h).json()
    assert stats["templates"] == 4 and stats["subjects"] == 2 and stats["protection"] == "encrypted"
    # deletion cannot be done on packed ciphertexts: said so, not a silent 404
    r = s.client.delete("/v1/galleries/g1/subjects/ann", headers=h)
    assert r.status_code == 501 and "rotate" in r.json()["detail"]
