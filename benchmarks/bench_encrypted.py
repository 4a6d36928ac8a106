"""Encrypted gallery vs plain FAISS flat vs SlerpFace: speed, size, accuracy, ISO/IEC 24745.

Run:  python benchmarks/bench_encrypted.py --sizes 10000,100000 --out /tmp/bench-encrypted
      python benchmarks/bench_encrypted.py --sizes 1000000 --skip-slerpface-above 100000
      python benchmarks/bench_encrypted.py --sizes "" --orl --iso --out /tmp/bench-encrypted

1. ``--sizes``: for each gallery size n, random unit 512-d templates (seeded), in one
   process and one thread: plain FAISS ``IndexFlatIP``, SlerpFace (``SlerpFaceIndex``,
   float32, the serving index) and the encrypted gallery (default 128-bit parameters).
   Enrolment rate (templates/s, everything the gallery needs to answer a query), identify
   p50/p99 of single queries (top-5 rows; each query a noisy copy of an enrolled template,
   so rank-1 is a sanity check), bytes per template in memory and on disk, and for the
   encrypted gallery the key holder's share (deserialise, decrypt, decode, top-k; in
   process, no HTTP).
2. ``--orl``: accuracy on ORL's 10 held-out identities (split 0) with the CPU-sized ArcFace
   of docs/templates.md (``--model DIR`` or trained here): ten-fold open-set verification
   and closed-set rank-1, raw cosine vs ternary scores, the encrypted pipeline's decrypted
   scores checked equal to the plaintext ternary ones, and how ternary scores relate to
   the float cosine (threshold units).
3. ``--iso``: unlinkability D_sys between the same faces enrolled under two key pairs,
   renewability after a re-key, and a template-inversion decoder trained on what a breach
   of the matching side yields.
Results go to ``OUT/results.json``; tables are printed as markdown.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

import ppfr  # noqa: E402
from ppfr.templates import SlerpFace, SlerpFaceIndex, unlinkability  # noqa: E402
from ppfr.templates.encrypted import (  # noqa: E402
    EncryptedConfig,
    EncryptedGallery,
    KeyHolder,
    ternarise,
)

torch.set_num_threads(1)
DIM = 512
K = 5
FAR = 1e-2


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def synthetic(n: int, seed: int) -> np.ndarray:
    out = np.empty((n, DIM), np.float32)
    for lo in range(0, n, 100_000):
        rng = np.random.default_rng([seed, lo])
        out[lo : lo + 100_000] = unit(rng.standard_normal((min(100_000, n - lo), DIM)))
    return out


def pct(times: list[float]) -> tuple[float, float]:
    a = 1000 * np.asarray(times)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------ timing
def time_size(n: int, args, workdir: Path) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    t = synthetic(n, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    which = rng.choice(n, args.queries, replace=False)
    q = unit(t[which] + 0.5 / np.sqrt(DIM) * rng.standard_normal((args.queries, DIM))).astype(
        np.float32
    )
    res: dict = {"n": n, "queries": args.queries}

    # ---- plain FAISS flat
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(DIM)
    index.add(t)
    enrol = time.perf_counter() - t0
    times, hits = [], 0
    for i in range(len(q)):
        s = time.perf_counter()
        _, ids = index.search(q[i : i + 1], K)
        times.append(time.perf_counter() - s)
        hits += int(ids[0, 0] == which[i])
    p50, p99 = pct(times)
    res["plain"] = {
        "enrol_per_s": n / enrol,
        "p50_ms": p50,
        "p99_ms": p99,
        "rank1": hits / len(q),
        "mem_bytes": index.ntotal * DIM * 4 / n,
        "disk_bytes": len(faiss.serialize_index(index)) / n,
    }
    del index
    gc.collect()
    print(f"  plain n={n}: p50 {p50:.2f} ms", flush=True)

    # ---- SlerpFace (the serving index, float32)
    if n <= args.skip_slerpface_above:
        sf = SlerpFace(DIM)
        g = torch.Generator().manual_seed(args.seed + 2)
        tt = torch.from_numpy(t)
        t0 = time.perf_counter()
        keys = sf.draw_keys(n, generator=g)
        prot = torch.cat(
            [sf.protect(tt[i : i + 50_000], keys[i : i + 50_000]) for i in range(0, n, 50_000)]
        )
        idx = SlerpFaceIndex(sf, prot, keys)
        enrol = time.perf_counter() - t0
        del prot, keys
        gc.collect()
        qt = torch.from_numpy(q)
        idx.scores(qt[:1])  # compile / warm
        times, hits = [], 0
        for i in range(len(q)):
            s = time.perf_counter()
            sc = idx.scores(qt[i : i + 1]).numpy()[0]
            top = np.argpartition(-sc, K - 1)[:K]
            top = top[np.argsort(-sc[top])]
            times.append(time.perf_counter() - s)
            hits += int(top[0] == which[i])
        p50, p99 = pct(times)
        mem = sum(b.numel() * b.element_size() for b in idx.blocks) + sum(
            s.numel() * s.element_size() for s in idx.scalars
        )
        res["slerpface"] = {
            "enrol_per_s": n / enrol,
            "p50_ms": p50,
            "p99_ms": p99,
            "rank1": hits / len(q),
            "mem_bytes": mem / n,
            # the store keeps (protected, key) float32 rows; the index is rebuilt on load
            "disk_bytes": 2 * DIM * 4,
        }
        del idx
        gc.collect()
        print(f"  slerpface n={n}: p50 {p50:.2f} ms", flush=True)

    # ---- encrypted
    cfg = EncryptedConfig(probe_nnz=args.probe_nnz, pack=args.pack)
    res["encrypted_config"] = cfg.to_dict()
    holder = KeyHolder.create(cfg, threshold=-1.0)
    gal = EncryptedGallery.for_key_holder(holder)
    bs = holder.config.block_size
    t0 = time.perf_counter()
    for lo in range(0, n, bs):
        gal.enroll(t[lo : lo + bs], [str(i) for i in range(lo, min(n, lo + bs))])
    enrol = time.perf_counter() - t0
    del t
    gc.collect()
    times, kh, match, hits = [], [], [], 0
    for i in range(len(q)):
        s = time.perf_counter()
        blocks, ids = gal.score_blocks(q[i])
        m = time.perf_counter()
        top = holder.top_k(blocks, ids, gal.n, K)
        times.append(time.perf_counter() - s)
        match.append(m - s)
        kh.append(holder.last_seconds)
        hits += int(top[0][0] == which[i])
    p50, p99 = pct(times)
    d = workdir / f"enc-{n}"
    t0 = time.perf_counter()
    disk = gal.save(d)
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    EncryptedGallery.load(d)
    load_s = time.perf_counter() - t0
    shutil.rmtree(d)
    res["encrypted"] = {
        "enrol_per_s": n / enrol,
        "p50_ms": p50,
        "p99_ms": p99,
        "matching_p50_ms": pct(match)[0],
        "keyholder_p50_ms": pct(kh)[0],
        "keyholder_p99_ms": pct(kh)[1],
        "score_bytes_per_query": sum(len(b) for b in blocks),
        "rank1": hits / len(q),
        "mem_bytes": gal.memory_bytes() / n,
        "disk_bytes": disk / n,
        "blocks": len(gal.blocks),
        "save_s": save_s,
        "load_s": load_s,
        "rss_mib": rss_mib(),
    }
    res["ratio_encrypted_to_plain_p50"] = p50 / res["plain"]["p50_ms"]
    print(f"  encrypted n={n}: p50 {p50:.2f} ms", flush=True)
    del gal
    gc.collect()
    return res


def print_timing(rows: list[dict]) -> None:
    print("\n## identification, one thread (top-5 rows of single queries)\n")
    print(
        "| n | gallery | enrol (templates/s) | identify p50 (ms) | p99 (ms) | key holder p50 (ms) "
        "| rank-1 | bytes/template memory | bytes/template disk |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name in ("plain", "slerpface", "encrypted"):
            if name not in r:
                continue
            v = r[name]
            kh = f"{v['keyholder_p50_ms']:.1f}" if "keyholder_p50_ms" in v else "-"
            print(
                f"| {r['n']:,} | {name} | {v['enrol_per_s']:,.0f} | {v['p50_ms']:.2f} | "
                f"{v['p99_ms']:.2f} | {kh} | {v['rank1']:.2f} | {v['mem_bytes']:,.0f} | "
                f"{v['disk_bytes']:,.0f} |"
            )
        ratio = r["ratio_encrypted_to_plain_p50"]
        print(f"| {r['n']:,} | encrypted / plain p50 | | {ratio:.2f}x | | | | | |")


# --------------------------------------------------------------------------------- ORL
def orl_templates(args, out: Path):
    from ppfr.attacks.template_inversion import TemplateInversionAttack
    from ppfr.data.orl import load_orl, split_identities
    from ppfr.experiments.demo import train_preset
    from ppfr.experiments.presets import TEST_IDENTITIES

    train_ids, test_ids = split_identities(TEST_IDENTITIES, args.seed)
    train_set = load_orl(train_ids, aligned=True)
    test_set = load_orl(test_ids, aligned=True)
    if args.model:
        model, origin = ppfr.load(args.model), f"loaded {args.model}"
    else:
        model, cfg, _ = train_preset(
            "arcface", train_set, out / "runs", seed=args.seed, progress=False
        )
        origin = f"trained {cfg.out}/model"
    model.eval()
    helper = TemplateInversionAttack(epochs=1)
    return model, origin, train_set, test_set, helper.templates(model, test_set.faces)


def verification(scores: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    from ppfr.eval.verification import make_open_set_pairs, verification_protocol
    from ppfr.judge import best_threshold

    a, b, same = make_open_set_pairs(labels, seed=seed)
    s = scores[b, a]  # a enrolled, b presented
    lo, hi = float(s.min()), float(s.max())
    d = (hi - s) / max(hi - lo, 1e-12)  # a distance in [0, 1]: the protocol's direction
    r = verification_protocol(d, same, thresholds=np.linspace(-1e-6, 1 + 1e-6, 4001), fars=(FAR,))
    return {
        "accuracy": r.accuracy,
        "std": r.std,
        "auc": r.auc,
        "tar_at_far": r.tar_at_far[FAR],
        "pairs": r.num_pairs,
        "thr_acc": best_threshold(s, same),
    }


def rank1(scores: np.ndarray, labels: np.ndarray) -> float:
    s = scores.astype(np.float64).copy()
    np.fill_diagonal(s, -np.inf)
    people = np.unique(labels)
    best = np.stack([s[:, labels == p].max(axis=1) for p in people], axis=1)
    return float(np.mean(people[best.argmax(axis=1)] == labels))


def ternary_matrix(t: np.ndarray, g: int, h: int) -> np.ndarray:
    """scores[q, e] = tau_h(t_q) . tau_g(t_e) / sqrt(g h)."""
    return (ternarise(t, h).astype(np.float64) @ ternarise(t, g).astype(np.float64).T) / np.sqrt(
        g * h
    )


def encrypted_matrix(t: np.ndarray, holder: KeyHolder) -> np.ndarray:
    """The same matrix through the encrypted pipeline (enrol, score blocks, decrypt).

    Evaluation only: it reads the key holder's private decode to get every score."""
    gal = EncryptedGallery.for_key_holder(holder)
    gal.enroll(t, [str(i) for i in range(len(t))])
    out = np.empty((len(t), len(t)))
    for i in range(len(t)):
        rows, s = holder._scores(*gal.score_blocks(t[i]), gal.n)
        out[i, rows] = s / holder.config.score_scale
    return out


