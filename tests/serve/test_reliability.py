"""Crash safety through HTTP: SIGKILL `ppfr serve` in the middle of a burst of enrolments."""

import os
import signal
import threading
import time

import httpx
import pytest
import torch
from _api import free_port, make_keys, random_faces, start_server, stop

import ppfr
from ppfr.serve.wire import decode_representation, encode_representation

PER_SUBJECT = 2  # templates per enrolment: a half-written one would show 1


@pytest.mark.slow
def test_sigkill_mid_burst_keeps_every_acknowledged_enrolment(bundle, store_url):
    keys, _ = make_keys(store_url)
    headers = {"Authorization": f"Bearer {keys['g1']}", "Content-Type": "application/octet-stream"}
    model = ppfr.load(bundle, part="client")
    fp = model.fingerprint("client")
    gen = torch.Generator().manual_seed(0)
    bodies: dict[str, bytes] = {}
    acked: list[str] = []
    attempted: list[str] = []
    unexpected: list[str] = []

    port = free_port()
    proc = start_server(bundle, store_url, port)
    url = f"http://127.0.0.1:{port}"

    def burst() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(300):
                name = f"s{i:03d}"
                with torch.inference_mode():
                    p = model.protect(random_faces(PER_SUBJECT, seed=i), generator=gen)
                bodies[name] = encode_representation(p, fp)
                attempted.append(name)
                try:
                    r = http.post(
                        f"/v1/galleries/g1/subjects/{name}", content=bodies[name], headers=headers
                    )
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    acked.append(name)
                else:
                    unexpected.append(f"{r.status_code} {r.text}")

    t = threading.Thread(target=burst)
    t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 5 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    t.join(30)
    stop(proc)
    assert not unexpected, unexpected[:3]
    assert 5 <= len(acked) < 300, "the kill must land mid-burst"

    port = free_port()
    proc = start_server(bundle, store_url, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            auth = {"Authorization": headers["Authorization"]}
            present = http.get("/v1/galleries/g1/subjects", headers=auth).json()["subjects"]
            stats = http.get("/v1/galleries/g1/stats", headers=auth).json()
            # every acknowledged enrolment survived; anything else present was in flight
            assert set(acked) <= set(present)
            assert set(present) - set(acked) <= set(attempted[len(acked) :])
            # no half-written enrolment: each present subject has all its templates
            assert stats["templates"] == PER_SUBJECT * len(present)
            # and their stored templates and keys still match the representations sent
            for name in acked[:: max(1, len(acked) // 5)]:
                last = decode_representation(bodies[name], 1 << 30)[0][-1:]
                one = encode_representation(last, fp)
                r = http.post(
                    f"/v1/galleries/g1/subjects/{name}/verify", content=one, headers=headers
                )
                assert r.status_code == 200 and r.json()["score"] > 0.999, r.text
    finally:
        stop(proc)
