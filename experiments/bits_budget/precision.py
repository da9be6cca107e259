"""bf16 against fp32 training at equal steps: the table of README section "bf16 training at equal steps".

Each pair is one config and seed, trained once in fp32 and once with train.precision=bf16 (CPU autocast; the
log-dets, priors, KL and loss stay float32), and scored in fp32 by ``flowvae evaluate`` on all 10,000 test
images; the periodic columns are the runs' own evaluations on the first 1,000.

    python experiments/bits_budget/precision.py
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RES = HERE / "results"
BF = HERE.parent / "bounded_flow" / "results"

# (label, config, precision, eval JSON (k=1, 10,000 images), curve JSON (curve.py))
RUNS = [
    ("global_sig", "configs/fashion_mnist.yaml (9,172 steps)", "fp32",
     BF / "eval_s9172_tail2_sig.json", BF / "curves" / "s9172_tail2_sig" / "curve.json"),
    ("fm_bf16", "configs/fashion_mnist.yaml (9,172 steps)", "bf16",
     RES / "eval_fm_bf16.json", RES / "curves" / "fm_bf16" / "curve.json"),
    ("fm24k_sig (pretrained:fashion_mnist)", "configs/fashion_mnist_24k.yaml (24,000 steps)", "fp32",
     RES / "eval_fm24k_sig.json", RES / "curves" / "fm24k_sig" / "curve.json"),
    ("fm24k_bf16", "configs/fashion_mnist_24k.yaml (24,000 steps)", "bf16",
     RES / "eval_fm24k_bf16.json", RES / "curves" / "fm24k_bf16" / "curve.json"),
]


def _load(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def main() -> None:
    rows = [(label, cfg, prec, _load(ev), _load(cu)) for label, cfg, prec, ev, cu in RUNS]
    for config in dict.fromkeys(r[1] for r in rows):  # one table per config, in RUNS order
        group = [r for r in rows if r[1] == config and (r[3] or r[4])]
        if not group:
            continue
        steps = sorted({int(s) for r in group if r[4] for s in r[4]["elbo_bpd"]})
        steps = [s for s in steps if s % 2000 == 0 or s == max(steps)]
        print(f"{config}:\n")
        print("| run | precision | test elbo_bpd (10,000) | " + " | ".join(f"step {s:,}" for s in steps) + " |")
        print("|---|---|---|" + "---|" * len(steps))
        for label, _, prec, ev, cu in group:
            c = (cu or {}).get("elbo_bpd", {})
            cells = [f"{c[str(s)]:.4f}" if str(s) in c else "-" for s in steps]
            bound = f"{ev['elbo_bpd']:.4f}" if ev else "-"
            print(f"| {label} | {prec} | {bound} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