def orl_section(args, out: Path, results: dict, ctx: dict) -> None:
    model, origin, train_set, test_set, t_test = ctx["orl"]
    t = t_test.numpy().astype(np.float64)
    labels = np.asarray(test_set.labels)
    cos = unit(t) @ unit(t).T
    cfg = EncryptedConfig()
    holder = KeyHolder.create(cfg, threshold=-1.0)
    t0 = time.perf_counter()
    enc = encrypted_matrix(t, holder)
    enc_s = time.perf_counter() - t0
    tern = ternary_matrix(t, cfg.gallery_nnz, cfg.probe_nnz)
    rows = {
        "raw templates, cosine": cos,
        f"ternary g={cfg.gallery_nnz}, h={cfg.probe_nnz}, plaintext": tern,
        f"encrypted (g={cfg.gallery_nnz}, h={cfg.probe_nnz}, decrypted)": enc,
        "ternary g=341, h=127, plaintext": ternary_matrix(t, 341, 127),
        "ternary g=341, h=341, plaintext": ternary_matrix(t, 341, 341),
        "ternary g=512 (signs), h=63, plaintext": ternary_matrix(t, 512, 63),
    }
    ver = {name: verification(s, labels, args.seed) for name, s in rows.items()}
    r1 = {name: rank1(s, labels) for name, s in rows.items()}
    iu = np.triu_indices(len(t), 1)
    rel = {
        "max_abs_diff_encrypted_vs_plaintext_ternary": float(np.abs(enc - tern).max()),
        "pearson_cosine_vs_ternary": float(np.corrcoef(cos[iu], tern[iu])[0, 1]),
        "slope_ternary_on_cosine": float(np.polyfit(cos[iu], tern[iu], 1)[0]),
        "intercept": float(np.polyfit(cos[iu], tern[iu], 1)[1]),
        "encrypted_matrix_seconds": enc_s,
    }
    results["orl"] = {"model": origin, "verification": ver, "rank1": r1, "relation": rel}
    print(f"\n## ORL held-out identities ({origin}; {len(t)} faces)\n")
    print(
        "| templates | verification accuracy (%) | AUC | TAR@FAR=1e-2 (%) | rank-1 (%) | "
        "accuracy threshold (score) |"
    )
    print("|---|---|---|---|---|---|")
    for name, v in ver.items():
        print(
            f"| {name} | {100 * v['accuracy']:.2f} ± {100 * v['std']:.2f} | {v['auc']:.4f} | "
            f"{100 * v['tar_at_far']:.1f} | {100 * r1[name]:.1f} | {v['thr_acc']:.4f} |"
        )
    print(f"\nrelation: {json.dumps(rel)}")


