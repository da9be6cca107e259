"""The tables of experiments/hierarchy_full/README.md from the result files that score.sh and curve.py write.

    python experiments/hierarchy_full/table.py > experiments/hierarchy_full/results/results.md
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GLOBAL = HERE.parent / "bounded_flow" / "results"  # the global hybrid of the same recipe and steps
RUNS = {"global": "global code only (pretrained:fashion_mnist until 2026-12-03: tanh coupling scale, normal base, clip 50)",
        "global_sig": "global code only, today's recipe (pretrained:fashion_mnist before the 24,000-step run: sigmoid coupling scale, tails beyond 2, clip 10)",
        "global_sig_s1": "global_sig's config, seed 1 (train.seed=1): the spread between training runs",
        "global_sig_s2": "global_sig's config, seed 2 (train.seed=2): a third training run",
        "global_warm": "global_sig with the level runs' KL warm-up over 2,000 steps (loss.kl_warmup_steps=2000); stuck at step 1,476",
        "global_warm_s1": "global_warm, seed 1: one change from global_sig_s1",
        "hier_fb": "+ z_l per level, free bits, KL warm-up",
        "hier_code": "hier_fb, split priors read the codes alone",
        "hier_c1": "hier_fb with one channel per level code (z_0 196, z_1 49 dims)",
        "hier_c1_enc64": "hier_c1 with a 64-wide encoder (model.encoder_width=64, from 32)",
        "hier_c1_staged": "hier_c1 with the KL warmed up coarse first (loss.kl_warmup_order=coarse_first)",
        "hier_c1_staggered": "hier_c1 with level code l warmed up over 2,000 (l + 1) / 3 steps "
                             "(loss.kl_warmup_order=staggered; clip 10 from step 2,627)",
        "levels_sig": "hier_c1 on today's recipe (sigmoid coupling scale, tails beyond 2, clip 10)",
        "ladder_c1": "hier_c1 with a ladder posterior (model.hier_posterior=ladder; stopped at step 2,262)",
        "ladder_sig": "levels_sig with a ladder posterior (model.hier_posterior=ladder)",
        "ladder_floor2": "ladder_sig with each top-down prior's log-sigma floored at -2 (model.hier_prior_min_log_sigma=-2)",
        "ladder_floor": "ladder_sig with each top-down prior's log-sigma floored at -1 (model.hier_prior_min_log_sigma=-1)",
        "ladder_floor_s1": "ladder_floor's config, seed 1 (train.seed=1): the ladder against global_sig_s1 at one seed",
        "ladder_floor_s2": "ladder_floor's config, seed 2 (train.seed=2): the ladder against global_sig_s2 at one seed",
        "ladder_nofb": "ladder_sig without free nats on the level codes (loss.level_free_bits=0)",
        "ladder_floor_nofb": "ladder_floor without free nats on the level codes (loss.level_free_bits=0)",
        "hier_small": "the first weights shipped as pretrained:fashion_mnist_hierarchical (2 x 2 x 32 flow; mechanism only)"}


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


BOUNDS = ("eval_k32", "eval_k32_first1000", "eval_k128_first1000")  # evaluate --k K [--limit 1000], README's last section


def bounds(run: str) -> dict:
    return {k: _load(RESULTS / run / f"{k}.json") for k in BOUNDS}


def files(run: str) -> dict:
    if run == "global":
        return {"eval": _load(GLOBAL / "eval_shiftclamp8.json"), "analysis": _load(GLOBAL / "analysis_shiftclamp8.json"),
                "curve": _load(RESULTS / "global" / "curve.json"), **bounds("global")}
    if run == "global_sig":  # experiments/bounded_flow, section 9 (run s9172_tail2_sig)
        return {"eval": _load(GLOBAL / "eval_s9172_tail2_sig.json"), "analysis": _load(GLOBAL / "analysis_s9172_tail2_sig.json"),
                "curve": _load(GLOBAL / "curves" / "s9172_tail2_sig" / "curve.json"),
                **bounds("global_sig")}
    d = RESULTS / run
    return {**{k: _load(d / f"{k}.json") for k in ("eval", "analysis", "mechanism", "curve")}, **bounds(run)}


def _cell(c: dict, key: str, s: int, fmt: str) -> str:
    v = c.get(key, {}).get(str(s))
    return "-" if v is None else ("inf" if v == float("inf") or v > 1e6 else format(v, fmt))


def curve_table(data: dict) -> list[str]:
    steps = sorted({int(s) for f in data.values() if f["curve"] for s in f["curve"].get("elbo_bpd", {})})
    steps = [s for s in steps if s % 2000 == 0 or s == max(steps)]
    rows = ["| run | quantity | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for run, f in data.items():
        c = f["curve"]
        if not c:
            continue
        for key, what, fmt in (("elbo_bpd", "elbo_bpd", ".4f"), ("kl_level0_nats", "KL of z_0, nats", ".1f"),
                               ("kl_level1_nats", "KL of z_1, nats", ".1f"), ("kl_global_nats", "KL of z, nats", ".1f"),
                               ("active_units_level0", "active units of z_0", ".0f"),
                               ("active_units_level1", "active units of z_1", ".0f"),
                               ("active_units", "active units of z (of 64)", ".0f")):
            if key in c:
                rows.append(f"| {run} | {what} | " + " | ".join(_cell(c, key, s, fmt) for s in steps) + " |")
        if "kl_nats" in c and "kl_global_nats" not in c:  # a global run: its only code is z
            rows.append(f"| {run} | KL of z, nats | " + " | ".join(_cell(c, "kl_nats", s, ".1f") for s in steps) + " |")
    return rows


def early_table(data: dict, steps=(100, 300, 500, 1000, 1400, 1500, 2000)) -> list[str]:
    """The training batches' KL (train/kl_nats, all codes, at the step's KL weight) and bound early in training,
    for the runs whose curve.json keeps them (curve.py --train-every)."""
    return _train_rows({run: (f["curve"] or {}).get("train") for run, f in data.items()}, steps,
                       (("kl_nats", "KL, nats (training batch)", ".1f"), ("elbo_bpd", "elbo_bpd (training batch)", ".3f"),
                        ("skipped_steps", "skipped steps so far", ".0f")))


def _train_rows(train: dict, steps, quantities) -> list[str]:
    """A table of training scalars (curve.json's "train", by run) at the given steps, one row per quantity."""
    rows = ["| run | quantity | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for run, t in train.items():
        if t:
            rows += [f"| {run} | {what} | " + " | ".join(_cell(t, key, s, fmt) for s in steps) + " |"
                     for key, what, fmt in quantities]
    return rows


def final_table(data: dict) -> list[str]:
    rows = ["| run | what | step | test elbo_bpd (10,000) | active units z / z_0 / z_1 | KL nats z / z_0 / z_1 | "
            "resample class change z / z_0 / z_1 (cnn) | swap → B, whole code (cnn / logreg) |", "|---|---|---|---|---|---|---|---|"]
    for run, f in data.items():
        e, a = f["eval"], f["analysis"]
        if not (e and a):
            continue
        groups = [g for g in ("global", "level0", "level1") if g in a["groups"]]
        act = " / ".join(f"{a['groups'][g]['active_units']} of {a['groups'][g]['dims']}" for g in groups)
        kl = " / ".join(f"{a['groups'][g]['kl_nats']:.1f}" for g in groups)
        res = " / ".join(f"{a['resample'][g]['class_change']['cnn']:.3f}" for g in groups)
        sw = a["swap"].get("code", a["swap"]["global"])["to_global_class"]
        step = (f.get("curve") or {}).get("step", "")
        rows.append(f"| {run} | {RUNS.get(run, '')} | {step} | {e['elbo_bpd']:.4f} | {act} | {kl} | {res} | "
                    f"{sw['cnn']:.3f} / {sw['logreg']:.3f} |")
    return rows


REFERENCE = {"hier_c1": "global", "levels_sig": "global_sig"}  # the global model of the same recipe and steps


def bound_table(data: dict) -> list[str]:
    """Both bounds of evaluate --k 32 (one pass, seed 0) on all 10,000 test images, and each per-level model's
    distance to the global model of its recipe under each."""
    rows = ["| run | weights scored | ELBO, one draw | importance-weighted, 32 draws | ELBO - iw32 | KL nats | "
            "ELBO - its global model's | iw32 - its global model's |", "|---|---|---|---|---|---|---|---|"]
    for run, f in data.items():
        e = f.get("eval_k32")
        if not e:
            continue
        ref = (data.get(REFERENCE.get(run)) or {}).get("eval_k32")
        diff = (f"{e['elbo_bpd'] - ref['elbo_bpd']:+.4f} | {e['iw32_bpd'] - ref['iw32_bpd']:+.4f}" if ref
                else "(reference) | (reference)" if run in REFERENCE.values() else "- | -")
        rows.append(f"| {run} | {e['checkpoint']} | {e['elbo_bpd']:.4f} | {e['iw32_bpd']:.4f} | {e['elbo_bpd'] - e['iw32_bpd']:.4f} | "
                    f"{e['kl_nats']:.1f} | {diff} |")
    return rows


def k_table(data: dict) -> list[str]:
    """The importance-weighted bound at K = 32 and 128 on the first 1,000 test images: how much more a larger K
    takes off, and the per-level model's distance to its global model at each K."""
    rows = ["| run | ELBO, one draw (K = 128 pass) | iw32 | iw128 | iw32 - iw128 | iw32 - its global model's | "
            "iw128 - its global model's |", "|---|---|---|---|---|---|---|"]
    for run, f in data.items():
        a, b = f.get("eval_k32_first1000"), f.get("eval_k128_first1000")
        if not (a and b):
            continue
        ref = data.get(REFERENCE.get(run)) or {}
        ra, rb = ref.get("eval_k32_first1000"), ref.get("eval_k128_first1000")
        diff = (f"{a['iw32_bpd'] - ra['iw32_bpd']:+.4f} | {b['iw128_bpd'] - rb['iw128_bpd']:+.4f}" if ra and rb
                else "(reference) | (reference)" if run in REFERENCE.values() else "- | -")
        rows.append(f"| {run} | {b['elbo_bpd']:.4f} | {a['iw32_bpd']:.4f} | {b['iw128_bpd']:.4f} | "
                    f"{a['iw32_bpd'] - b['iw128_bpd']:.4f} | {diff} |")
    return rows


def mechanism_table(data: dict) -> list[str]:
    rows = ["| run | level | prior term bpd, z_l from q | z_l re-drawn from p | gain | another image's z_l | "
            "image-specific gain | KL of z_l bpd |", "|---|---|---|---|---|---|---|---|"]
    for run, f in data.items():
        for model in (f.get("mechanism") or {}).values():
            for v in model["levels"]:
                rows.append(f"| {run} | {v['level']} | {v['prior_term_bpd']:.4f} | {v['prior_term_bpd_z_redrawn']:.4f} | "
                            f"{v['gain_bpd']:.4f} | {v['prior_term_bpd_other_image_z']:.4f} | {v['own_image_gain_bpd']:.4f} | "
                            f"{v['kl_bpd']:.4f} |")
    return rows


def divergence_table(steps=(1100, 1200, 1300, 1400, 1450, 1460, 1470, 1480, 1490, 1500)) -> list[str]:
    """global_warm's last steps before it stuck, and the same steps replayed from its step-1,000 checkpoint
    (train --resume; curve.py --train-every 10 on each): the training batch's KL, gradient norm and bound."""
    return _train_rows({run: (_load(RESULTS / run / "curve.json") or {}).get("train")
                        for run in ("global_warm", "global_warm_replay")}, steps,
                       (("kl_nats", "KL, nats", ".2f"), ("grad_norm", "gradient norm", ".1f"), ("elbo_bpd", "elbo_bpd", ".3f")))


DECOMPOSED = ("global_sig", "global_sig_s1", "global_sig_s2", "ladder_floor_s1", "ladder_floor_s2", "global_warm_s1", "ladder_nofb", "ladder_sig", "ladder_floor_nofb", "ladder_floor2",
              "ladder_floor", "levels_sig")


def decomposition_table(data: dict) -> list[str]:
    """Each bound (evaluate, one draw, all 10,000 test images) as its flow term plus the KL of the global code
    and of the level codes, in bits/dim, and each part's difference from global_sig's."""
    def parts(e: dict) -> tuple:
        per_bpd = e["kl_bpd"] / e["kl_nats"]
        z = e.get("kl_global_nats", e["kl_nats"]) * per_bpd
        return e["elbo_bpd"], e["flow_bpd"], z, e["kl_bpd"] - z
    ref = parts(data["global_sig"]["eval"])
    rows = ["| run | elbo_bpd | flow term | KL of z | KL of the level codes | difference from global_sig: "
            "bound = flow + z + levels |", "|---|---|---|---|---|---|"]
    for run in DECOMPOSED:
        e = (data.get(run) or {}).get("eval")
        if not e:
            continue
        p = parts(e)
        d = [a - b for a, b in zip(p, ref)]
        rows.append(f"| {run} | {p[0]:.4f} | {p[1]:.4f} | {p[2]:.4f} | {p[3]:.4f} | "
                    f"{d[0]:+.4f} = {d[1]:+.4f} {d[2]:+.4f} {d[3]:+.4f} |")
    return rows


SEEDS = {"global_sig": ("global_sig", "global_sig_s1", "global_sig_s2"), "ladder_floor": ("ladder_floor", "ladder_floor_s1", "ladder_floor_s2")}
# the flow-only Glow of the same config and steps (model.type=glow): seed 0 is experiments/sample_quality's glow_sig
GLOW = (HERE.parent / "sample_quality" / "results" / "eval_glow_sig.json", RESULTS / "glow_sig_s1" / "eval.json",
        RESULTS / "glow_sig_s2" / "eval.json")


def seeds_table(data: dict) -> list[str]:
    """Each config at every seed trained (evaluate, one draw, all 10,000 test images; evaluate --k 32 --limit 1000),
    each hybrid run against the global model and the Glow of its own seed, and each config's mean and range
    over seeds."""
    rows = ["| config | seed | run | test elbo_bpd (10,000) | iw32, first 1,000 | elbo - global_sig's at this seed | "
            "elbo - Glow's at this seed | swap cnn / logreg (the CNN judge's test accuracy) |",
            "|---|---|---|---|---|---|---|---|"]
    glob = {i: (data.get(r) or {}).get("eval") for i, r in enumerate(SEEDS["global_sig"])}
    glow = {i: _load(f) for i, f in enumerate(GLOW)}
    for seed, e in glow.items():
        if e:
            rows.append(f"| glow_sig (flow only) | {seed} | {'glow_sig' if seed == 0 else f'glow_sig_s{seed}'} | "
                        f"{e['elbo_bpd']:.4f} | - | - | (reference) | - |")
    vals = [e["elbo_bpd"] for e in glow.values() if e]
    if len(vals) > 1:
        rows.append(f"| glow_sig (flow only) | mean of {len(vals)} | | {sum(vals) / len(vals):.4f} | | | "
                    f"range {max(vals) - min(vals):.4f} | |")
    for config, runs in SEEDS.items():
        vals = []
        for seed, run in enumerate(runs):
            f = data.get(run) or {}
            e, a, k = f.get("eval"), f.get("analysis"), f.get("eval_k32_first1000")
            if not e:
                continue
            vals.append(e["elbo_bpd"])
            g, w = glob.get(seed), glow.get(seed)
            diff = "(reference)" if config == "global_sig" else f"{e['elbo_bpd'] - g['elbo_bpd']:+.4f}" if g else "-"
            vs_glow = f"{e['elbo_bpd'] - w['elbo_bpd']:+.4f}" if w else "-"
            sw = a["swap"].get("code", a["swap"]["global"])["to_global_class"] if a else None
            swap = f"{sw['cnn']:.3f} / {sw['logreg']:.3f} (judge {a['classifier_test_acc']:.4f})" if sw else "-"
            iw = f"{k['iw32_bpd']:.4f}" if k else "-"
            rows.append(f"| {config} | {seed} | {run} | {e['elbo_bpd']:.4f} | {iw} | {diff} | {vs_glow} | {swap} |")
        if len(vals) > 1:
            rows.append(f"| {config} | mean of {len(vals)} | | {sum(vals) / len(vals):.4f} | | range {max(vals) - min(vals):.4f} | | |")
    return rows


def freebits_table() -> list[str]:
    """freebits.py's file: each level code's KL on the first 1,000 test images and the part of it in
    dimensions whose batch mean is under the run's free-nats floor, which the training loss never charged
    (results/freebits.json, and results/RUN/freebits.json for runs scored later)."""
    rows = ["| run | free nats per dim | level | KL nats | of it under the floor (not charged in training) | "
            "share of dims under the floor | uncharged, bits/dim |", "|---|---|---|---|---|---|---|"]
    found = {}
    for path in [RESULTS / "freebits.json", *sorted(RESULTS.glob("*/freebits.json"))]:  # one file per later run
        found.update(_load(path) or {})
    for model, r in found.items():
        for v in r["levels"]:
            rows.append(f"| {Path(model).name} | {v['free_nats_per_dim']:g} | {v['level']} | {v['kl_nats']:.2f} | "
                        f"{v['uncharged_nats']:.2f} | {v['share_of_dims_under_floor']:.2f} | {v['uncharged_bpd']:.4f} |")
    return rows


HARD = ("6573", "4203", "8033", "1754", "480")  # tests/data/fashion_mnist_hard.pt


def draws_table() -> list[str]:
    """Each hard test image alone in its batch over draws 0-255 of (code, u): the largest move of its one-draw
    bound from its median (bounded_flow/probe.py --alone; --hold code: only u drawn, --hold u: only the code),
    what tests/test_bound_noise.py holds under one bit/dim for a shipped model."""
    rows = ["| run | noise drawn | " + " | ".join(HARD) + " | draws of any image over 1 bit/dim from its median |",
            "|---|---|" + "---|" * len(HARD) + "---|"]
    for path in sorted(RESULTS.glob("*/alone256*.json")):
        drawn = {"alone256": "code and u", "alone256_hold_code": "u only", "alone256_hold_u": "code only"}[path.stem]
        for entry in json.loads(path.read_text()).values():
            im = entry["images"]
            rows.append(f"| {path.parent.name} | {drawn} | " + " | ".join(f"{im[i]['largest_move']:.2f}" for i in HARD)
                        + f" | {sum(im[i]['draws_moved_over_1'] for i in HARD)} |")
    return rows


def main() -> None:
    data = {run: files(run) for run in RUNS}
    for title, rows in (("Periodic evaluations during training (first 1,000 test images)", curve_table(data)),
                        ("At the last scored checkpoint", final_table(data)),
                        ("Both bounds on all 10,000 test images (evaluate --k 32)", bound_table(data)),
                        ("K = 32 against K = 128 on the first 1,000 test images (evaluate --k K --limit 1000)",
                         k_table(data)),
                        ("What each level code buys in its own prior term (mechanism.py, 1,000 test images)",
                         mechanism_table(data)),
                        ("Early training of the global controls (curve.py --train-every 100)", early_table(data)),
                        ("global_warm's divergence, and its replay from the step-1,000 checkpoint", divergence_table()),
                        ("Each bound in parts, against global_sig (evaluate, all 10,000 test images)",
                         decomposition_table(data)),
                        ("The level codes' KL that training did not charge (freebits.py, 1,000 test images)",
                         freebits_table()),
                        ("Every seed of global_sig, ladder_floor and the Glow", seeds_table(data)),
                        ("Each hard test image alone over 256 draws: largest move of one draw's bound from its median "
                         "(bits/dim)", draws_table())):
        print(f"### {title}\n")
        print("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
