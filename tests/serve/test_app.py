import asyncio
import logging

import numpy as np
import pytest
import torch
from _api import served_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ppfr
from ppfr.errors import InputError
from ppfr.serve.app import create_app
from ppfr.serve.calibrate import calibrate_scores, read_calibration


@pytest.fixture()
def s(bundle, tmp_path):
    return served_app(bundle, tmp_path, threshold=0.999, max_body_bytes=700_000, max_batch=4)


def test_info_and_openapi(s):
    r = s.client.get("/v1/info", headers=s.headers())
    assert r.status_code == 200
    info = r.json()
    assert info["method"] == "minusface"
    assert info["representation_shape"] == list(s.model.representation_shape)
    assert info["client_fingerprint"] == s.model.fingerprint("client")
    assert info["server_fingerprint"] == s.model.fingerprint("server")
    assert info["threshold"] == 0.999 and "float32" in info["representation_dtype"]
    paths = s.client.get("/openapi.json").json()["paths"]
    assert "/v1/galleries/{gallery}/identify" in paths and "/v1/health" in paths


def test_info_of_an_unbounded_representation(tmp_path):
    # DCTDP's noisy coefficients have no fixed range: info says null, not a JSON error
    torch.manual_seed(0)
    model = ppfr.create("dctdp", backbone="ir18", backbone_width=0.125, embedding_size=64)
    model.save(tmp_path / "dctdp")
    s = served_app(tmp_path / "dctdp", tmp_path)
    r = s.client.get("/v1/info", headers=s.headers())
    assert r.status_code == 200, r.text
    assert r.json()["method"] == "dctdp" and r.json()["representation_range"] is None


