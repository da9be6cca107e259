"""Sections 6 and 7's table (experiments/bounded_flow/README.md): configs/fashion_mnist.yaml as shipped
(pretrained:fashion_mnist, run shiftclamp8) against the same config with Glow's sigmoid coupling scale
(model.coupling_scale=sigmoid, run scale_sigmoid: one change, seed 0, 9,172 steps), each also scored with
its eps under a base with linear tails beyond |eps| = 2 after the fact (model.base_tail=2, same weights); and
the same config trained with those tails from the start (model.base_tail=2: runs tail2 and tail2_clean).

    python experiments/bounded_flow/scale_table.py      # after score_scale.sh (and score_tail.sh)
"""
from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
SHIPPED = "pretrained:fashion_mnist"
POSTHOC = " (base_tail=2 post hoc)"  # probe.py --base-tail 2 appends this to the model's name
ROWS = [  # (run name, label, scored post hoc too, the run's own files: spread8_<name>.json etc.)
    (SHIPPED, "shiftclamp8 = pretrained:fashion_mnist", True, "shiftclamp8"),
    ("scale_sigmoid", "scale_sigmoid", True, "scale_sigmoid"),
    ("tail2", "tail2 (tails from the start; diverged at 2,690, resumed from 2,271 with clip 10)", False, "tail2"),
    ("tail2_clean", "tail2_clean (tails from the start, one thread, clip 50 throughout)", False, "tail2_clean"),
]


def _load(name: str) -> dict:
    p = R / name
    return json.loads(p.read_text()) if p.exists() else {}


def _pick(d: dict, model: str, posthoc: bool):
    """The entry of ``d`` for ``model`` (a run is stored under its path, the shipped model under its name)."""
    for k, v in d.items():
        name = k[:-len(POSTHOC)] if k.endswith(POSTHOC) else k
        if k.endswith(POSTHOC) == posthoc and (name == model or Path(name).name == model):
            return v
    return None


def main() -> None:
    draws = {False: {}, True: _load("draws64_tail2_posthoc.json")}
    for f in ["draws64_normal.json"] + [f"draws64_{files}.json" for *_, files in ROWS[2:]]:
        draws[False].update(_load(f))
    posthoc_spread = _load("spread8_tail2_posthoc.json")
    print("| weights | eps scored under | mean test bound, 10,000 images (8 draws) | median | highest image bound | "
          "1754 over 64 draws: min..max (spread) | 480: min..max (spread) | all test images, 8 draws: median / 99% / "
          "largest spread (image) | images over 0.5 | swap (cnn / logreg) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, label, scored_posthoc, files in ROWS:
        trained_tails = model.startswith("tail2")
        for posthoc in (False, True) if scored_posthoc else (False,):
            s = _pick(posthoc_spread if posthoc else _load(f"spread8_{files}.json"), model, posthoc)
            d = _pick(draws[posthoc], model, posthoc)
            if not (s and d):
                continue
            mean = sum(s["mean_bpd_per_seed"]) / len(s["mean_bpd_per_seed"])
            med = sorted(s["median_bpd_per_seed"])[len(s["median_bpd_per_seed"]) // 2]
            worst = max(s["largest_spreads"], key=lambda k: max(s["largest_spreads"][k]) - min(s["largest_spreads"][k]))
            i1, i2 = d["images"]["1754"], d["images"]["480"]
            a = _load(f"analysis_{files}.json")
            sw = a["swap"]["global"]["to_global_class"] if a and not posthoc else None
            base = ("linear tails beyond 2 (post hoc)" if posthoc else
                    "linear tails beyond 2 (as trained)" if trained_tails else "normal (as trained)")
            print(f"| {label} | {base} | {mean:.4f} | "
                  f"{med:.4f} | {max(s['max_bpd_per_seed']):.2f} | {i1['min']:.2f}..{i1['max']:.2f} ({i1['spread']:.2f}) | "
                  f"{i2['min']:.2f}..{i2['max']:.2f} ({i2['spread']:.2f}) | {s['spread_median']:.3f} / {s['spread_p99']:.3f} / "
                  f"{s['spread_max']:.2f} ({worst}) | {s['images_spread_over_0.5']} | "
                  + (f"{sw['cnn']:.3f} / {sw['logreg']:.3f} |" if sw else "- |"))


if __name__ == "__main__":
    main()