# --------------------------------------------------------------------------------- ISO
class _BreachView:
    """What a breach of the matching side yields per template, as a 'protection' for the
    template-inversion attack: the template's 512 coordinate ciphertexts decrypted with a
    key the attacker owns (the best any key-less party can do with them), at its slot.

    Each ``protect`` call enrols the templates under a fresh victim key pair, as a real
    deployment would have its own key; the attacker's key is fixed.
    """

    def __init__(self, cfg: EncryptedConfig) -> None:
        self.cfg = cfg
        self.attacker = KeyHolder.create(cfg, threshold=-1.0)

    def draw_keys(self, n: int, generator=None):
        return None

    def features(self, gal: EncryptedGallery) -> np.ndarray:
        be = self.attacker._backend
        slots = self.cfg.ckks.slots
        cols = []
        for ct in gal.blocks[0]:
            v = be.decrypt(be.loads(gal.backend.dumps(ct)))[:slots]
            cols.append(v)
        f = np.stack(cols, axis=1)[: gal.n]  # (n, D): template r sits in slot r (n <= S)
        return f / np.abs(f).max()

    def protect(self, t, keys=None):
        victim = KeyHolder.create(self.cfg, threshold=-1.0)
        gal = EncryptedGallery.for_key_holder(victim)
        gal.enroll(np.asarray(t, dtype=np.float64), [str(i) for i in range(len(t))])
        return torch.from_numpy(self.features(gal)).float()


