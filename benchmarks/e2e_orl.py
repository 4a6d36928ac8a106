"""End to end on ORL: a MinusFace model behind the service, clients enrolling and identifying.

Run (reusing a bundle trained with the demo recipe on split 0, e.g. by ``ppfr bench orl``):

    python benchmarks/e2e_orl.py --model /tmp/bench-orl/runs/split-0/minusface/model --out /tmp/e2e

Without ``--model`` it trains one first with
:func:`ppfr.experiments.demo.train_preset` (minusface, split ``--seed``; minutes on a CPU).

Steps:

1. split ORL with ``split_identities(10, seed)``; the model is trained on the 30 training
   identities (and must have been: ``--model`` is checked against its run's config.toml);
2. ``calibrate`` the threshold at ``--far`` on the training identities;
3. split the bundle into a client bundle and a server bundle (the server gets only
   ``server.safetensors`` and the calibration); start ``ppfr serve`` on SQLite in a
   subprocess; create a key with ``ppfr keys create``;
4. with :class:`ppfr.Client`: enroll each held-out identity from its first image, identify
   the other 9 images of each (90 queries, fresh random protection on every call);
5. the same model in process, on the same images: embed + nearest neighbour (cosine)
   without SlerpFace, and with SlerpFace (``SlerpFace.scores``);
6. the server's embed throughput (representations/s, batch 32) in process, and identify
   requests of 32 representations through HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
from _common import machine

import ppfr
from ppfr.data.orl import load_orl, split_identities
from ppfr.experiments.demo import train_preset
from ppfr.experiments.presets import TEST_IDENTITIES
from ppfr.serve.calibrate import calibrate
from ppfr.serve.wire import encode_representation
from ppfr.templates import SlerpFace

SRC = Path(__file__).resolve().parents[1] / "src"


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-c", "from ppfr.cli import app; app()", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_split(model_dir: Path, seed: int) -> None:
    cfg_path = model_dir.parent / "config.toml"
    if not cfg_path.is_file():
        print(f"note: no {cfg_path}; trusting that the model was trained on split {seed}")
        return
    cfg = tomllib.loads(cfg_path.read_text())
    data = cfg.get("data", {})
    if data.get("source") != "orl" or data.get("split_seed") != seed:
        raise SystemExit(f"{model_dir} was not trained on ORL split {seed} ({data})")
    if data.get("test_identities") != TEST_IDENTITIES:
        raise SystemExit(f"{model_dir}: trained with another number of held-out identities")


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def rank1(scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray) -> float:
    return float(np.mean(gallery_labels[scores.argmax(1)] == query_labels))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("e2e-out"))
    ap.add_argument("--model", type=Path, help="reuse a minusface bundle trained on the split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--far", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3, help="fresh protections of the queries")
    ap.add_argument("--epochs", type=float, default=1.0, help="training budget scale")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    train_ids, test_ids = split_identities(TEST_IDENTITIES, args.seed)
    t0 = time.perf_counter()
    if args.model is None:
        model, cfg, train_s = train_preset(
            "minusface",
            load_orl(train_ids, aligned=True),
            out / "runs",
            epoch_scale=args.epochs,
            seed=args.seed,
        )
        src = Path(cfg.out) / "model"
    else:
        check_split(args.model, args.seed)
        src, train_s = args.model, None
    full = out / "model"
    shutil.copytree(src, full)
    model = ppfr.load(full)
    print(f"model {model.name} (client {model.fingerprint('client')[:12]})")

    # 2. calibration on the training identities
    cal = calibrate(full, far=args.far, seed=args.seed)
    print(
        f"threshold {cal['threshold']:.4f} at FAR {args.far:g} on training identities; "
        f"held-out FAR {cal['heldout_far']:.4f}, TAR {cal['heldout_tar']:.3f}"
    )

    # 3. separate bundles, server, key
    model.save(out / "client", parts=["client"])
    model.save(out / "server", parts=["server"])
    shutil.copy(full / "calibration.toml", out / "server")
    db = f"sqlite:///{out / 'gallery.db'}"
    r = cli("keys", "create", "--gallery", "orl", "--db", db, check=True)
    key = r.stdout.strip().splitlines()[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "2"}
    log = open(out / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-c", "from ppfr.cli import app; app()", "serve", "--model",
         str(out / "server"), "--db", db, "--port", str(port), "--workers-threads", "2"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = ppfr.Client(url, key, model=out / "client", timeout=120)
        for _ in range(600):
            try:
                client.health()
                break
            except ppfr.PPFRError:
                time.sleep(0.1)
        info = client.info()
        test = load_orl(test_ids, aligned=True)
        faces, labels = test.stack(), np.asarray(test.labels)
        first = np.array([np.flatnonzero(labels == k)[0] for k in range(len(test_ids))])
        rest = np.setdiff1d(np.arange(len(labels)), first)
        names = [f"s{i}" for i in test_ids]

        # 4. through the service
        t = time.perf_counter()
        for k, i in enumerate(first):
            client.enroll("orl", names[k], [faces[i]])
        enroll_s = time.perf_counter() - t
        truth = [names[k] for k in labels[rest]]
        runs, identify_s = [], []
        for _ in range(args.repeats):  # fresh protection of every query each time
            t = time.perf_counter()
            results = client.identify("orl", list(faces[rest]), top_k=5)
            identify_s.append(time.perf_counter() - t)
            cands = [[c["subject"] for c in r["candidates"]] for r in results]
            rows = list(zip(cands, [r["match"] for r in results], truth, strict=True))
            runs.append(
                {
                    "rank1": float(np.mean([c[0] == t for c, _, t in rows])),
                    "rank5": float(np.mean([t in c for c, _, t in rows])),
                    "true_accept_rate": float(np.mean([m == t for _, m, t in rows])),
                    "false_accept_rate": float(
                        np.mean([m is not None and m != t for _, m, t in rows])
                    ),
                }
            )

        # 5. in process, same model and images
        plain, slerp = [], []
        for r in range(args.repeats):  # the same number of fresh protections as above
            gen = torch.Generator().manual_seed(args.seed + 100 * r)
            with torch.inference_mode():
                g_t = model.embed(model.protect(faces[first], generator=gen))
                q_t = model.embed(model.protect(faces[rest], generator=gen))
            plain.append(rank1((q_t @ g_t.T).numpy(), labels[rest], labels[first]))
            sf = SlerpFace.from_model(model, g_t.shape[1])
            keys = sf.draw_keys(len(g_t), generator=gen)
            s_scores = sf.scores(q_t, sf.protect(g_t, keys), keys).numpy()
            slerp.append(rank1(s_scores, labels[rest], labels[first]))

        # 6. throughput, in process and through HTTP interleaved (the machine is shared)
        server_model = ppfr.load(out / "server", part="server")
        with torch.inference_mode():
            p32 = model.protect(faces[:32], generator=gen)
        body = encode_representation(p32, model.fingerprint("client"))
        embed_t, http_t = [], []
        with torch.inference_mode():
            for _ in range(8):  # the first calls of a new model cost several times more
                server_model.embed(p32)
        for _ in range(6):
            with torch.inference_mode():
                t = time.perf_counter()
                server_model.embed(p32)
                embed_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            client._call("POST", "/v1/galleries/orl/identify", body, top_k=5)
            http_t.append(time.perf_counter() - t)
        embed_rps = 32 / float(np.median(embed_t[1:]))
        http_rps = 32 / float(np.median(http_t[1:]))
        stats = client.stats("orl")
    finally:
        server.terminate()
        server.wait(30)
        log.close()

    res = {
        "machine": machine(),
        "seed": args.seed,
        "model": str(args.model) if args.model else "trained here",
        "train_seconds": train_s,
        "method": info["method"],
        "client_fingerprint": info["client_fingerprint"],
        "bytes_per_representation": int(np.prod(info["representation_shape"]) * 4),
        "gallery": stats,
        "queries": len(rest),
        "calibration": {
            k: cal[k] for k in ("far", "threshold", "tar", "heldout_far", "heldout_tar")
        },
        "repeats": args.repeats,
        "service": {
            **{k: mean_std([r[k] for r in runs]) for k in runs[0]},
            "enroll_seconds_per_subject": enroll_s / len(first),
            "identify_seconds_per_query": float(np.median(identify_s)) / len(rest),
        },
        "in_process": {
            "rank1_plain_templates": mean_std(plain),
            "rank1_slerpface": mean_std(slerp),
        },
        "load_average_1min_at_end": os.getloadavg()[0],
        "throughput": {
            "server_embed_reps_per_s": embed_rps,
            "http_identify_reps_per_s": http_rps,
            "batch": 32,
        },
        "seconds": time.perf_counter() - t0,
    }
    (out / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
