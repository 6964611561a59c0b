"""One-line errors through the real entry points: output directories Hydra cannot create, failed
and stopped sweeps, damaged sweep files for the report, bad sampling requests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, char_checkpoint, run_cli


def one_error_line(out: subprocess.CompletedProcess, *words: str, code: int = 2) -> str:
    """The single ``error:`` line of a run that failed with ``code`` and no traceback."""
    assert out.returncode == code, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# ----------------------------------------------------------------------------- output directories
@pytest.mark.parametrize(
    "args,words",
    [
        (["hydra.run.dir={blocker}/run"], ["{blocker}/run", "a file, not a directory"]),
        (["paths.log_dir={blocker}/x"], ["{blocker}/x/train/runs/", "paths.log_dir=<dir>"]),
        (["-m", "paths.log_dir={blocker}/x"], ["{blocker}/x/train/multiruns/", "{blocker}:"]),
    ],
    ids=["run_dir", "log_dir", "log_dir_multirun"],
)
def test_uncreatable_output_dir_is_one_line(tmp_path, args, words):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = run_cli(
        "training/run_experiment.py", *(a.format(blocker=blocker) for a in args), "model=gpt-nano"
    )
    one_error_line(
        out, "Cannot create the output directory", *(w.format(blocker=blocker) for w in words)
    )


# ----------------------------------------------------------------------------- sweeps
def test_failed_sweep_job_is_one_line_and_its_output_is_kept(tmp_path):
    sweep = tmp_path / "sweep"
    # fails on the bad value in the job, before any training (a wrong type would already be
    # refused when the sweep composes its config)
    out = run_cli(
        "training/run_experiment.py",
        "-m",
        "model=gpt-nano",
        "model.n_layer=0",
        f"hydra.sweep.dir={sweep}",
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Error executing job" not in out.stderr, out.stderr
    # the job's own error line, then the sweep's
    child, last = out.stderr.strip().splitlines()[-2:]
    assert child.startswith("error: Bad model configuration: GPTConfig.n_layer=0"), out.stderr
    assert last.startswith("error: Sweep job #0 (model=gpt-nano model.n_layer=0)"), last
    assert f"{sweep / '0' / 'job_output.log'}" in last and "1 of 1 job(s) failed" in last
    assert child in (sweep / "0" / "job_output.log").read_text()
    # the sweep directory in full, at the start and with the report command at the end
    assert f"Sweep directory: {sweep}\n" in out.stdout, out.stdout
    assert f"report: python training/report.py {sweep}" in out.stdout, out.stdout


def test_gpu_parallel_sweep_without_gpus_is_one_line(tmp_path):
    out = run_cli(
        "training/run_experiment.py",
        "-m",
        "hydra/launcher=gpu_parallel",
        "model=gpt-nano",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    one_error_line(out, "devices_per_job=1 but only 0 GPU(s)", "devices_per_job=null")


@pytest.mark.slow  # a sweep that trains until it is stopped
def test_sigterm_to_a_sweep_stops_its_job_with_a_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    environ = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    parent = subprocess.Popen(
        [
            sys.executable,
            "training/run_experiment.py",
            "-m",
            "model=gpt-nano",
            "data.tokenizer=char",
            "data.context_length=32",
            "data.batch_size=8",
            "trainer.accelerator=cpu",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_model_summary=false",
            "trainer.max_steps=100000",
            "+callbacks.throttle._target_=tests.reliability_helpers.Throttle",
            "+callbacks.throttle.seconds=0.1",
            "model.pre_norm=true,false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = sweep / "0" / "job_output.log"
    deadline = time.monotonic() + 120
    # the job is training once it has printed its batches per epoch
    while not (output.is_file() and "batches per epoch" in output.read_text()):
        assert parent.poll() is None, parent.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # the job runs from a thread of the sweep: its children are listed under that thread
    tasks = Path(f"/proc/{parent.pid}/task").glob("*/children")
    children = [pid for task in tasks for pid in task.read_text().split()]
    assert len(children) == 1, children
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=120)

    assert parent.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: Sweep stopped by SIGTERM"), err[-3000:]
    assert f"hydra.sweep.dir={sweep}" in last and "#1 did not start" in last, last
    assert not Path(f"/proc/{children[0]}").exists(), "the job outlived the sweep"
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()
    assert not (sweep / "1").exists()


# ----------------------------------------------------------------------------- sweep reports
def damaged_sweep(root: Path) -> Path:
    """A one-job sweep directory whose job was killed while writing its last metrics row and
    its last sample."""
    job = root / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- model.pre_norm=false\n")
    (job / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,0,10.5,\n0,1,9.5,9.8\n0,2,9.4e"
    )
    (job / "samples.jsonl").write_text('{"step": 1, "text": "Every effort"}\n{"step": 2, "te')
    return root / "sweep"


def test_report_skips_damaged_rows_and_lines_with_a_warning(tmp_path, caplog):
    from llm_scratch.report import collect_jobs

    (job,), _ = collect_jobs(damaged_sweep(tmp_path))
    assert job.train_curve == [(0, 10.5), (1, 9.5)] and job.val_curve == [(1, 9.8)]
    assert job.sample == "Every effort"
    warnings = [r.getMessage() for r in caplog.records]
    assert any("1 damaged row(s)" in w and "metrics.csv" in w for w in warnings), warnings
    assert any("1 damaged line(s)" in w and "samples.jsonl" in w for w in warnings), warnings


def test_report_to_an_unwritable_out_is_one_line(tmp_path):
    sweep = damaged_sweep(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out_dir in (blocker, blocker / "sub"):
        out = run_cli("training/report.py", str(sweep), "--out", str(out_dir))
        one_error_line(out, f"Cannot write the report to {out_dir}", "--out DIR")


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize(
    "args,match",
    [
        (["device=gpu"], "device=gpu is not a device torch knows: use cpu, cuda"),
        (["num_samples=0"], "num_samples=0: ask for at least 1 sample"),
        (["num_samples=-2"], "num_samples=-2: ask for at least 1 sample"),
    ],
)
def test_sample_bad_device_or_count_is_one_line(tmp_path, capsys, args, match):
    from llm_scratch import sample

    ckpt = char_checkpoint(tmp_path / "char.ckpt")
    assert sample.main([f"ckpt_path={ckpt}", "prompt=hello", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err


def test_sample_on_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    import torch

    from llm_scratch import sample

    ckpt = char_checkpoint(tmp_path / "char.ckpt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("cuda", "cuda:1"):
        assert sample.main([f"ckpt_path={ckpt}", "prompt=hello", f"device={device}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"device={device} but" in err and "device=cpu" in err


def test_sample_from_a_file_that_is_no_checkpoint_says_so(tmp_path, capsys):
    from llm_scratch import sample

    notes = tmp_path / "notes.txt"
    notes.write_text("hello, these are my notes\n")
    assert sample.main([f"ckpt_path={notes}", "prompt=hello"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{notes} is not a checkpoint" in err, err
    assert "refused" not in err


# ----------------------------------------------------------------------------- sweep without -m
@pytest.mark.parametrize("in_sweep", [False, True], ids=["single_run", "sweep_job"])
def test_a_sweep_started_without_m_warns(tmp_path, in_sweep):
    env = {"LLM_SCRATCH_SWEEP_ID": "train-x"} if in_sweep else {}
    # a missing data file ends the run right after the warning
    overrides = ["experiment=ablation_norm_cpu", "data=text", f"data.path={tmp_path / 'no.txt'}"]
    out = run_cli(
        "training/run_experiment.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}", env=env
    )
    one_error_line(out, "no.txt")
    warned = "defines a sweep over seed, model.pre_norm" in out.stdout + out.stderr
    assert warned != in_sweep, out.stdout  # a sweep's own jobs are single runs: no warning
    if not in_sweep:
        assert f"python training/run_experiment.py -m {' '.join(overrides)}" in out.stdout