def iso_section(args, out: Path, results: dict, ctx: dict) -> None:
    from ppfr.attacks.template_inversion import TemplateInversionAttack
    from ppfr.judge import get_judge

    model, origin, train_set, test_set, t_test = ctx["orl"]
    t = t_test.numpy().astype(np.float64)
    labels = np.asarray(test_set.labels)
    cfg = EncryptedConfig()
    mated = labels[:, None] == labels[None, :]
    iso: dict = {}

    # ---- unlinkability: database A and B hold the same faces under key pairs A and B
    a_key, b_key = KeyHolder.create(cfg), KeyHolder.create(cfg)
    gal_a, gal_b = EncryptedGallery.for_key_holder(a_key), EncryptedGallery.for_key_holder(b_key)
    names = [str(i) for i in range(len(t))]
    gal_a.enroll(t, names)
    gal_b.enroll(t, names)
    # the owner of key B (or a thief of it) decrypts database B; database A's ciphertexts it
    # can only "decrypt" with key B too
    view = _BreachView.__new__(_BreachView)
    view.cfg, view.attacker = cfg, b_key
    a_wrong = view.features(gal_a)
    b_true = ternarise(t, cfg.gallery_nnz).astype(np.float64)
    comps = {
        "raw templates, cosine (no protection)": unit(t) @ unit(t).T,
        "database A's ciphertexts under key B vs database B decrypted (cosine)": unit(a_wrong)
        @ unit(b_true).T,
        "database A's ciphertexts under key B vs database B's, both 'decrypted' with key B": unit(
            a_wrong
        )
        @ unit(view.features(gal_b)).T,
        "both secret keys leaked: ternary templates, cosine": unit(b_true) @ unit(b_true).T,
    }
    iso["unlinkability"] = {k: unlinkability(s[mated], s[~mated]).d_sys for k, s in comps.items()}

    # ---- renewability: re-key, then the old gallery against the new key holder
    new = KeyHolder.create(cfg, threshold=-1.0)
    refused = 0
    for i in range(len(t)):
        try:
            new.top_k(*gal_a.score_blocks(t[i]), gal_a.n, 1)
        except ppfr.errors.DataError:
            refused += 1
    # if the old key leaked as well, the old ternary templates are the person's: presented
    # as probes to the re-enrolled gallery they score like genuine comparisons
    tern_new = ternary_matrix(t, cfg.gallery_nnz, cfg.probe_nnz)
    same = mated & ~np.eye(len(t), dtype=bool)
    iso["renewability"] = {
        "old_gallery_queries_refused_by_new_key": refused / len(t),
        "leaked_old_template_vs_reenrolled_mean": float(np.diag(tern_new).mean()),
        "genuine_mean": float(tern_new[same].mean()),
        "impostor_mean": float(tern_new[~mated].mean()),
    }

    # ---- inversion on what a breach yields
    if args.inversion:
        judge = get_judge()
        inv = {}
        t0 = time.perf_counter()
        raw = TemplateInversionAttack(epochs=args.epochs, width=args.width)
        raw.fit(model, train_set.faces, seed=args.seed)
        inv["raw templates"] = raw.evaluate(
            model, test_set.faces, labels, seed=args.seed, judge=judge
        ).to_dict()
        breach = TemplateInversionAttack(_BreachView(cfg), epochs=args.epochs, width=args.width)
        breach.fit(model, train_set.faces, seed=args.seed)
        inv["encrypted: ciphertexts + public context (attacker's own key)"] = breach.evaluate(
            model, test_set.faces, labels, seed=args.seed, judge=judge
        ).to_dict()
        iso["inversion"] = inv
        iso["inversion_seconds"] = time.perf_counter() - t0
    results["iso"] = iso
    print("\n## ISO/IEC 24745 (encrypted gallery)\n")
    print(json.dumps(iso, indent=2, default=float))


