"""What page faults cost: MinusFace's hot paths with and without ``ppfr.tune_allocator``.

For ``protect`` (the default client, batch 32), one stage-1 and one stage-2 MinusFace
training step (default model, batch 32, SGD) and ``embed`` (batch 32), each measured in a
fresh child process once with glibc's default allocator (``PPFR_TUNE_ALLOCATOR=0``) and once
tuned: wall time per call, user and system CPU time per call, the system share, and minor
page faults per call. Run:  python benchmarks/bench_allocator.py [--repeats 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import machine

_CHILD = r"""
import json, resource, sys, time, torch, ppfr
ppfr.tune_allocator()
torch.set_num_threads(2)
from ppfr.data.orl import load_orl

repeats = int(sys.argv[1])
data = load_orl(list(range(1, 31)))
x, y = data.faces[:32].contiguous(), torch.as_tensor(data.labels[:32])
model = ppfr.create("minusface", num_classes=30)

def measure(fn):
    fn()  # warm-up: first-touch of the working set, lazily built bases
    fn()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(repeats):
        fn()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": wall / repeats,
        "user_s": (r1.ru_utime - r0.ru_utime) / repeats,
        "sys_s": (r1.ru_stime - r0.ru_stime) / repeats,
        "faults": (r1.ru_minflt - r0.ru_minflt) / repeats,
    }

out = {}
model.eval()
with torch.inference_mode():
    out["protect (batch 32)"] = measure(lambda: model.protect(x))
    p = model.protect(x)
    out["embed (batch 32)"] = measure(lambda: model.embed(p))
for stage in model.stages():
    model.train()
    for m in stage.frozen:
        m.requires_grad_(False)
        m.eval()
    params = [q for g in stage.param_groups for q in g["params"]]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

    def step(stage=stage, opt=opt):
        loss, _ = stage.module(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out[f"training step, stage {stage.name} (batch 32)"] = measure(step)
print(json.dumps(out))
"""


def run(tuned: bool, repeats: int) -> dict:
    env = {**os.environ, "PPFR_TUNE_ALLOCATOR": "1" if tuned else "0"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=4, help="timed calls per measurement")
    args = ap.parse_args()
    print(f"machine: {machine()}; {args.repeats} timed calls each after 2 warm-ups\n")
    results = {
        label: run(tuned, args.repeats)
        for label, tuned in (("glibc default", False), ("tuned", True))
    }
    print(
        "| operation | allocator | wall per call | user CPU s | system CPU s | system share "
        "| minor faults per call |"
    )
    print("|---|---|---|---|---|---|---|")
    for op in results["tuned"]:
        for label, res in results.items():
            r = res[op]
            share = r["sys_s"] / max(r["user_s"] + r["sys_s"], 1e-9)
            wall = (
                f"{1000 * r['wall_s'] / 32:.1f} ms/face"
                if op.startswith(("protect", "embed"))
                else f"{r['wall_s']:.2f} s"
            )
            print(
                f"| {op} | {label} | {wall} | {r['user_s']:.2f} | {r['sys_s']:.2f} "
                f"| {100 * share:.0f}% | {r['faults']:,.0f} |"
            )


if __name__ == "__main__":
    main()
