import json
import threading
import time

import numpy as np
import pytest
import torch
from _api import free_port, make_keys, random_faces, served_app, start_server, stop
from typer.testing import CliRunner

import ppfr
from ppfr.cli import app as cli
from ppfr.data.images import save_image, to_uint8
from ppfr.data.orl import orl_root
from ppfr.errors import InputError
from ppfr.serve.client import Client, ServerError


@pytest.fixture()
def sdk(bundle, tmp_path):
    s = served_app(bundle, tmp_path, threshold=0.999)
    gen = torch.Generator().manual_seed(0)
    c = Client("http://testserver", s.keys["g1"], model=bundle, align=False, http=s.client)
    c.generator = gen
    return s, c


def test_sdk_roundtrip(sdk):
    s, c = sdk
    assert ppfr.Client is Client
    assert c.health() == {"status": "ok"}
    assert c.info()["client_fingerprint"] == c.fingerprint
    faces = random_faces(4, seed=2)
    assert len(c.enroll("g1", "ann", [faces[0], faces[1]])["template_ids"]) == 2
    c.enroll("g1", "bob", [faces[2]])
    assert c.subjects("g1") == ["ann", "bob"]
    assert c.stats("g1")["templates"] == 3
    c.batch_size = 1  # two requests
    res = c.identify("g1", [faces[0], faces[3]], top_k=2)
    assert len(res) == 2 and all(len(r["candidates"]) == 2 for r in res)
    # the protection is random per call: the same face gives a different representation
    # each time, so a query is never byte-identical to what was enrolled
    assert c.protect([faces[0]]) != c.protect([faces[0]])
    v = c.verify("g1", "bob", faces[2])
    assert set(v) >= {"score", "match", "threshold"}
    assert c.delete("g1", "bob")["removed"] == 1
    with pytest.raises(ServerError) as e:
        c.delete("g1", "bob")
    assert e.value.status == 404 and "no subject" in str(e.value)


def test_sdk_errors(sdk, bundle):
    s, c = sdk
    with pytest.raises(ServerError) as e:
        c.stats("g2")
    assert e.value.status == 403 and "may not use gallery" in e.value.detail
    bad = Client("http://testserver", s.keys["revoked"], model=bundle, http=s.client)
    with pytest.raises(ServerError, match="HTTP 401: API key .* revoked"):
        bad.info()
    with pytest.raises(InputError, match="no model"):
        Client("http://testserver", s.keys["g1"], http=s.client).enroll("g1", "a", ["x.png"])
    with pytest.raises(InputError, match="aligned 112x112"):
        c.faces([np.zeros((50, 60, 3), np.uint8)])
    with pytest.raises(InputError, match="float"):
        c.faces([torch.zeros(3, 64, 64)])
    port = free_port()  # nothing listens there
    with pytest.raises(ServerError, match="cannot reach") as e:
        Client(f"http://127.0.0.1:{port}", s.keys["g1"], timeout=2).health()
    assert e.value.status == 0


def test_sdk_aligns_images(sdk, tmp_path):
    """Paths of unaligned photos are detected and aligned with YuNet before protecting."""
    s, c = sdk
    c.align = True
    src = orl_root() / "s1" / "1.pgm"  # a 92x112 photo, not aligned
    faces = c.faces([src, src])
    assert faces.shape == (2, 3, 112, 112)
    assert c.enroll("g1", "s1", [src])["template_ids"]
    blank = tmp_path / "blank.png"
    save_image(np.full((120, 100, 3), 128, np.uint8), blank)
    with pytest.raises(InputError, match="no face found"):
        c.faces([blank])


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """A real `ppfr serve` on loopback, in a subprocess."""
    tmp = tmp_path_factory.mktemp("live")
    db = f"sqlite:///{tmp / 'gallery.db'}"
    keys, _ = make_keys(db)
    port = free_port()
    proc = start_server(bundle, db, port, "--threshold", "0.999")
    yield f"http://127.0.0.1:{port}", keys, tmp
    stop(proc)


