"""resample-level and the decoupling analysis (flowvae analyze) end to end on the tiny config, and the
pieces the analysis is built from (the linear probe, the classifier cache)."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from flowvae.cli import main
from flowvae.engine.analyze import linear_probe

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
SMALL = ["--classifier-epochs", "1", "--pairs", "40", "--probe-train", "200", "--probe-test", "64",
         "--kl-images", "64", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    out = {}
    for name, extra in {"hier": ["model.injection=hierarchical", "model.hier_prior=topdown"],
                        "glow": ["model.type=glow"]}.items():
        out[name] = root / name
        assert main(["train", "--config", TINY, "--out", str(out[name]), "--no-progress", "--device", "cpu",
                     "train.max_steps=10", "train.eval_every=0", "train.threads=1", *extra]) == 0
    return out


def _size(path):
    with Image.open(path) as im:
        return im.size


def test_resample_level_writes_a_grid_per_group(runs, tmp_path):
    assert main(["resample-level", "--checkpoint", str(runs["hier"]), "--n", "3", "--m", "4", "--no-labels",
                 "--out", str(tmp_path)]) == 0
    for group in ("global", "level0", "level1"):
        # 3 rows x (original + 4 draws), 28 px tiles shown at 56 px + 2 px padding
        assert _size(tmp_path / f"resample_{group}.png") == (2 + 58 * 5, 2 + 58 * 3)
    one = tmp_path / "one.png"
    assert main(["resample-level", "--checkpoint", str(runs["hier"]), "--level", "1", "--n", "2", "--m", "2",
                 "--out", str(one)]) == 0
    w, h = _size(one)  # labelled: a caption band above the grid
    assert w == 2 + 58 * 3 and h > 2 + 58 * 2


def test_resample_level_errors(runs, tmp_path, capsys):
    assert main(["resample-level", "--checkpoint", str(runs["hier"]), "--level", "5", "--out", str(tmp_path / "x.png")]) == 2
    assert "level must be 'global' or a level 0..1" in capsys.readouterr().err
    assert main(["resample-level", "--checkpoint", str(runs["glow"]), "--out", str(tmp_path / "x.png")]) == 2
    assert "flow-only" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_analyze_end_to_end(runs, tmp_path, capsys):
    clf = tmp_path / "clf.pt"
    out = tmp_path / "hier.json"
    assert main(["analyze", "--checkpoint", str(runs["hier"]), "--classifier", str(clf), "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert clf.is_file() and "swap consistency" in printed and "level1" in printed
    assert 0 <= res["classifier_test_acc"] <= 1
    assert res["swap_pairs"] == 40
    for prefix in ("", "z_only_"):  # A and B differ in class
        assert 0 <= res[f"swap_{prefix}to_global_class"] + res[f"swap_{prefix}to_local_class"] <= 1
    for key in ("pixels", "eps", "z", "code", "level0", "level1"):
        assert 0 <= res[f"probe_acc_{key}"] <= 1
    assert list(res["groups"]) == ["global", "level0", "level1"]
    assert [g["dims"] for g in res["groups"].values()] == [8, 2 * 14 * 14, 2 * 7 * 7]
    for g in res["groups"].values():
        assert g["kl_nats"] >= 0 and 0 <= g["active_units"] <= g["dims"]
    # the cached classifier is reused: same accuracy, no retraining
    out2 = tmp_path / "glow.json"
    assert main(["analyze", "--checkpoint", str(runs["glow"]), "--classifier", str(clf), "--out", str(out2), *SMALL]) == 0
    res2 = json.loads(out2.read_text())
    assert res2["classifier"].startswith("loaded") and res2["classifier_test_acc"] == res["classifier_test_acc"]
    assert "swap_to_global_class" not in res2 and "groups" not in res2  # a flow-only model has no code
    assert res2["probe_acc_pixels"] == res["probe_acc_pixels"]
    # a corrupt classifier file is an error, not a silent retrain
    clf.write_bytes(b"not a checkpoint")
    assert main(["analyze", "--checkpoint", str(runs["glow"]), "--classifier", str(clf), *SMALL]) == 2
    assert "not a flowvae analyze classifier" in capsys.readouterr().err


def test_analyze_needs_labels(runs, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        Image.fromarray((torch.rand(28, 28) * 255).byte().numpy()).save(folder / f"{i}.png")
    assert main(["analyze", "--checkpoint", str(runs["glow"]), *SMALL, "data.dataset=folder", f"data.root={folder}",
                 "data.test_fraction=0.5"]) == 2
    assert "labelled dataset" in capsys.readouterr().err


def test_linear_probe_separable_vs_random_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (600,), generator=g)
    centres = torch.randn(4, 20, generator=g) * 3
    x = centres[y] + torch.randn(600, 20, generator=g)
    assert linear_probe(x[:400], y[:400], x[400:], y[400:]) > 0.95
    noise = torch.randn(600, 20, generator=g)
    assert linear_probe(noise[:400], y[:400], noise[400:], y[400:]) < 0.4  # chance is 0.25


def test_global_only_swap_of_the_hierarchical_model(make_model, images):
    from conftest import randomize_
    from flowvae.engine.analyze import _swaps

    model = make_model("model.injection=hierarchical", "model.hier_channels=2", z_path_std=0.1)
    randomize_(model.latents, 0.2, seed=1)
    xa, xb = images(4, seed=1), images(4, seed=2)
    assert torch.equal(_swaps(model, xa, xa, True, 3, False), xa)
    z_only, full = _swaps(model, xa, xb, True, 3, False), _swaps(model, xa, xb, False, 3, False)
    assert torch.equal(full, model.swap(xa, xb))
    assert not torch.equal(z_only, xa) and not torch.equal(z_only, full)


def test_classifier_bar_does_not_flood_a_log(capsys):
    from flowvae.data.datasets import TensorImages
    from flowvae.engine.analyze import train_classifier

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (256, 1, 8, 8), dtype=torch.uint8, generator=g)
    ds = TensorImages(x, torch.arange(256) % 2, "toy")
    train_classifier(ds, ds, epochs=2, batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and 1 <= len(err.splitlines()) <= 2 and "classifier: 32/32 steps" in err
