"""Per-image spread of a bound between two seeds of evaluate's batches, from the tensors that
``experiments/bounded_flow/probe.py --all 0 --k K --seeds S --per-image FILE`` saves (one seed each).

    python experiments/bits_budget/iw_spread.py experiments/bits_budget/results/iw32_s0_fm24k_sig.pt \
        experiments/bits_budget/results/iw32_s1_fm24k_sig.pt
"""
import sys

import torch

a, b = (torch.load(f, weights_only=True) for f in sys.argv[1:3])
x, y = a["bpd"][0], b["bpd"][0]
d = (x - y).abs()
print(f"k={a['k']}, seeds {a['seeds']} and {b['seeds']}, {len(x):,} images: mean {x.mean():.4f} / {y.mean():.4f}, "
      f"median image {x.median():.4f} / {y.median():.4f}, worst image {x.max():.2f} ({int(x.argmax())}) / "
      f"{y.max():.2f} ({int(y.argmax())})")
print(f"per-image spread: median {d.median():.4f}, 99th percentile {d.quantile(0.99):.4f}, largest {d.max():.4f} "
      f"(image {int(d.argmax())}); images over 0.1: {int((d > 0.1).sum())}")
for i in (int(d.argmax()), 8910):
    print(f"image {i}: {x[i]:.3f} / {y[i]:.3f}")
