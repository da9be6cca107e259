"""Issue 10: anomaly scores, inpainting, denoising and the Factor-VAE TC penalty.

The behavioural tests train tiny models (configs/tiny.yaml sizes) on the shipped Fashion-MNIST sample
for ~100-150 steps: enough for the effects to be large (bpd 6.1 on test images, noise at 11.5,
blank images at 3.7 bits/dim; TC ~2.6 vs ~0.4 nats with gamma 1000), small enough for CI.
"""
import itertools
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from flowvae import load_checkpoint, load_config
from flowvae.cli import main
from flowvae.config import ConfigError
from flowvae.data import load_dataset
from flowvae.uses import restore
from flowvae.uses.score import auroc, fpr_at_tpr, score_dataset
from flowvae.engine.train import train
from flowvae.tc import TCDiscriminator, estimate_tc, gaussian_tc, permute_dims

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
QUIET = ["train.eval_every=0", "train.checkpoint_every=0", "train.log_every=1000", "train.threads=1",
         "data.limit_train=0", "data.limit_test=0"]


def _train(out: Path, steps: int, *extra: str) -> Path:
    cfg = load_config(TINY, [f"train.max_steps={steps}", *QUIET, *extra])
    train(cfg, out, device="cpu", progress=False)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, single_thread):
    """A tiny hybrid trained 150 steps on the 5000-image sample, and 64 of its test images."""
    run = _train(tmp_path_factory.mktemp("uses") / "hybrid", 150)
    model, cfg, _ = load_checkpoint(run)
    x = load_dataset(cfg.data, cfg.model, "test")[torch.arange(64)][0]
    return run, model, x


# ------------------------------------------------------------------ metrics
def test_auroc_and_fpr_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 20, (50,), generator=g).float(), torch.randint(5, 25, (40,), generator=g).float()
    brute = sum((1.0 if bj > ai else 0.5 if bj == ai else 0.0) for ai, bj in itertools.product(a, b)) / (50 * 40)
    assert auroc(a, b) == pytest.approx(brute)
    assert auroc(torch.zeros(3), torch.ones(3)) == 1.0 and auroc(torch.ones(3), torch.zeros(3)) == 0.0
    assert fpr_at_tpr(torch.arange(100.0), torch.arange(50.0, 150.0)) == pytest.approx(0.45)
    assert fpr_at_tpr(torch.zeros(10), torch.ones(10)) == 0.0


# ------------------------------------------------------------------ scoring
@pytest.mark.slow
def test_score_flags_noise_and_complexity_correction_flags_blank_images(trained):
    _, model, x = trained
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=g)
    blank = torch.zeros(16, 1, 28, 28, dtype=torch.uint8)
    blank[8:] = 128
    s, sn, sb = model.score(x), model.score(noise), model.score(blank)
    assert torch.allclose(s["global_bpd"] + s["local_bpd"], s["bpd"], atol=1e-5)
    assert auroc(s["bpd"], sn["bpd"]) > 0.99  # noise: far above every normal image
    # the known failure of raw likelihood: black images look *more* likely than real ones ...
    assert sb["bpd"][:8].mean() < s["bpd"].mean()
    # ... which the input-complexity correction fixes
    assert auroc(s["ic_bpd"], sb["ic_bpd"]) > 0.95


def test_score_split_needs_a_hybrid(make_model, images, single_thread):
    glow = make_model("model.type=glow")
    x = images(4)
    glow.initialize(x)
    s = glow.score(x)
    assert set(s) == {"bpd", "complexity_bpd", "ic_bpd"}
    with pytest.raises(ValueError, match="flow-only"):
        glow.score(x, split=True)
    with pytest.raises(ValueError, match="k must be"):
        glow.score(x, k=0)


