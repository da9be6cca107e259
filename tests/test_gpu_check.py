"""bench/gpu_check.py, the GPU session's one command, kept alive on CPU: its --quick dry run runs every stage,
CUDA-only stages say so, results and the table name the machine, and a stage over its time cap or failing
does not stop the others."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
# On a quiet 2-core machine the dry run takes about 2 minutes; the caps here are wide so a loaded machine records
# results instead of timeouts (measured at a load average of 15 on 2 cores: `import torch` alone took 62 s).
WIDE = ["--budget", "3000"] + [f"--cap={s}=600" for s in ("roundtrip", "train", "compile", "roofline", "distributed")]


def _run(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out), *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=3600)
    report = json.loads((out / "gpu_check.json").read_text())
    return r, report


@pytest.mark.slow
def test_quick_dry_run_runs_every_stage(tmp_path):
    r, rep = _run(tmp_path, *WIDE)
    assert r.returncode == 0, r.stdout + r.stderr
    stages = rep["stages"]
    assert list(stages) == ["cuda_tests", "roundtrip", "train", "roofline", "distributed", "compile"]
    if not torch.cuda.is_available():
        assert stages["cuda_tests"]["status"] == "skipped: no CUDA"
    assert all(stages[s]["status"] == "ok" for s in list(stages)[1:]), stages
    env = rep["environment"]
    assert env["torch"] == torch.__version__ and env["commit"] and env["device"]
    res = rep["results"]
    rt = res["roundtrip"]
    assert rt["default_config"]["decode_encode_exact"] and rt["float64_logdet"]["abs_diff"] < 1e-6
    assert abs(rt["float64_logdet"]["logdet"]) > 1e-3  # the flow was randomised: not the identity
    train = res["train"]
    for kind in ("flowvae_hybrid", "flowvae_glow"):
        for v in ("fp32", "bf16", "recompute", "gemm", "conv"):
            row = train[f"{kind}/{v}"]
            assert row["status"] == "ok" and row["train_img_s"] > 0, (kind, v, row)
        assert train[f"{kind}/gemm"]["coupling_impl"] == "gemm" and train[f"{kind}/conv"]["coupling_impl"] == "conv"
        assert train[f"{kind}/recompute"]["memory"] == "recompute"
    assert train["normflows_glow/fp32"]["status"] in ("ok", "skipped: normflows not installed")
    assert res["compile"]["flowvae_hybrid/bf16_compile"]["train_img_s"] > 0
    roof = res["roofline"]
    assert roof["matmul/fp32"]["tflop_s"] > 0 and roof["matmul/bf16"]["tflop_s"] > 0
    assert roof["flops/flowvae_hybrid"]["gflop_per_image"] > roof["flops/flowvae_glow"]["gflop_per_image"] > 0
    assert 0 < roof["fractions"]["flowvae_hybrid/fp32"]["fraction_of_matmul"]
    assert roof["profile/flowvae_hybrid/bf16"]["top"]
    dist = res["distributed"]
    assert "all_reduce ok" in dist["collective"]["last_line"] and "gloo" in dist["collective"]["last_line"]
    assert dist["resume"]["steps"] == [4, 6]
    assert dist["compare"]["abs_diff"] <= max(dist["compare"]["seed_to_seed_diff"], 1e-6)
    md = (tmp_path / "gpu_check.md").read_text()
    assert env["device"] in md and env["commit"] in md and "| flowvae_hybrid/bf16 |" in md
    assert "| cuda_tests | skipped: no CUDA |" in md or torch.cuda.is_available()


def test_a_stage_over_its_cap_or_failing_does_not_stop_the_next(tmp_path):
    r, rep = _run(tmp_path, "--stages", "cuda_tests,train,roundtrip", "--cap", "train=0.5", "--cap", "roundtrip=0.5",
                  "--budget", "60")
    assert r.returncode == 1  # a stage did not finish
    assert rep["stages"]["train"]["status"].startswith("timeout after 0 s")
    assert rep["stages"]["roundtrip"]["status"].startswith("timeout")  # it still ran, under its own cap
    assert "timeout" in (tmp_path / "gpu_check.md").read_text()


def test_bad_arguments_are_one_line_errors(tmp_path):
    for args in (["--stages", "nope"], ["--cap", "train"], ["--cap", "nope=3"]):
        r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(tmp_path), *args],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode != 0 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, (args, r.stderr)


def test_flop_count_sees_the_gemm_path_as_the_conv_path():
    """The roofline's FLOP count (torch's FlopCounterMode) must see the GEMM coupling's hand-written backward:
    the same network as nn.Conv2d calls (coupling_impl=conv) does the same multiply-adds."""
    sys.path.insert(0, str(ROOT / "bench"))
    from benchmark import Bench
    from gpu_check import QUICK, bench_args, synthetic_images
    from roofline import gemm_rate, training_flops

    images = synthetic_images(QUICK, 16)
    flops = {impl: training_flops(Bench("flowvae_glow", bench_args(QUICK, "fp32", impl), torch.device("cpu"), images),
                                  images[:8]) for impl in ("gemm", "conv")}
    assert flops["gemm"] > 0
    # the GEMM path pads nothing and the conv path counts the same taps: within 5% (the first layer's bias
    # column in the GEMM is the only extra work)
    assert abs(flops["gemm"] - flops["conv"]) / flops["conv"] < 0.05, flops
    assert gemm_rate(64, 64, 64, torch.float32, torch.device("cpu"), seconds=0.01) > 0
