"""The CUDA paths: bf16-mixed training, torch.compile, MFU from Lightning's table of GPUs, a GPU
checkpoint read on the CPU, and trainer=fsdp / trainer=ddp on every GPU there is; and the GPU
acceptance script that runs them.

The tests marked ``gpu`` are skipped where torch sees no CUDA GPU (tests/conftest.py);
scripts/gpu_check.sh runs them (``python -m pytest -m gpu``). The script's own tests run anywhere.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_scratch.checkpoint import load_model
from llm_scratch.train.job import train
from llm_scratch.train.validate import validate_config
from llm_scratch.utils.flops import known_peak_flops
from tests.helpers import REPO, compose_config, run_cli

# Character-level Tiny Shakespeare, a 4-layer model: seconds per run on any GPU.
RUN = [
    "model=gpt-micro",
    "data=shakespeare_char",
    "data.context_length=128",
    "data.batch_size=32",
    "data.sampling=random",
    "data.samples_per_epoch=1280",  # 40 steps an epoch
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=5",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "optimizer.lr=2e-3",
    "scheduler.name=constant",
    "callbacks.text_sampler.max_new_tokens=16",
]


def rows(run_dir: Path, key: str) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bf16") / "run"
    train(compose_config([*RUN, "trainer=gpu"], run))
    return run


@pytest.mark.gpu
def test_bf16_mixed_steps_are_finite_and_the_loss_falls(bf16_run):
    losses = rows(bf16_run, "train/loss")
    assert len(losses) >= 8 and all(math.isfinite(v) for v in losses.values()), losses
    steps = sorted(losses)
    first, last = losses[steps[0]], losses[steps[-1]]
    assert last < first - 0.5, losses  # char-level: 4.2 (uniform over 65) falls fast
    summary = json.loads((bf16_run / "summary.json").read_text())
    assert summary["global_step"] == 40
    # MFU where Lightning's table knows this GPU
    peak = known_peak_flops(torch.device("cuda"), "bf16-mixed")
    mfu = rows(bf16_run, "train/mfu")
    if peak is None:
        assert not mfu, "no peak known, so no MFU"
    else:
        assert mfu and all(0 < v < 1 for v in mfu.values()), mfu


@pytest.mark.gpu
def test_a_checkpoint_saved_on_the_gpu_samples_on_the_cpu(bf16_run):
    last = bf16_run / "checkpoints" / "last.ckpt"
    on_cpu, tokenizer, _ = load_model(last, device="cpu")
    on_gpu, _, _ = load_model(last, device="cuda")
    assert next(on_cpu.parameters()).device.type == "cpu"
    x = torch.tensor([tokenizer.encode("ROMEO:\nWhat light")])
    with torch.no_grad():
        cpu_logits = on_cpu(x)[0]
        gpu_logits = on_gpu(x.cuda())[0].cpu()
    # float32 on both (the weights are saved in float32 under bf16-mixed); matmuls and
    # reductions in other orders: 1e-3 is far above their rounding, far below a wrong weight
    torch.testing.assert_close(cpu_logits, gpu_logits, rtol=0, atol=1e-3)
    result = run_cli(
        "training/sample.py",
        f"ckpt_path={last}",
        "prompt=ROMEO:",
        "max_new_tokens=20",
        "device=cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ROMEO:" in result.stdout


# compile=true against eager: the same float32 run (dropout 0: compiled dropout draws its masks
# from another generator). Inductor fuses the LayerNorms, GELU and softmax and reorders their
# reductions, so the float32 losses differ in their last bits and AdamW carries that on: on a CPU
# (gpt-nano, 8 steps) by 4.8e-7 at most. GPU kernels round differently again; 1e-3 leaves them
# room and is still a twentieth of what one step moves the loss here (a wrong graph moves it more).
COMPILE_RUN = [*RUN, "trainer=gpu", "trainer.precision=32-true", "model.dropout=0.0"]
COMPILE_STEPS = [
    "trainer.max_steps=10",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=0",
]
COMPILE_TOLERANCE = 1e-3


@pytest.mark.gpu
def test_compile_gives_the_eager_losses(tmp_path):
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["compile=true"])):
        train(compose_config([*COMPILE_RUN, *COMPILE_STEPS, *extra], tmp_path / name))
        losses[name] = rows(tmp_path / name, "train/loss")
    eager, compiled = losses["eager"], losses["compiled"]
    assert sorted(eager) == sorted(compiled) == list(range(1, 11))
    diff = max(abs(eager[s] - compiled[s]) for s in eager)
    print(f"compile vs eager: largest loss difference {diff:.3g}")
    assert diff <= COMPILE_TOLERANCE, (eager, compiled)


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_every_gpu_trains_under_the_strategy(strategy, tmp_path):
    # trainer=fsdp: FSDP2 over NCCL, bf16 through the mixed-precision policy; on one GPU too
    run = tmp_path / strategy
    result = run_cli(
        "training/run_experiment.py",
        *RUN,
        f"trainer={strategy}",
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=20",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == torch.cuda.device_count()
    losses = rows(run, "train/loss")
    steps = sorted(losses)
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert losses[steps[-1]] < losses[steps[0]] - 0.3, losses
    model, _, _ = load_model(run / "checkpoints" / "last.ckpt")  # consolidated, on the CPU
    assert next(model.parameters()).dtype == torch.float32


# --------------------------------------------------------------------- scripts/gpu_check.sh
def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_a_gpu_runs_nothing_and_says_so(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU, here or on a GPU machine
    out = tmp_path / "check"
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch sees no CUDA GPU here; nothing was run" in result.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["gpus"] == 0 and report["status"].startswith("skipped")
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json"]


@pytest.mark.parametrize("gpus", [1, 4])
def test_every_gpu_check_command_parses(tmp_path, gpus):
    # each step's arguments as its program reads them: the benchmarks' argparse, the training
    # runs' Hydra overrides through the config checks, pytest's marker
    from llm_scratch.bench.__main__ import parser

    steps = gpu_check_module().plan(tmp_path, gpus)
    assert [s.name for s in steps] == [
        "tests",
        "throughput",
        "fsdp",
        "attention",
        "generation",
        "sweep",
        "fsdp_checkpointing",
    ]
    for step in steps:
        args = step.command[1:]
        if args[:2] == ["-m", "llm_scratch.bench"]:
            parsed = parser().parse_args(args[2:])
            assert parsed.out == str(tmp_path / f"{step.name}.json")
        elif args[0] == "training/run_experiment.py":
            overrides = [a for a in args[1:] if a != "-m" and "," not in a.split("=")[-1]]
            validate_config(compose_config(overrides, tmp_path / step.name))
        else:
            assert args[:6] == ["-m", "pytest", "-n", "0", "-m", "gpu"]  # one process
    sweep = next(s for s in steps if s.name == "sweep").command
    assert ("hydra.launcher.devices=[0,0]" in sweep) == (gpus == 1)


def test_gpu_check_reads_the_figures_each_step_leaves(tmp_path):
    gpu_check = gpu_check_module()
    steps = {s.name: s for s in gpu_check.plan(tmp_path, 1)}
    rows = {"rows": [{"variant": "(config)", "tokens_per_sec": 1.5e5, "mfu": 0.4, "x": 1}]}
    (tmp_path / "throughput.json").write_text(json.dumps(rows))
    assert gpu_check.figures(steps["throughput"], tmp_path) == {
        "rows": [
            {
                "variant": "(config)",
                "tokens_per_sec": 1.5e5,
                "mfu": 0.4,
                "peak_source": None,
                "speedup": None,
            }
        ]
    }
    steps["tests"].result = {"output_tail": "4 passed, 1 skipped in 80.1s"}
    assert gpu_check.figures(steps["tests"], tmp_path) == {"passed": 4, "skipped": 1}
    run = tmp_path / "fsdp"
    run.mkdir()
    (run / "metrics.csv").write_text(
        "step,train/loss,train/tokens_per_sec,train/mfu\n9,5.0,1000.0,0.3\n19,4.0,2000.0,0.35\n"
    )
    (run / "summary.json").write_text(json.dumps({"world_size": 1, "global_step": 20}))
    assert gpu_check.figures(steps["fsdp"], tmp_path) == {
        "train/loss": 4.0,
        "train/tokens_per_sec": 2000.0,
        "train/mfu": 0.35,
        "summary/world_size": 1,
        "summary/global_step": 20,
    }
