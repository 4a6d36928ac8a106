import pytest
from _api import served_app
from typer.testing import CliRunner

from ppfr.cli import app as cli
from ppfr.errors import InputError
from ppfr.serve.auth import (
    Authenticator,
    AuthError,
    create_key,
    hash_secret,
    new_key,
    parse_key,
    token_from_headers,
    verify_secret,
)
from ppfr.serve.store import open_store


def test_key_format_and_hash():
    key_id, secret, token = new_key()
    assert token == f"ppfr_{key_id}_{secret}" and parse_key(token) == (key_id, secret)
    h1, h2 = hash_secret(secret), hash_secret(secret)
    assert h1 != h2 and h1.startswith("scrypt$")  # salted
    assert secret not in h1
    assert verify_secret(secret, h1) and verify_secret(secret, h2)
    assert not verify_secret(secret[:-1] + ("0" if secret[-1] != "0" else "1"), h1)
    assert not verify_secret(secret, "garbage") and not verify_secret(secret, "md5$x$y$z$a$b")
    for bad in ("", "ppfr_x_y", f"ppfr_{key_id}", f"xxxx_{key_id}_{secret}", token + "0"):
        with pytest.raises(AuthError):
            parse_key(bad)


def test_headers():
    assert token_from_headers({"authorization": "Bearer abc"}) == "abc"
    assert token_from_headers({"x-api-key": " abc "}) == "abc"
    for h in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}):
        with pytest.raises(AuthError):
            token_from_headers(h)


def test_authenticator(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'g.db'}") as store:
        key_id, token = create_key(store, ["a", "b"])
        auth = Authenticator(store)
        rec = auth.authenticate(token)
        assert rec.key_id == key_id and set(rec.galleries) == {"a", "b"}
        assert auth.authenticate(token).key_id == key_id  # cached path
        auth.authorize(rec, "a")
        with pytest.raises(AuthError) as e:
            auth.authorize(rec, "c")
        assert e.value.status == 403
        # a wrong secret for a known id fails even after the right one was cached
        wrong = token[:-1] + ("0" if token[-1] != "0" else "1")
        with pytest.raises(AuthError, match="invalid"):
            auth.authenticate(wrong)
        with pytest.raises(AuthError, match="unknown"):
            auth.authenticate(new_key()[2])
        store.revoke_api_key(key_id)
        with pytest.raises(AuthError, match="revoked") as e:
            auth.authenticate(token)  # revocation is seen at once despite the cache
        assert e.value.status == 401
        with pytest.raises(InputError):
            create_key(store, [])
        with pytest.raises(InputError, match="gallery name"):
            create_key(store, ["../etc"])


def test_keys_cli(tmp_path):
    db = f"sqlite:///{tmp_path / 'g.db'}"
    runner = CliRunner()
    r = runner.invoke(cli, ["keys", "create", "--gallery", "staff", "--gallery", "x", "--db", db])
    assert r.exit_code == 0, r.output
    token = r.stdout.strip().splitlines()[0]
    key_id, secret = parse_key(token)
    r = runner.invoke(cli, ["keys", "list", "--db", db])
    assert r.exit_code == 0 and key_id in r.stdout and "active" in r.stdout
    assert secret not in r.stdout
    with open_store(db) as store:
        rec = store.get_api_key(key_id)
        assert secret not in rec.secret_hash and verify_secret(secret, rec.secret_hash)
    r = runner.invoke(cli, ["keys", "revoke", key_id, "--db", db])
    assert r.exit_code == 0
    assert "revoked" in runner.invoke(cli, ["keys", "list", "--db", db]).stdout
    r = runner.invoke(cli, ["keys", "revoke", "nosuchkey", "--db", db])
    assert r.exit_code == 2 and "no API key" in r.output


def test_auth_matrix(bundle, tmp_path):
    s = served_app(bundle, tmp_path)
    c = s.client
    assert c.get("/v1/health").status_code == 200  # no key needed
    body = s.body(s.reps(1))
    ct = {"Content-Type": "application/octet-stream"}
    for path in ("/v1/info", "/v1/galleries/g1/stats", "/v1/galleries/g1/subjects"):
        assert c.get(path).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer nonsense"}).status_code == 401
        assert c.get(path, headers=s.headers("revoked")).status_code == 401
    assert c.post("/v1/galleries/g1/subjects/a", content=body, headers=ct).status_code == 401
    r = c.get("/v1/galleries/g1/stats")
    assert r.headers["www-authenticate"] == "Bearer" and "missing API key" in r.json()["detail"]
    # revoked key: 401 everywhere, with a message saying so
    r = s.post("/v1/galleries/g1/subjects/a", body, who="revoked")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    # key of g2 cannot read or change g1
    assert s.post("/v1/galleries/g1/subjects/a", body, who="g1").status_code == 200
    assert s.post("/v1/galleries/g1/subjects/b", body, who="g2").status_code == 403
    assert s.post("/v1/galleries/g1/identify", body, who="g2").status_code == 403
    assert s.post("/v1/galleries/g1/subjects/a/verify", body, who="g2").status_code == 403
    assert c.get("/v1/galleries/g1/stats", headers=s.headers("g2")).status_code == 403
    assert c.get("/v1/galleries/g1/subjects", headers=s.headers("g2")).status_code == 403
    assert c.delete("/v1/galleries/g1/subjects/a", headers=s.headers("g2")).status_code == 403
    assert c.get("/v1/galleries/g1/stats", headers=s.headers("g1")).json()["templates"] == 1
    # X-API-Key works too; a key for both galleries reaches both
    assert c.get("/v1/galleries/g2/stats", headers={"X-API-Key": s.keys["both"]}).status_code == 200
    assert c.get("/v1/galleries/g1/stats", headers=s.headers("both")).status_code == 200
    # revoking takes effect on a running server
    with open_store(s.db) as store:
        store.revoke_api_key(s.key_ids["g1"])
    assert c.get("/v1/galleries/g1/stats", headers=s.headers("g1")).status_code == 401