@pytest.mark.slow
def test_score_cli_csv_and_user_folder(trained, tmp_path, capsys):
    run, model, x = trained
    out = tmp_path / "s.csv"
    assert main(["score", "--checkpoint", str(run), "--limit", "20", "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].split(",") == ["index", "image", "label", "bpd", "global_bpd", "local_bpd", "complexity_bpd", "ic_bpd"]
    assert len(rows) == 21
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.fromarray(x[0, 0].numpy()).save(folder / "shirt.png")
    Image.fromarray((torch.rand(50, 40, 3) * 255).byte().numpy()).save(folder / "big_colour.jpg")  # resized, grey
    out2 = tmp_path / "mine.csv"
    assert main(["score", "--checkpoint", str(run), "--images", str(folder), "--out", str(out2)]) == 2  # never silently
    assert "big_colour.jpg (50x40)" in capsys.readouterr().err and not out2.exists()
    assert main(["score", "--checkpoint", str(run), "--images", str(folder), "--out", str(out2), "--resize"]) == 0
    lines = out2.read_text().splitlines()
    assert len(lines) == 3 and "shirt.png" in out2.read_text()
    assert main(["score", "--checkpoint", str(run), "--images", str(tmp_path / "nothing"), "--out", str(out2)]) == 2
    assert "not found" in capsys.readouterr().err


def test_lr_score_of_a_model_against_itself_is_zero_and_mismatched_references_are_rejected(make_model, images,
                                                                                          single_thread):
    hybrid = make_model(z_path_std=0.3)
    local = make_model("model.type=glow", "model.coupling_kernels=[1,1]", seed=1, z_path_std=0.3)
    x = images(6)
    for m in (hybrid, local):
        s = m.score(x, k=2, reference=m)
        # same random draws for model and reference: the ratio of a model to itself is exactly 0
        assert torch.equal(s["lr_bpd"], torch.zeros(6)) and torch.equal(s["reference_bpd"], s["bpd"])
    torch.manual_seed(3)
    plain = hybrid.score(x)
    torch.manual_seed(3)
    s = hybrid.score(x, reference=local)
    assert set(s) == set(plain) | {"reference_bpd", "lr_bpd"}
    assert torch.equal(s["bpd"], plain["bpd"])  # the reference does not change the model's own draws
    assert torch.allclose(s["lr_bpd"], s["bpd"] - s["reference_bpd"], atol=1e-5)
    assert s["lr_bpd"].abs().min() > 1e-3  # a different model: a real difference
    with pytest.raises(ValueError, match="n_bits=5 differs from the model's n_bits=8"):
        hybrid.score(x, reference=make_model("model.type=glow", "model.n_bits=5"))
    with pytest.raises(ValueError, match=r"image shape \[1, 16, 16\] .* differs from the model's \[1, 8, 8\]"):
        hybrid.score(x, reference=make_model("model.type=glow", "model.image_size=16"))
    with pytest.raises(ValueError, match=r"image shape \[3, 8, 8\]"):
        score_dataset(hybrid, [], reference=make_model("model.image_channels=3"))  # checked before any data is read
    with pytest.raises(TypeError, match="reference must be a FlowVAE"):
        hybrid.score(x, reference="runs/local")


def test_score_iw_column_is_the_importance_weighted_bound(trained, tmp_path, capsys):
    run, model, x = trained
    torch.manual_seed(0)
    s = model.score(x[:24], k=1, iw=16)
    assert set(s) >= {"bpd", "iw_bpd"} and s["iw_bpd"].shape == (24,) and torch.isfinite(s["iw_bpd"]).all()
    # the tighter bound: below the mean of 16 one-draw ELBOs, image by image on average
    elbo16 = model.score(x[:24], k=16)["bpd"]
    assert s["iw_bpd"].mean() < elbo16.mean()
    out = tmp_path / "s.csv"
    assert main(["score", "--checkpoint", str(run), "--limit", "8", "--iw", "4", "--out", str(out)]) == 0
    assert "iw_bpd" in out.read_text().splitlines()[0].split(",")
    assert main(["score", "--checkpoint", str(run), "--limit", "8", "--iw", "1", "--out", str(tmp_path / "t.csv")]) == 2
    assert "iw=1" in capsys.readouterr().err and not (tmp_path / "t.csv").exists()


def test_score_cli_reference(tmp_path, capsys, single_thread):
    """``flowvae score --reference``: the lr_bpd column, and a one-line error for a mismatched reference."""
    from dataclasses import asdict

    from flowvae import FlowVAE
    from flowvae.checkpoint import save_checkpoint

    runs = {}
    for name, extra in (("hybrid", []), ("local", ["model.type=glow", "model.coupling_kernels=[1,1]"]),
                        ("bits5", ["model.type=glow", "model.n_bits=5"])):
        cfg = load_config(TINY, extra)
        torch.manual_seed(0)
        m = FlowVAE.from_config(cfg)
        m.initialize(load_dataset(cfg.data, cfg.model, "train")[torch.arange(128)][0])
        save_checkpoint(tmp_path / name / "checkpoint.pt", {"model": m.state_dict(), "config": asdict(cfg), "step": 0})
        runs[name] = str(tmp_path / name)
    out = tmp_path / "s.csv"
    assert main(["score", "--checkpoint", runs["hybrid"], "--reference", runs["local"], "--limit", "8",
                 "--out", str(out)]) == 0
    rows = [r.split(",") for r in out.read_text().splitlines()]
    assert rows[0][-2:] == ["reference_bpd", "lr_bpd"] and len(rows) == 9
    col = {k: i for i, k in enumerate(rows[0])}
    for r in rows[1:]:
        assert float(r[col["lr_bpd"]]) == pytest.approx(float(r[col["bpd"]]) - float(r[col["reference_bpd"]]), abs=2e-5)
    assert "lr_bpd" in capsys.readouterr().out
    assert main(["score", "--checkpoint", runs["hybrid"], "--reference", runs["bits5"], "--limit", "8",
                 "--out", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the reference model's n_bits=5") and "Traceback" not in err
    assert not (tmp_path / "t.csv").exists()


# ------------------------------------------------------------------ inpainting
@pytest.mark.parametrize("bits", [8, 5])
def test_inpaint_keeps_observed_pixels_bit_exact(make_model, images, single_thread, bits):
    model = make_model(f"model.n_bits={bits}", z_path_std=0.1)
    x = images(6)
    model.initialize(x)
    g = torch.Generator().manual_seed(1)
    for kind in ("bottom", "centre", "random"):
        m = restore.builtin_mask(kind, model.image_shape, 6, generator=g)
        out = model.inpaint(x, m, samples=2, steps=5)
        assert out["map"].dtype == torch.uint8 and out["samples"].shape == (2, 6, 1, 8, 8)
        assert torch.equal(out["map"][~m], x[~m])  # the caller's own uint8 values, even at n_bits < 8
        for s in out["samples"]:
            assert torch.equal(s[~m], x[~m])
        assert not torch.equal(out["samples"][0][m], out["samples"][1][m])  # different random starts


@pytest.mark.slow
def test_inpaint_beats_mean_fill_on_a_trained_model(trained):
    _, model, x = trained
    m = restore.builtin_mask("random", model.image_shape, 16, 0.5, torch.Generator().manual_seed(0))
    filled = model.inpaint(x[:16], m, steps=100)["map"]
    mean = restore.mean_fill(x[:16], m, x[16:].float().mean(0))
    assert restore.psnr(filled, x[:16], m) > restore.psnr(mean, x[:16], m) + 1.0


def test_mask_and_sigma_errors(make_model, images, single_thread):
    model = make_model()
    x = images(2)
    model.initialize(x)
    ok = torch.zeros(8, 8, dtype=torch.bool)
    with pytest.raises(TypeError, match="torch.bool"):
        model.inpaint(x, ok.to(torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        model.inpaint(x, torch.zeros(9, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="3 masks for 2 images"):
        model.inpaint(x, torch.zeros(3, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown mask"):
        restore.builtin_mask("top", model.image_shape)
    for bad in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            model.denoise(x, sigma=bad)
    with pytest.raises(ValueError, match="exactly one"):
        model.denoise(x)
    with pytest.raises(ValueError, match="sigma"):
        restore.add_gaussian_noise(x, -2.0)


# ------------------------------------------------------------------ denoising
@pytest.mark.slow
def test_denoise_improves_psnr_on_a_trained_model(trained):
    _, model, x = trained
    g = torch.Generator().manual_seed(0)
    noisy = restore.add_gaussian_noise(x[:16], 40.0, generator=g)
    clean = model.denoise(noisy, sigma=40.0, steps=100)
    assert restore.psnr(clean, x[:16]) > restore.psnr(noisy, x[:16]) + 0.5
    sp, hit = restore.add_salt_pepper(x[:16], 0.2, generator=g)
    fixed = model.denoise(sp, salt_pepper=True, steps=100)
    assert restore.psnr(fixed, x[:16], hit) > restore.psnr(sp, x[:16], hit) + 3.0


@pytest.mark.slow
def test_restore_cli(trained, tmp_path, capsys):
    run, _, _ = trained
    png = tmp_path / "i.png"
    assert main(["inpaint", "--checkpoint", str(run), "--n", "2", "--steps", "3", "--samples", "1", "--mask", "centre",
                 "--out", str(png), "--save-dir", str(tmp_path / "each")]) == 0
    assert png.is_file() and len(list((tmp_path / "each").iterdir())) == 2
    Image.fromarray(torch.zeros(10, 10, dtype=torch.uint8).numpy()).save(tmp_path / "bad_mask.png")
    assert main(["inpaint", "--checkpoint", str(run), "--mask", str(tmp_path / "bad_mask.png"), "--out", str(png)]) == 2
    assert "mask has shape [10, 10]" in capsys.readouterr().err
    assert main(["denoise", "--checkpoint", str(run), "--n", "2", "--steps", "3", "--sigma", "30", "--out", str(png)]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert main(["denoise", "--checkpoint", str(run), "--sigma", "-5", "--out", str(png)]) == 2
    assert "--sigma must be" in capsys.readouterr().err
    assert main(["denoise", "--checkpoint", str(run), "--n", "2", "--steps", "3", "--salt-pepper", "0.1", "--out", str(png)]) == 0


# ------------------------------------------------------------------ Factor-VAE TC
def test_permute_dims_and_estimators():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 4, generator=g)
    z[:, 1] = z[:, 0] + 0.3 * z[:, 1]  # strongly dependent pair
    zp = permute_dims(z, g)
    for j in range(4):  # each column keeps its values (its marginal), in a new order
        assert torch.equal(zp[:, j].sort().values, z[:, j].sort().values)
    assert gaussian_tc(z) > 0.8 and gaussian_tc(zp) < 0.05
    disc = TCDiscriminator(4, hidden=64)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    for _ in range(300):
        loss = disc.loss(z[torch.randint(0, 2000, (256,), generator=g)], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # the density-ratio estimate on q(z) samples is the TC (1.25 nats for this Gaussian)
        assert abs(float(disc.tc(z).mean()) - gaussian_tc(z)) < 0.4
        assert disc.tc(zp).mean() < 0  # on prod_j q(z_j) samples it estimates -KL(prod q || q)


def test_tc_weight_config_errors():
    with pytest.raises(ConfigError, match="tc_weight"):
        load_config(TINY, ["model.type=glow", "loss.tc_weight=5"])
    with pytest.raises(ConfigError, match="tc_weight"):
        load_config(TINY, ["loss.tc_weight=-1"])


@pytest.mark.slow
def test_tc_penalty_lowers_tc_and_resumes(tmp_path, single_thread):
    runs = {g: _train(tmp_path / f"g{g}", 100, f"loss.tc_weight={g}") for g in (0, 1000)}
    cfg = load_config(TINY, QUIET)
    xtr = load_dataset(cfg.data, cfg.model, "train")[torch.arange(2000)][0]
    xte = load_dataset(cfg.data, cfg.model, "test")[torch.arange(500)][0]
    est = {g: estimate_tc(load_checkpoint(r)[0], xtr, xte, steps=300) for g, r in runs.items()}
    assert est[1000]["tc_gauss_nats"] < 0.5 * est[0]["tc_gauss_nats"]
    assert est[1000]["tc_disc_nats"] < est[0]["tc_disc_nats"]
    # the discriminator is checkpointed, and resumed with the run; the reported bound stays the ELBO
    state = torch.load(runs[1000] / "checkpoint.pt", weights_only=True)
    assert set(state["tc"]) == {"disc", "opt"}
    metrics = json.loads((runs[1000] / "train_metrics.json").read_text())
    assert abs(metrics["flow_bpd"] + metrics["kl_bpd"] + metrics["dequant_bpd"] - metrics["elbo_bpd"]) < 1e-4
    cfg2 = load_config(str(runs[1000] / "config.yaml"), ["train.max_steps=102"])
    train(cfg2, runs[1000], device="cpu", resume=True, progress=False)
    state2 = torch.load(runs[1000] / "checkpoint.pt", weights_only=True)
    assert state2["step"] == 102
    w1, w2 = state["tc"]["disc"]["net.0.weight"], state2["tc"]["disc"]["net.0.weight"]
    assert not torch.equal(w1, w2) and (w1 - w2).abs().max() < 0.05  # continued from the saved one, not re-drawn
    assert state2["tc"]["opt"]["state"][0]["step"] == state["tc"]["opt"]["state"][0]["step"] + 2
