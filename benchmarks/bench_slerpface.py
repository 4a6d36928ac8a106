"""SlerpFace on ORL: accuracy cost and the ISO/IEC 24745 properties (docs/templates.md).

Run:  python benchmarks/bench_slerpface.py --out /tmp/bench-slerpface

1. A CPU-sized ArcFace (the demo preset) on ORL's 30 training identities of split ``--seed``
   (or ``--model DIR``; or ``demo-out/runs/arcface/model`` when present); templates of the
   10 held-out identities are ``model.embed(model.protect(x))``.
2. (a) verification, open-set pairs of the held-out identities (ten-fold protocol): raw
   templates vs SlerpFace (enrolled protected template, raw query), for a few settings;
   (b) renewability: a template renewed under a new key vs the old protected template, at
   the thresholds calibrated in (a); (c) unlinkability D_sys (Gomez-Barrero et al. 2018) of
   two databases protecting the same faces under independent keys; (d) template inversion:
   a decoder trained on the training identities, against held-out raw / protected templates.
3. ``--storage``: the serving index (``SlerpFaceIndex``) in float32 and in float16 storage,
   on the held-out identities: verification as in (a) and closed-set rank-1 (every face
   queried against all the others, best template per person), over ``--rounds`` key draws;
   with ``--storage-only`` nothing else runs.
Results go to ``OUT/results.json`` and are printed as markdown.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine

import ppfr
from ppfr.attacks.metrics import psnr, ssim
from ppfr.attacks.template_inversion import TemplateInversionAttack
from ppfr.data.orl import load_orl, split_identities
from ppfr.eval.verification import make_open_set_pairs, threshold_at_far, verification_protocol
from ppfr.experiments.demo import train_preset
from ppfr.experiments.presets import TEST_IDENTITIES
from ppfr.judge import best_threshold, get_judge
from ppfr.templates import (
    SlerpFace,
    SlerpFaceConfig,
    SlerpFaceIndex,
    group_weights_from_templates,
    unlinkability,
)

torch.set_num_threads(1)
FAR = 1e-2


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def get_model(args, train_set, out: Path):
    if args.model:
        return ppfr.load(args.model), f"loaded {args.model}", 0.0
    demo = Path("demo-out/runs/arcface/model")
    if demo.exists() and args.seed == 0:
        return ppfr.load(demo), f"loaded {demo}", 0.0
    model, cfg, secs = train_preset(
        "arcface", train_set, out / "runs", seed=args.seed, progress=False
    )
    return model.eval(), f"trained {cfg.out}/model", secs


def verification(scores: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """Open-set pairs; ``scores[q, e]`` = query q against enrolled e (higher = same)."""
    a, b, same = make_open_set_pairs(labels, seed=seed)
    s = scores[b, a]  # a enrolled, b presented
    d = np.clip(2.0 - 2.0 * s, 0.0, 4.0)  # the protocol's distance scale for unit vectors
    grid = np.linspace(d.min() - 1e-6, d.max() + 1e-6, 4001)
    r = verification_protocol(d, same, thresholds=grid, fars=(FAR,))
    # every ordered impostor pair of the full matrix, for a FAR threshold on more pairs
    diff = labels[:, None] != labels[None, :]
    t_far = threshold_at_far(2.0 - 2.0 * scores[diff], np.zeros(diff.sum(), bool), FAR)
    return {
        "accuracy": r.accuracy,
        "std": r.std,
        "auc": r.auc,
        "tar_at_far": r.tar_at_far[FAR],
        "pairs": r.num_pairs,
        # thresholds in score units (accept when score >= threshold)
        "thr_acc": best_threshold(s, same),
        "thr_far": 1.0 - t_far / 2.0 if t_far is not None else None,
    }


def renewability(sf: SlerpFace, t: torch.Tensor, labels, thr: dict, gen) -> dict:
    """Each face enrolled under key k1 (old record), then renewed under k2 (new record)."""
    k1, k2 = sf.draw_keys(len(t), gen), sf.draw_keys(len(t), gen)
    p1, p2 = sf.protect(t, k1), sf.protect(t, k2)
    # the stolen old template presented to the renewed record (the system's comparator)
    old_vs_new = sf.scores(unit(p1), p2, k2).diag().numpy()
    # the renewed template presented to the old record
    new_vs_old = sf.scores(unit(p2), p1, k1).diag().numpy()
    # context: genuine queries (other images of the person) against the renewed record
    s = sf.scores(t, p2, k2).numpy()
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    out = {}
    for name, th in thr.items():
        out[name] = {
            "threshold": th,
            "old_matches_new": float(np.mean(old_vs_new >= th)),
            "new_matches_old": float(np.mean(new_vs_old >= th)),
            "genuine_matches_new": float(np.mean(s[same] >= th)),
        }
    out["old_vs_new_mean"] = float(old_vs_new.mean())
    out["impostor_mean"] = float(s[labels[:, None] != labels[None, :]].mean())
    out["genuine_mean"] = float(s[same].mean())
    return out


def key_residual(sf: SlerpFace, p: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """What an adversary holding the key can keep of ``p``: its part orthogonal to the key.

    Per group, on the kept entries, remove the projection of ``p_g`` on ``k_g``; the rest
    is the template's contribution (module docstring of ppfr.templates.slerpface).
    """
    n = len(p)
    pg = p.view(n, sf.num_groups, sf.group_size)
    kg = k.view(n, sf.num_groups, sf.group_size) * (pg != 0)
    kg = kg / kg.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r = pg - (pg * kg).sum(-1, keepdim=True) * kg
    return unit(r.reshape(n, -1))


def linkage(sf: SlerpFace, t: torch.Tensor, labels, gen) -> dict:
    """D_sys between two databases holding the same faces under independent keys."""
    k1, k2 = sf.draw_keys(len(t), gen), sf.draw_keys(len(t), gen)
    p1, p2 = sf.protect(t, k1), sf.protect(t, k2)
    mated = labels[:, None] == labels[None, :]  # (i in db1, j in db2), i == j included
    comparators = {
        "raw templates, cosine (no protection)": (unit(t) @ unit(t).T).numpy(),
        "protected, cosine (no keys)": (unit(p1) @ unit(p2).T).numpy(),
        "protected, SlerpFace score with db2's keys": sf.scores(unit(p1), p2, k2).numpy(),
        "protected, key-residual cosine (both key tables)": (
            key_residual(sf, p1, k1) @ key_residual(sf, p2, k2).T
        ).numpy(),
    }
    return {name: unlinkability(s[mated], s[~mated]).d_sys for name, s in comparators.items()}


def rank1(scores: np.ndarray, labels: np.ndarray) -> float:
    """Closed-set rank-1: each face against every other, best score per person.

    ``scores[q, e]`` = query q against enrolled e; a face never matches itself.
    """
    s = scores.astype(np.float64).copy()
    np.fill_diagonal(s, -np.inf)
    people = np.unique(labels)
    best = np.stack([s[:, labels == p].max(axis=1) for p in people], axis=1)
    return float(np.mean(people[best.argmax(axis=1)] == labels))


def storage(sf: SlerpFace, t: torch.Tensor, labels: np.ndarray, args) -> dict:
    """Verification and rank-1 through the serving index, float32 vs float16 storage."""
    gen = torch.Generator().manual_seed(args.seed + 3)
    out: dict = {"float32": [], "float16": []}
    for _ in range(args.rounds):
        keys = sf.draw_keys(len(t), gen)
        p = sf.protect(t, keys)
        for name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
            s = SlerpFaceIndex(sf, p, keys, dtype=dtype).scores(t).numpy()
            v = verification(s, labels, args.seed)
            out[name].append(
                {
                    "accuracy": v["accuracy"],
                    "tar_at_far": v["tar_at_far"],
                    "rank1": rank1(s, labels),
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/bench-slerpface")
    ap.add_argument("--model", default=None, help="ArcFace bundle directory (else train one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="independent key draws for (a)-(c)")
    ap.add_argument("--epochs", type=int, default=20, help="template decoder epochs")
    ap.add_argument("--width", type=int, default=16, help="template decoder width")
    ap.add_argument("--storage", action="store_true", help="float32 vs float16 index (3.)")
    ap.add_argument("--storage-only", action="store_true", help="run only 3.")
    args = ap.parse_args()
    ppfr.tune_allocator()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    train_ids, test_ids = split_identities(TEST_IDENTITIES, args.seed)
    train_set = load_orl(train_ids, aligned=True)
    test_set = load_orl(test_ids, aligned=True)
    model, origin, train_s = get_model(args, train_set, out)
    labels = np.asarray(test_set.labels)
    attack = TemplateInversionAttack(epochs=1)  # only its template helper for now
    t_test = attack.templates(model, test_set.faces)
    t_train = attack.templates(model, train_set.faces)
    dim = t_test.shape[1]
    print(f"# SlerpFace on ORL ({machine()}, 1 thread)\n")
    print(f"model: {origin}; templates {dim}-d; held-out identities {test_ids}\n")

    if args.storage or args.storage_only:
        sf0 = SlerpFace(dim)
        st = storage(sf0, t_test, labels, args)
        raw_s = (unit(t_test) @ unit(t_test).T).numpy()
        raw_v = verification(raw_s, labels, args.seed)
        print(
            f"## index storage: float32 vs float16 (default setting, held-out identities, "
            f"mean ± std over {args.rounds} key draws)\n"
        )
        print(f"| templates | verification accuracy (%) | TAR@FAR={FAR:g} (%) | rank-1 (%) |")
        print("|---|---|---|---|")
        print(
            f"| raw templates (cosine) | {100 * raw_v['accuracy']:.2f} "
            f"| {100 * raw_v['tar_at_far']:.1f} | {100 * rank1(raw_s, labels):.1f} |"
        )
        for name, runs in st.items():
            acc = 100 * np.array([r["accuracy"] for r in runs])
            tar = 100 * np.array([r["tar_at_far"] for r in runs], dtype=float)
            r1 = 100 * np.array([r["rank1"] for r in runs])
            print(
                f"| SlerpFace, {name} index | {acc.mean():.2f} ± {acc.std():.2f} "
                f"| {tar.mean():.1f} ± {tar.std():.1f} | {r1.mean():.1f} ± {r1.std():.1f} |"
            )
        diff = {
            k: float(np.mean([100 * (h[k] - f[k]) for f, h in zip(*st.values(), strict=True)]))
            for k in ("accuracy", "rank1")
        }
        print(
            f"\nfloat16 - float32, same keys (points): verification {diff['accuracy']:+.2f}, "
            f"rank-1 {diff['rank1']:+.2f}\n"
        )
        if args.storage_only:
            out_json = {"machine": machine(), "model": origin, "storage": st, "diff": diff}
            (out / "storage.json").write_text(json.dumps(out_json, indent=2))
            return

    learned = group_weights_from_templates(t_train, torch.as_tensor(train_set.labels), 16)
    settings = {
        "uniform, drop 0.5 (default)": SlerpFace(dim),
        "uniform, drop 0": SlerpFace(dim, SlerpFaceConfig(drop=0.0)),
        "uniform, drop 0.75": SlerpFace(dim, SlerpFaceConfig(drop=0.75)),
        "learned weights, drop 0.5": SlerpFace(dim, weights=learned),
    }
    results: dict = {
        "machine": machine(),
        "model": origin,
        "model_train_seconds": train_s,
        "test_identities": test_ids,
        "dim": dim,
        "learned_weights": learned.tolist(),
    }

    # ---- (a) verification
    raw = verification((unit(t_test) @ unit(t_test).T).numpy(), labels, args.seed)
    ver = {"raw templates": {k: [v] for k, v in raw.items()}}
    for name, sf in settings.items():
        gen = torch.Generator().manual_seed(args.seed)
        runs = []
        for _ in range(args.rounds):
            keys = sf.draw_keys(len(t_test), gen)
            runs.append(
                verification(
                    sf.scores(t_test, sf.protect(t_test, keys), keys).numpy(), labels, args.seed
                )
            )
        ver[name] = {k: [r[k] for r in runs] for k in runs[0]}
    results["verification"] = ver
    print(
        f"## (a) verification, held-out identities ({raw['pairs']} pairs, ten-fold; "
        f"protected: mean ± std over {args.rounds} key draws)\n"
    )
    print(f"| templates | accuracy (%) | AUC | TAR@FAR={FAR:g} (%) | threshold (score) |")
    print("|---|---|---|---|---|")
    for name, v in ver.items():
        acc = 100 * np.array(v["accuracy"])
        tar = 100 * np.array(v["tar_at_far"], dtype=float)
        print(
            f"| {name} | {acc.mean():.2f} ± {acc.std():.2f} | {np.mean(v['auc']):.4f} | "
            f"{tar.mean():.1f} ± {tar.std():.1f} | {np.mean(v['thr_acc']):.4f} |"
        )

    # ---- (b) renewability and (c) unlinkability, default setting
    sf = settings["uniform, drop 0.5 (default)"]
    thr = {
        "accuracy threshold": float(np.mean(ver["uniform, drop 0.5 (default)"]["thr_acc"])),
        f"FAR {FAR:g} threshold": float(np.mean(ver["uniform, drop 0.5 (default)"]["thr_far"])),
    }
    gen = torch.Generator().manual_seed(args.seed + 1)
    ren = [renewability(sf, t_test, labels, thr, gen) for _ in range(args.rounds)]
    results["renewability"] = ren
    print(
        f"\n## (b) renewability (default setting, {len(t_test)} faces x {args.rounds} key pairs)\n"
    )
    print(
        "| threshold | score | stolen old template matches renewed record (%) | "
        "renewed template matches old record (%) | genuine queries match renewed record (%) |"
    )
    print("|---|---|---|---|---|")
    for name, th in thr.items():
        o = 100 * np.array([r[name]["old_matches_new"] for r in ren])
        n_ = 100 * np.array([r[name]["new_matches_old"] for r in ren])
        g = 100 * np.array([r[name]["genuine_matches_new"] for r in ren])
        print(f"| {name} | {th:.4f} | {o.mean():.2f} | {n_.mean():.2f} | {g.mean():.1f} |")
    print(
        f"\nmean scores: stolen old vs renewed {np.mean([r['old_vs_new_mean'] for r in ren]):.4f},"
        f" impostor {np.mean([r['impostor_mean'] for r in ren]):.4f}, "
        f"genuine {np.mean([r['genuine_mean'] for r in ren]):.4f}"
    )

    gen = torch.Generator().manual_seed(args.seed + 2)
    link = {}
    for name, s in settings.items():
        draws = [linkage(s, t_test, labels, gen) for _ in range(args.rounds)]
        link[name] = {k: [d[k] for d in draws] for k in draws[0]}
    results["unlinkability"] = link
    print(
        "\n## (c) unlinkability D_sys (0 = unlinkable, 1 = fully linkable; "
        f"mean ± std over {args.rounds} key draws)\n"
    )
    comps = list(next(iter(link.values())))
    print("| setting | " + " | ".join(comps) + " |")
    print("|---|" + "---|" * len(comps))
    for name, v in link.items():
        cells = [f"{np.mean(v[c]):.3f} ± {np.std(v[c]):.3f}" for c in comps]
        print(f"| {name} | " + " | ".join(cells) + " |")

    # ---- (d) template inversion
    judge = get_judge()
    inv = {}
    t0 = time.perf_counter()
    plain = TemplateInversionAttack(epochs=args.epochs, width=args.width)
    plain.fit(model, train_set.faces, seed=args.seed)
    inv["raw templates (decoder trained on raw)"] = plain.evaluate(
        model, test_set.faces, labels, seed=args.seed, judge=judge
    ).to_dict()
    naive = TemplateInversionAttack(sf, epochs=args.epochs, width=args.width)
    naive.decoder = plain.decoder
    inv["protected (decoder trained on raw)"] = naive.evaluate(
        model, test_set.faces, labels, seed=args.seed, judge=judge
    ).to_dict()
    adaptive = TemplateInversionAttack(sf, epochs=args.epochs, width=args.width)
    adaptive.fit(model, train_set.faces, seed=args.seed)
    inv["protected (decoder trained on protected, own keys)"] = adaptive.evaluate(
        model, test_set.faces, labels, seed=args.seed, judge=judge
    ).to_dict()
    inv_s = time.perf_counter() - t0
    # reference: an attacker who knows nothing of the victim shows the mean auxiliary face
    mean_face = ((train_set.faces.mean(0, keepdim=True) + 1) / 2).expand_as(test_set.faces)
    originals = (test_set.faces + 1) / 2
    e_orig = judge.embed(test_set.faces, value_range=(-1.0, 1.0))
    e_mean = judge.embed(mean_face, value_range=(0.0, 1.0))
    first = np.unique(labels, return_index=True)[1]
    probe = np.setdiff1d(np.arange(len(labels)), first)
    inv["no information (mean training face for every victim)"] = {
        "ssim": ssim(mean_face, originals),
        "psnr": psnr(mean_face, originals),
        "leakage": judge.leakage(e_mean, e_orig, labels, seed=args.seed),
        "rank1": judge.rank1(e_mean[probe], labels[probe], e_orig[first], labels[first]),
    }
    results["inversion"] = inv
    results["inversion_train_l1"] = {"raw": plain.losses, "protected": adaptive.losses}
    print(
        f"\n## (d) template inversion ({args.epochs} epochs, width {args.width}, trained on "
        f"{len(train_set)} training faces + mirrors; {len(test_set)} held-out victims)\n"
    )
    print("| stored templates (attacker) | SSIM | PSNR (dB) | identity leakage | rank-1 |")
    print("|---|---|---|---|---|")
    for name, r in inv.items():
        print(
            f"| {name} | {r['ssim']:.3f} | {r['psnr']:.2f} | {r['leakage']:.3f} | "
            f"{r['rank1']:.3f} |"
        )
    print(f"\nfinal training L1: raw {plain.losses[-1]:.4f}, protected {adaptive.losses[-1]:.4f}")

    # a picture of the reconstructions: originals, from raw, from protected (adaptive)
    try:
        from PIL import Image

        pick = np.unique(labels, return_index=True)[1][:8]
        g = torch.Generator().manual_seed(99)
        rows = [
            (test_set.faces[pick] + 1) / 2,
            plain.reconstruct(t_test[pick]),
            adaptive.reconstruct(sf.protect(t_test[pick], sf.draw_keys(len(pick), g))),
        ]
        grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
        img = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(img).save(out / "inversion.png")
    except ImportError:
        pass

    total = time.perf_counter() - t_start
    results["seconds"] = {"total": total, "inversion": inv_s}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(
        f"\ntotal {total:.0f} s (model training {train_s:.0f} s, inversion {inv_s:.0f} s); "
        f"results in {out / 'results.json'}"
    )


if __name__ == "__main__":
    main()