def test_enroll_identify_verify_delete(s):
    reps = s.reps(6, seed=1)
    for i, name in enumerate(["ann", "bob", "cy"]):
        r = s.post(f"/v1/galleries/g1/subjects/{name}", s.body(reps[2 * i : 2 * i + 2]))
        assert r.status_code == 200, r.text
        assert len(r.json()["template_ids"]) == 2
    st_ = s.client.get("/v1/galleries/g1/stats", headers=s.headers()).json()
    assert (st_["subjects"], st_["templates"], st_["dim"]) == (3, 6, 64)
    subjects = s.client.get("/v1/galleries/g1/subjects", headers=s.headers()).json()["subjects"]
    assert subjects == ["ann", "bob", "cy"]
    # a query equal to an enrolled representation finds its subject first, above threshold
    r = s.post("/v1/galleries/g1/identify?top_k=3", s.body(reps[[0, 3, 4]]))
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["candidates"][0]["subject"] for x in res] == ["ann", "bob", "cy"]
    assert [x["match"] for x in res] == ["ann", "bob", "cy"]
    for x in res:
        scores = [c["score"] for c in x["candidates"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        # the same representation scores 1; the tiny untrained model puts others near 0.95
        assert scores[0] > 0.999 > scores[1]
    r = s.post("/v1/galleries/g1/subjects/bob/verify", s.body(reps[2:3]))
    assert r.json()["match"] is True and r.json()["score"] > 0.999
    r = s.post("/v1/galleries/g1/subjects/ann/verify", s.body(reps[2:3]))
    assert r.json()["match"] is False
    assert s.post("/v1/galleries/g1/subjects/nobody/verify", s.body(reps[:1])).status_code == 404
    # verify takes exactly one representation
    assert s.post("/v1/galleries/g1/subjects/ann/verify", s.body(reps[:2])).status_code == 422
    # delete
    r = s.client.delete("/v1/galleries/g1/subjects/bob", headers=s.headers())
    assert r.status_code == 200 and r.json()["removed"] == 2
    assert s.client.delete("/v1/galleries/g1/subjects/bob", headers=s.headers()).status_code == 404
    res = s.post("/v1/galleries/g1/identify", s.body(reps[2:3])).json()["results"][0]
    assert "bob" not in [c["subject"] for c in res["candidates"]]
    # an empty gallery answers with no candidates
    r = s.post("/v1/galleries/g2/identify", s.body(reps[:1]), who="g2")
    assert r.json()["results"] == [{"candidates": [], "match": None}]


def test_float16_wire(s):
    reps = s.reps(1, seed=3)
    assert s.post("/v1/galleries/g1/subjects/h", s.body(reps, dtype="float16")).status_code == 200
    r = s.post("/v1/galleries/g1/subjects/h/verify", s.body(reps, dtype="float16"))
    assert r.json()["score"] > 0.999


def test_rejections(s):
    rep = s.reps(1)
    path = "/v1/galleries/g1/subjects/x"
    r = s.post(path, s.body(rep, fingerprint="ab" * 32))
    assert r.status_code == 409 and "client model" in r.json()["detail"]
    nan = rep.clone()
    nan[0, 0, 0, 0] = float("nan")
    r = s.post(path, s.body(nan))
    assert r.status_code == 422 and "NaN" in r.json()["detail"]
    r = s.post(path, s.body(torch.rand(1, 3, 64, 64)))
    assert r.status_code == 422 and "shape" in r.json()["detail"]
    r = s.post(path, s.body(torch.rand(1, 512)))
    assert r.status_code == 422
    # a face image in [-1, 1] has the representation's shape here, but not its range
    r = s.post(path, s.body(torch.rand(1, 3, 112, 112) * 2 - 1))
    assert r.status_code == 422 and "values must be in" in r.json()["detail"]
    # raw image bytes (PNG) and JSON are refused
    r = s.post(path, b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert r.status_code == 422 and "raw images are never accepted" in r.json()["detail"]
    r = s.client.post(path, json={"x": [1, 2]}, headers=s.headers())
    assert r.status_code == 415
    # too many representations, too many bytes
    r = s.post(path, s.body(s.reps(5), dtype="float16"))
    assert r.status_code == 413 and "max_batch" in r.json()["detail"]
    r = s.post(path, bytes(700_001))
    assert r.status_code == 413
    r = s.post("/v1/galleries/g1/identify?top_k=0", s.body(rep))
    assert r.status_code == 422
    assert s.post("/v1/galleries/bad%20name/subjects/x", s.body(rep)).status_code == 422
    assert s.client.get("/v1/galleries/g1/stats", headers=s.headers()).json()["templates"] == 0


def test_oversize_refused_before_reading(s):
    """A chunked body without Content-Length is cut off once it passes the limit."""
    sent = []

    def chunks():
        for _ in range(100):  # 100 x 100 kB, limit 700 kB
            sent.append(1)
            yield bytes(100_000)

    headers = {**s.headers(), "Content-Type": "application/octet-stream"}
    r = s.client.post("/v1/galleries/g1/subjects/x", content=chunks(), headers=headers)
    assert r.status_code == 413
    # declared too large: refused from the header, before any body
    headers["Content-Length"] = str(10**9)
    r = s.client.post("/v1/galleries/g1/subjects/x", content=b"", headers=headers)
    assert r.status_code == 413


def test_logs_carry_no_biometric_data(s, caplog):
    rep = s.reps(1, seed=7)
    values = rep.flatten()[:20].tolist()
    with caplog.at_level(logging.DEBUG):
        s.post("/v1/galleries/g1/subjects/secret-subject-name", s.body(rep))
        s.post("/v1/galleries/g1/identify", s.body(rep))
        s.post("/v1/galleries/g1/subjects/secret-subject-name/verify", s.body(rep))
    # everything the server side logged (httpx's lines are the test client's own)
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "identify" in text and "status=200" in text  # the access log is there
    assert "secret-subject-name" not in text and s.keys["g1"] not in text
    for v in values:
        assert f"{v:.6f}" not in text and repr(v) not in text
    assert len(text) < 2000


def test_threshold_sources(bundle, tmp_path):
    s = served_app(bundle, tmp_path)
    info = s.client.get("/v1/info", headers=s.headers()).json()
    assert info["threshold"] is None and "ppfr calibrate" in info["threshold_source"]
    rep = s.reps(1)
    s.post("/v1/galleries/g1/subjects/a", s.body(rep))
    assert s.post("/v1/galleries/g1/identify", s.body(rep)).json()["results"][0]["match"] is None
    # a calibration beside the bundle is picked up
    model_dir = tmp_path / "m"
    ppfr.load(bundle).save(model_dir)
    (model_dir / "calibration.toml").write_text(
        'threshold = 0.42\nfar = 0.001\ndata = "ORL training identities"\n'
    )
    app = create_app(model_dir, f"sqlite:///{tmp_path / 'other.db'}")
    assert app.state.service.threshold.value == 0.42
    assert read_calibration(model_dir)["far"] == 0.001
    (model_dir / "calibration.toml").write_text(
        'threshold = 0.42\nfar = 0.001\ndata = "x"\nserver_fingerprint = "' + "ab" * 32 + '"\n'
    )
    with pytest.raises(InputError, match="made for server model abababababab"):
        create_app(model_dir, f"sqlite:///{tmp_path / 'other.db'}")
    app = create_app(model_dir, f"sqlite:///{tmp_path / 'other.db'}", threshold=0.3)
    assert app.state.service.threshold.value == 0.3  # an explicit threshold wins
    (model_dir / "calibration.toml").write_text("threshold = 'x'")
    with pytest.raises(ppfr.CheckpointError, match="corrupt calibration"):
        read_calibration(model_dir)


def test_calibrate_scores():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 5)
    same = labels[:, None] == labels[None, :]
    scores = np.where(same, 0.8, 0.0) + rng.normal(0, 0.1, (100, 100))
    cal = calibrate_scores(scores, labels, far=1e-2)
    off = ~np.eye(100, dtype=bool)
    imp = scores[off & ~same]
    assert cal["impostor_pairs"] == imp.size == 100 * 95
    assert np.mean(imp > cal["threshold"]) <= 1e-2 == pytest.approx(cal["far_measured"], abs=1e-3)
    assert cal["tar"] > 0.9
    with pytest.raises(InputError, match="impostor pairs"):
        calibrate_scores(scores, labels, far=1e-5)


def test_unprotected_method_needs_flag(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "arcface"
    ppfr.create("arcface", backbone="ir18", backbone_width=0.125, embedding_size=64).save(path)
    db = f"sqlite:///{tmp_path / 'g.db'}"
    with pytest.raises(InputError, match="allow-unprotected"):
        create_app(path, db)
    app = create_app(path, db, allow_unprotected=True)
    assert app.state.service.model.name == "arcface"


_fuzz = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@_fuzz
@given(
    body=st.one_of(
        st.binary(max_size=300), st.builds(lambda n: b"PPFR" + bytes(n), st.integers(0, 80))
    ),
    ctype=st.sampled_from(["application/octet-stream", "image/png", "", "application/json"]),
    auth=st.sampled_from(["good", "revoked", "other", "none", "junk"]),
    path=st.sampled_from(
        [
            "/v1/galleries/g1/subjects/a",
            "/v1/galleries/g1/identify?top_k=3",
            "/v1/galleries/g1/subjects/a/verify",
            "/v1/galleries/g1/identify?top_k=-1",
            "/v1/galleries/%00/subjects/a",
            "/v1/galleries/g1/subjects/%2F",
        ]
    ),
)
def test_fuzz_endpoints_never_5xx(fuzz_app, body, ctype, auth, path):
    s = fuzz_app
    headers = {"Content-Type": ctype} if ctype else {}
    token = {"good": s.keys["g1"], "revoked": s.keys["revoked"], "other": s.keys["g2"]}
    if auth in token:
        headers["Authorization"] = f"Bearer {token[auth]}"
    elif auth == "junk":
        headers["X-API-Key"] = "ppfr_" + body[:10].hex()
    r = s.client.post(path, content=body, headers=headers)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


@pytest.fixture(scope="module")
def fuzz_app(bundle, tmp_path_factory):
    s = served_app(bundle, tmp_path_factory.mktemp("fuzz"))
    s.client = type(s.client)(s.client.app, raise_server_exceptions=False)
    return s


def test_admission_sheds_past_the_queue_and_after_the_timeout():
    """The gate: max_concurrent at work, max_queue waiting, the rest answered 503 at once."""

    from ppfr.serve.app import Admission, Unavailable

    async def scenario() -> list[str]:
        gate = Admission(max_concurrent=1, max_queue=1, queue_timeout=0.2)
        events = []
        await gate.enter()  # A at work
        waiting = asyncio.ensure_future(gate.enter())  # B queued
        await asyncio.sleep(0)
        try:
            await gate.enter()  # C: queue full
        except Unavailable as e:
            events.append(f"C shed {e.status} {e.retry_after}")
        await asyncio.sleep(0.05)
        gate.leave()  # A done: B gets the slot
        await waiting
        events.append(f"B in, running={gate.running}")
        try:
            await gate.enter()  # D waits for B, who never leaves: times out
        except Unavailable as e:
            events.append(f"D shed {e.status}")
        gate.leave()
        events.append(f"idle running={gate.running} waiting={gate.waiting} shed={gate.shed}")
        return events

    assert asyncio.run(scenario()) == [
        "C shed 503 0.2",
        "B in, running=1",
        "D shed 503",
        "idle running=0 waiting=0 shed=2",
    ]
    with pytest.raises(InputError, match="max_concurrent"):
        Admission(0, 1, 1.0)


def test_the_wait_at_the_gate_reaches_the_matcher(bundle, tmp_path, monkeypatch):
    # a matcher with queues of its own (the sharded gallery) gives a request only what is
    # left of queue_timeout: it must see how long the request waited at the gate
    from ppfr.serve import app as app_module
    from ppfr.serve.matching import Matcher

    seen: list[float] = []

    class Recording(Matcher):
        def identify(self, *args, **kwargs):
            seen.append(app_module.queued_for.get())
            return super().identify(*args, **kwargs)

    enter = app_module.Admission.enter

    async def slow_enter(self) -> None:  # as if the request queued 50 ms for a slot
        await asyncio.sleep(0.05)
        await enter(self)

    monkeypatch.setattr(app_module.Admission, "enter", slow_enter)
    s = served_app(bundle, tmp_path, matcher=Recording)
    assert s.post("/v1/galleries/g1/identify", s.body(s.reps(1))).status_code == 200
    assert len(seen) == 1 and 0.05 <= seen[0] < 30
    assert app_module.queued_for.get() == 0.0  # nothing leaks outside the request


def test_overload_is_answered_503_with_retry_after(bundle, tmp_path):
    s = served_app(bundle, tmp_path, max_concurrent=1, max_queue=0, queue_timeout=2.5)
    gate = s.client.app.state.admission
    body = s.body(s.reps(1))
    assert s.post("/v1/galleries/g1/identify", body).status_code == 200
    gate.running = 1  # as if another request held the only slot
    r = s.post("/v1/galleries/g1/identify", body)
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert "capacity" in r.json()["detail"]
    assert s.client.get("/v1/health").status_code == 200  # outside the gate
    gate.running = 0
    assert s.post("/v1/galleries/g1/identify", body).status_code == 200
