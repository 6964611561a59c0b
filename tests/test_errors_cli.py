"""One-line errors through the real entry points: output directories Hydra cannot create, failed
and stopped sweeps, damaged sweep files for the report, bad sampling requests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def run_cli(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


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
