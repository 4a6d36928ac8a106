"""Peak memory and CPU split of the recovery attack on a saved model (one process).

Run:  OMP_NUM_THREADS=1 /usr/bin/time -v python research/attack_memory.py \
          --model RUN/runs/split-1/dctdp/model --seed 1 [--list-and-cat]

Trains the recovery inverter (width 8, ``--epochs`` 2) on the split's 300 training faces
and reconstructs its 100 held-out faces, as the bench's recovery attack does, after
``ppfr.tune_allocator()`` as every ``ppfr`` command does. ``--list-and-cat`` swaps in the
way the inverter's input was built before (a list of batches joined by ``torch.cat``, a new
tensor every epoch), to measure what filling one buffer saves. The figures: research/log.md,
"The attacks' memory peak".
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

import ppfr
from ppfr.attacks import RecoveryAttack
from ppfr.attacks._inversion import InversionAttack
from ppfr.data.orl import load_orl, split_identities
from ppfr.experiments import presets


@torch.no_grad()
def _list_and_cat(self, model, faces, generator, out=None):
    """The inverter's input as built before: every batch kept, then joined."""
    device = getattr(model, "device", torch.device("cpu"))
    chunks = [
        self.features(model, faces[i : i + 32].to(device), generator).float().cpu()
        for i in range(0, len(faces), 32)
    ]
    return torch.cat(chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path, help="a saved bundle")
    ap.add_argument("--seed", type=int, required=True, help="the ORL split it was trained on")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--list-and-cat", action="store_true", help="the previous feature build")
    args = ap.parse_args()
    ppfr.tune_allocator()
    if args.list_and_cat:
        InversionAttack._features = _list_and_cat
    model = ppfr.load(args.model).eval()
    train_ids, test_ids = split_identities(presets.TEST_IDENTITIES, args.seed)
    aux, victims = load_orl(train_ids, aligned=True), load_orl(test_ids, aligned=True)
    attack = RecoveryAttack(width=8, epochs=args.epochs, progress=False)
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    attack.fit(model, aux.faces, seed=0)
    faces = attack.reconstruct(model, victims.faces)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    result = {
        "model": str(args.model),
        "build": "list-and-cat" if args.list_and_cat else "one buffer",
        "peak_rss_gib": r1.ru_maxrss / 2**20,  # KiB on Linux
        "seconds": time.perf_counter() - t0,
        "user_s": user,
        "system_s": system,
        "system_share": system / max(user + system, 1e-9),
        "history": attack.history,  # the same for both builds: same numbers, less memory
        "reconstruction_mean": float(faces.mean()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