def test_parallel_clients(server, bundle):
    """8 threads x 10 requests against one live server: every answer is right."""
    url, keys, _ = server
    model = ppfr.load(bundle)
    n_threads, n_requests = 8, 10
    faces = random_faces(n_threads, seed=9)
    with torch.inference_mode():
        reps = model.protect(faces, generator=torch.Generator().manual_seed(0))
    from ppfr.serve.wire import encode_representation

    fp = model.fingerprint("client")
    errors, answers = [], []

    def worker(i: int) -> None:
        import httpx

        h = {"Authorization": f"Bearer {keys['g1']}", "Content-Type": "application/octet-stream"}
        body = encode_representation(reps[i : i + 1], fp)

        def post(http, path):  # as a client should: back off when told to (503, Retry-After)
            for _ in range(30):
                r = http.post(path, content=body, headers=h)
                if r.status_code != 503:
                    return r
                assert "retry-after" in r.headers
                time.sleep(0.2)
            return r

        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                r = post(http, f"/v1/galleries/g1/subjects/t{i}")
                assert r.status_code == 200, r.text
                for _ in range(n_requests - 1):
                    r = post(http, f"/v1/galleries/g1/subjects/t{i}/verify")
                    assert r.status_code == 200, r.text
                    answers.append(r.json()["match"])
        except Exception as e:  # collected: a failing thread must fail the test
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)
    assert answers == [True] * (n_threads * (n_requests - 1))
    with Client(url, keys["g1"]) as c:
        assert c.stats("g1")["templates"] == n_threads
        assert c.subjects("g1") == sorted(f"t{i}" for i in range(n_threads))


def test_client_cli(server, bundle, tmp_path):
    url, keys, _ = server
    faces = random_faces(3, seed=4)
    paths = []
    for i, f in enumerate(faces):
        paths.append(tmp_path / f"f{i}.png")
        save_image(to_uint8(f), paths[-1])
    common = ["--url", url, "--key", keys["both"], "--gallery", "g2"]
    m = ["--model", str(bundle), "--no-align"]
    runner = CliRunner()
    r = runner.invoke(
        cli, ["client", "enroll", *map(str, paths[:2]), "--subject", "zoe", *common, *m]
    )
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["template_ids"]) == 2
    r = runner.invoke(cli, ["client", "identify", str(paths[2]), *common, *m, "--top-k", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["candidates"][0]["subject"] == "zoe"
    r = runner.invoke(cli, ["client", "verify", str(paths[0]), "--subject", "zoe", *common, *m])
    assert r.exit_code == 0 and "score" in json.loads(r.stdout)
    r = runner.invoke(cli, ["client", "stats", *common])
    assert json.loads(r.stdout)["templates"] == 2
    r = runner.invoke(cli, ["client", "info", "--url", url, "--key", keys["g1"]])
    assert json.loads(r.stdout)["method"] == "minusface"
    r = runner.invoke(cli, ["client", "delete", "--subject", "zoe", *common])
    assert json.loads(r.stdout)["removed"] == 2
    # HTTP errors: status and the server's message, exit code 2, no traceback
    r = runner.invoke(cli, ["client", "delete", "--subject", "zoe", *common])
    assert r.exit_code == 2 and "HTTP 404" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        cli, ["client", "stats", "--url", url, "--key", keys["g1"], "--gallery", "g2"]
    )
    assert r.exit_code == 2 and "HTTP 403" in r.output


def test_sdk_backs_off_on_503_as_retry_after_says():
    import httpx

    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            return httpx.Response(
                503, json={"detail": "at capacity"}, headers={"Retry-After": "0.2"}
            )
        return httpx.Response(200, json={"templates": 3})

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://test")
    assert Client("http://test", "ppfr_x_y", http=http).stats("g") == {"templates": 3}
    assert len(calls) == 3 and calls[2] - calls[0] >= 0.2  # waited (0.5-1.5 x 0.2 s each)
    calls.clear()
    with pytest.raises(ServerError) as e:
        Client("http://test", "ppfr_x_y", http=http, retry_for=0).stats("g")
    assert e.value.status == 503 and len(calls) == 1
