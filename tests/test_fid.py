"""The Fréchet distance of samples (engine/fid.py, flowvae fid) on tiny data: a set is at distance ~0
from itself and farther from a changed set, the judge's features are what is compared, the sweep is
seeded, and the command writes its JSON and fails cleanly on bad input."""
import json
from pathlib import Path

import pytest
import torch

from flowvae.cli import main
from flowvae.engine.analyze import SmallCNN
from flowvae.engine.fid import JudgeFeatures, frechet_distance, sample_fid

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def _judge(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(1, 10, (28, 28)).eval()


def _images(n: int, seed: int, mean: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 28, 28, generator=g) * 40 + mean).clamp(0, 255).to(torch.uint8)


def _batches(x: torch.Tensor, size: int = 64):
    return [x[i:i + size] for i in range(0, len(x), size)]


def test_distance_of_a_set_to_itself_is_zero_and_grows_with_a_shift():
    judge = _judge()
    a = _images(300, 0)
    same = frechet_distance(judge, _batches(a), _batches(a, 50))  # batching does not matter
    fresh = frechet_distance(judge, _batches(a), _batches(_images(300, 1)))  # same distribution, new draws
    shifted = frechet_distance(judge, _batches(a), _batches(_images(300, 1, mean=160.0)))
    assert abs(same) < 1e-6
    assert fresh > 1e-6  # finite-sample noise, but not zero
    assert shifted > 10 * fresh


def test_features_are_the_judges_last_hidden_layer():
    judge = _judge()
    x = _images(8, 2)
    feats = JudgeFeatures(judge)
    f = feats(x)
    assert f.shape == (8, 128) and feats.num_features == 128
    assert torch.allclose(judge.net[-1](f), judge(x))  # the logits are one linear layer away
    assert (f >= 0).all()  # after the ReLU
    with pytest.raises(TypeError, match="uint8"):
        feats(x.float())


def test_too_few_images_is_an_error():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(_judge(), [_images(1, 0)], [_images(5, 1)])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fid") / "run"
    assert main(["train", "--config", TINY, "--out", str(out), "--no-progress", "--device", "cpu",
                 "train.max_steps=4", "train.eval_every=0", "train.threads=1"]) == 0
    return out


def test_sample_fid_is_seeded_and_depends_on_temperature(tiny_run):
    from flowvae.checkpoint import load_checkpoint
    from flowvae.data import load_dataset

    model, cfg, _ = load_checkpoint(tiny_run)
    test = load_dataset(cfg.data, cfg.model, "test")
    judge = _judge()
    state = torch.random.get_rng_state()
    r1 = sample_fid(model, test, judge, [0.5, 1.0], n=40, batch_size=16, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is untouched
    r2 = sample_fid(model, test, judge, [1.0], n=40, batch_size=16, progress=False)
    assert r1["fid"][1.0] == pytest.approx(r2["fid"][1.0], rel=1e-6)  # seeded per temperature
    assert r1["fid"][0.5] != pytest.approx(r1["fid"][1.0], rel=1e-3)
    assert r1["best_fid"] == min(r1["fid"].values()) and r1["fid"][r1["best_temperature"]] == r1["best_fid"]
    with pytest.raises(ValueError, match="n must be"):
        sample_fid(model, test, judge, [1.0], n=len(test) + 1, progress=False)


def test_fid_command_writes_json_and_caches_the_judge(tiny_run, tmp_path, capsys):
    out, clf = tmp_path / "fid.json", tmp_path / "clf.pt"
    args = ["fid", "--checkpoint", str(tiny_run), "--classifier", str(clf), "--classifier-epochs", "1",
            "--temperatures", "0.7,1.0", "--n", "32", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert set(res["fid"]) == {"0.7", "1.0"} and res["n"] == 32 and clf.exists()
    assert "Fréchet distance" in capsys.readouterr().out
    assert main(args) == 0  # the second run loads the judge
    assert json.loads(out.read_text())["classifier"].startswith("loaded")
    # a one-line usage error, exit code 2
    assert main(["fid", "--checkpoint", str(tiny_run), "--temperatures", "0.7,x", "--out", str(out)]) == 2
    assert "expected a number" in capsys.readouterr().err


class _FakeFID:
    """Stands in for torchmetrics' FrechetInceptionDistance: records how it is built and what it is fed."""
    made: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.fed = kwargs, []
        _FakeFID.made.append(self)

    def update(self, x, real):
        self.fed.append((tuple(x.shape), x.dtype, real))

    def reset(self):
        pass

    def compute(self):
        return torch.tensor(float(len(self.fed)))


def test_inception_weights_give_the_usual_fid_on_three_channels(tiny_run, tmp_path, monkeypatch):
    import torchmetrics.image.fid as tm_fid
    from flowvae.checkpoint import load_checkpoint
    from flowvae.data import load_dataset

    monkeypatch.setattr(tm_fid, "FrechetInceptionDistance", _FakeFID)
    _FakeFID.made.clear()
    model, cfg, _ = load_checkpoint(tiny_run)
    test = load_dataset(cfg.data, cfg.model, "test")
    weights = tmp_path / "pt_inception.pth"
    res = sample_fid(model, test, None, [1.0], n=20, batch_size=8, progress=False, inception_weights=str(weights))
    (metric,) = _FakeFID.made
    assert metric.kwargs["feature"] == 2048 and metric.kwargs["feature_extractor_weights_path"] == str(weights)
    assert res["features"] == "inception"
    assert {real for _, _, real in metric.fed} == {True, False}
    assert all(shape[1] == 3 and dtype == torch.uint8 for shape, dtype, _ in metric.fed)  # grey repeated to RGB
    assert sum(shape[0] for shape, _, real in metric.fed if real) == 20
    with pytest.raises(ValueError, match="judge CNN or the Inception weights"):
        sample_fid(model, test, None, [1.0], n=20, progress=False)


def test_inception_weights_that_are_missing_or_unusable_are_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    import sys

    base = ["fid", "--checkpoint", str(tiny_run), "--n", "8", "--no-progress", "--out", str(tmp_path / "f.json")]
    assert main(base + ["--inception-weights", str(tmp_path / "nope.pth")]) == 2
    assert "no such file" in capsys.readouterr().err
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"0")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # not installed
    assert main(base + ["--inception-weights", str(weights)]) == 2
    assert "pip install torch-fidelity" in capsys.readouterr().err
    assert not (tmp_path / "f.json").exists()
