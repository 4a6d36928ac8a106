"""The accuracy-privacy frontier over three ORL splits, from bench runs that did not all finish.

``ppfr bench merge`` averages complete runs (``bench.json``). Two of the runs behind the
three-split table were killed by the out-of-memory killer during DCTDP's attacks, after
ArcFace, MinusFace and PartialFace had been trained, scored and attacked; their figures
survive in the bench's log lines (one per method, written as each finishes), and their
recovery rank-1 (not in the log line) comes from rerunning the recovery attack on the saved
models (``research/demo_attacks.py --no-identity``, the same seeded attack, whose leakage
must then equal the log's). This script reads all of them, prints the per-split values and
mean ± std, and draws the frontier (``ppfr.experiments.plots.write_frontier``).

Run:  python research/frontier_3split.py --bench docs/bench-orl-all/bench.json ... \
          --log 1=docs/bench-orl-3split/seed1.log --rescore 1:minusface=... --out DIR
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from ppfr.experiments.plots import write_frontier

#: a bench log line: "  <method>: accuracy A ± S % (...), AUC X, trained in T s; <attacks>"
LINE = re.compile(
    r"^\s+(?P<m>[\w-]+): accuracy (?P<acc>[\d.]+) ± [\d.]+ % .*?AUC (?P<auc>[\d.]+).*?"
    r"recovery SSIM (?P<rssim>[\d.]+), leakage (?P<rleak>[\d.]+) %; "
    r"linkage AUC (?P<lauc>[\d.]+), rank-1 (?P<lr1>[\d.]+) %; "
    r"identity-guided leakage (?P<ileak>[\d.]+) %, rank-1 (?P<ir1>[\d.]+) %"
)
FIGURES = ("accuracy", "recovery_leakage", "recovery_rank1", "linkage_auc", "identity_rank1")


def from_log(path: Path) -> dict[str, dict[str, float]]:
    out = {}
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        if m:
            out[m["m"]] = {
                "accuracy": float(m["acc"]) / 100,
                "recovery_leakage": float(m["rleak"]) / 100,
                "linkage_auc": float(m["lauc"]),
                "identity_rank1": float(m["ir1"]) / 100,
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", nargs="*", type=Path, default=[], help="complete bench.json files")
    ap.add_argument("--log", nargs="*", default=[], help="SEED=bench log of a killed run")
    ap.add_argument(
        "--rescore", nargs="*", default=[], help="SEED:METHOD=demo_attacks.py --json output"
    )
    ap.add_argument("--methods", required=True, help="comma-separated, each on every split")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    methods = args.methods.split(",")
    per: dict[int, dict[str, dict[str, float]]] = {}
    source: dict[str, str] = {}
    for path in args.bench:
        for split in json.loads(path.read_text())["splits"]:
            for m, f in split["methods"].items():
                if m in per.setdefault(split["seed"], {}):
                    continue  # the first file's figures for a seed win (as bench merge)
                per[split["seed"]][m] = {k: f.get(k) for k in FIGURES}
                source[f"{split['seed']}:{m}"] = str(path)
    for item in args.log:
        seed, path = item.split("=", 1)
        for m, f in from_log(Path(path)).items():
            per.setdefault(int(seed), {}).setdefault(m, f)
            source.setdefault(f"{seed}:{m}", path)
    for item in args.rescore:
        key, path = item.split("=", 1)
        seed, m = key.split(":")
        rec = json.loads(Path(path).read_text())["recovery"]
        fig = per[int(seed)][m]
        logged = fig.get("recovery_leakage")
        if logged is not None and abs(round(100 * rec["leakage"], 1) - 100 * logged) > 0.051:
            raise SystemExit(f"{key}: rerun leakage {rec['leakage']} != logged {logged}")
        fig["recovery_rank1"] = rec["rank1"]
    seeds = sorted(per)
    results = {"settings": {"test_identities": 10, "split_seeds": seeds}, "methods": {}}
    for m in methods:
        row = {}
        for k in FIGURES:
            vals = [per[s][m].get(k) for s in seeds]
            if any(v is None for v in vals):
                raise SystemExit(f"{m}: {k} missing on a split ({vals})")
            row[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}
        results["methods"][m] = row
        cells = "  ".join(
            f"{k} {' / '.join(f'{v:.4f}' for v in row[k]['values'])} "
            f"(mean {row[k]['mean']:.4f} ± {row[k]['std']:.4f})"
            for k in FIGURES
        )
        print(f"{m}: {cells}")
    args.out.mkdir(parents=True, exist_ok=True)
    results["sources"] = source
    (args.out / "frontier.json").write_text(json.dumps(results, indent=2) + "\n")
    write_frontier(results, args.out / "frontier.png")


if __name__ == "__main__":
    main()
