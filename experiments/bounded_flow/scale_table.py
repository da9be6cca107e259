"""Section 6's table (experiments/bounded_flow/README.md): configs/fashion_mnist.yaml as shipped
(pretrained:fashion_mnist, run shiftclamp8) against the same config with Glow's sigmoid coupling scale
(model.coupling_scale=sigmoid, run scale_sigmoid: one change, seed 0, 9,172 steps), each also scored with
its eps under a base with linear tails beyond |eps| = 2 after the fact (model.base_tail=2, same weights).

    python experiments/bounded_flow/scale_table.py      # after score_scale.sh
"""
from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
SHIPPED, SIGMOID = "pretrained:fashion_mnist", "scale_sigmoid"


def _load(name: str):
    p = R / name
    return json.loads(p.read_text()) if p.exists() else {}


def _pick(d: dict, model: str, tail: bool):
    """The entry of ``d`` for ``model`` (the run is stored under its path), post-hoc tail or not."""
    for k, v in d.items():
        if ((model == SHIPPED and k.startswith(SHIPPED)) or (model != SHIPPED and model in k)) and \
                ("base_tail=2" in k) == tail:
            return v
    return None


def main() -> None:
    draws = {False: _load("draws64_normal.json"), True: _load("draws64_tail2_posthoc.json")}
    spread = {(SHIPPED, False): _load("spread8_shiftclamp8.json"), (SIGMOID, False): _load("spread8_scale_sigmoid.json")}
    tail_spread = _load("spread8_tail2_posthoc.json")
    analysis = {SHIPPED: _load("analysis_shiftclamp8.json"), SIGMOID: _load("analysis_scale_sigmoid.json")}
    print("| weights | eps scored under | mean test bound, 10,000 images (8 draws) | median | highest image bound | "
          "1754 over 64 draws: min..max (spread) | 480: min..max (spread) | all test images, 8 draws: median / 99% / "
          "largest spread (image) | images over 0.5 | swap (cnn / logreg) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, label in ((SHIPPED, "shiftclamp8 = pretrained:fashion_mnist"), (SIGMOID, "scale_sigmoid")):
        for tail in (False, True):
            s = _pick(tail_spread, model, True) if tail else _pick(spread[(model, False)], model, False)
            d = _pick(draws[tail], model, tail)
            if not (s and d):
                continue
            mean = sum(s["mean_bpd_per_seed"]) / len(s["mean_bpd_per_seed"])
            med = sorted(s["median_bpd_per_seed"])[len(s["median_bpd_per_seed"]) // 2]
            worst = max(s["largest_spreads"], key=lambda k: max(s["largest_spreads"][k]) - min(s["largest_spreads"][k]))
            i1, i2 = d["images"]["1754"], d["images"]["480"]
            a = analysis[model]
            sw = a["swap"]["global"]["to_global_class"] if a and not tail else None
            print(f"| {label} | {'linear tails beyond 2 (post hoc)' if tail else 'normal (as trained)'} | {mean:.4f} | "
                  f"{med:.4f} | {max(s['max_bpd_per_seed']):.2f} | {i1['min']:.2f}..{i1['max']:.2f} ({i1['spread']:.2f}) | "
                  f"{i2['min']:.2f}..{i2['max']:.2f} ({i2['spread']:.2f}) | {s['spread_median']:.3f} / {s['spread_p99']:.3f} / "
                  f"{s['spread_max']:.2f} ({worst}) | {s['images_spread_over_0.5']} | "
                  + (f"{sw['cnn']:.3f} / {sw['logreg']:.3f} |" if sw else "- |"))


if __name__ == "__main__":
    main()