#: draws of the open-set pairs per split in the splits section
PAIR_DRAWS = 5


def splits_section(args, out: Path, results: dict) -> None:
    """Verification accuracy of raw, ternary and encrypted templates on several splits.

    One draw of 900 pairs moves by about a point between scorings that differ only in
    rounding, so a 0.5-point comparison needs the mean over pair draws and splits."""
    cfg = EncryptedConfig()
    pairs = []
    for item in args.orl_splits.split(","):
        seed, _, path = item.partition("=")
        pairs.append((int(seed), path))
    names = ["raw templates, cosine"]
    names += [f"ternary g=341, h={h}, plaintext" for h in (63, 95, 127, 341)]
    names.append(f"encrypted (defaults, g={cfg.gallery_nnz}, h={cfg.probe_nnz}), decrypted")
    acc: dict[str, list[float]] = {n: [] for n in names}
    auc: dict[str, list[float]] = {n: [] for n in names}
    for seed, path in pairs:
        split_args = argparse.Namespace(**{**vars(args), "seed": seed, "model": path})
        _, _, _, test_set, t_test = orl_templates(split_args, out)
        t = t_test.numpy().astype(np.float64)
        labels = np.asarray(test_set.labels)
        scores = [unit(t) @ unit(t).T]
        scores += [ternary_matrix(t, 341, h) for h in (63, 95, 127, 341)]
        scores.append(encrypted_matrix(t, KeyHolder.create(cfg, threshold=-1.0)))
        for name, sc in zip(names, scores, strict=True):
            # five draws of the 900 pairs per split: the pair draw alone moves a scoring's
            # accuracy by about a point
            vs = [verification(sc, labels, 100 * seed + d) for d in range(PAIR_DRAWS)]
            acc[name].append(100 * float(np.mean([v["accuracy"] for v in vs])))
            auc[name].append(float(np.mean([v["auc"] for v in vs])))
        print(f"  split {seed}: " + ", ".join(f"{acc[n][-1]:.2f}" for n in names), flush=True)
    raw = np.asarray(acc[names[0]])
    results["orl_splits"] = {"models": dict(pairs), "accuracy": acc, "auc": auc}
    seeds = " / ".join(str(s) for s, _ in pairs)
    print(
        f"\n## ORL verification over splits {seeds} (ArcFace preset of each split; "
        f"mean of {PAIR_DRAWS} draws of 900 pairs per split)\n"
    )
    print(
        f"| templates | accuracy, splits {seeds} (%) | mean (%) | "
        "mean difference to raw (points) | mean AUC |"
    )
    print("|---|---|---|---|---|")
    for n in names:
        a = np.asarray(acc[n])
        print(
            f"| {n} | {' / '.join(f'{x:.2f}' for x in a)} | {a.mean():.2f} "
            f"| {(a - raw).mean():+.2f} | {np.mean(auc[n]):.4f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="gallery sizes ('' for none)")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--skip-slerpface-above", type=int, default=100_000)
    ap.add_argument(
        "--probe-nnz",
        type=int,
        default=EncryptedConfig().probe_nnz,
        help="encrypted: probe non-zeros h",
    )
    ap.add_argument("--pack", type=int, default=5, help="encrypted: templates per slot P")
    ap.add_argument("--orl", action="store_true")
    ap.add_argument("--iso", action="store_true")
    ap.add_argument("--inversion", action="store_true", help="with --iso: train decoders")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--model", default=None)
    ap.add_argument(
        "--orl-splits",
        default="",
        help="accuracy over several splits: SEED=MODEL,... (each an ArcFace bundle trained "
        "on that ORL split, e.g. ppfr bench orl --seed SEED's runs/split-SEED/arcface/model)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/bench-encrypted")
    args = ap.parse_args()
    ppfr.tune_allocator()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "args": vars(args), "threads": 1}
    omp = os.environ.get("OMP_NUM_THREADS")
    print(f"# encrypted gallery ({machine()}, 1 thread, OMP_NUM_THREADS={omp})\n")
    rows = []
    with tempfile.TemporaryDirectory(dir=out) as work:
        for n in [int(x) for x in args.sizes.split(",") if x.strip()]:
            rows.append(time_size(n, args, Path(work)))
            results["timing"] = rows
            (out / "results.json").write_text(json.dumps(results, indent=2))
    if rows:
        print_timing(rows)
    ctx: dict = {}
    if args.orl or args.iso:
        ctx["orl"] = orl_templates(args, out)
    if args.orl:
        orl_section(args, out, results, ctx)
    if args.iso:
        iso_section(args, out, results, ctx)
    if args.orl_splits:
        splits_section(args, out, results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
