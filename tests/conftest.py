"""Test setup: use the shared offline data, never the network or the user's home.

Set at import time (before any test imports the package) unless already set:
LLM_SCRATCH_DATA_DIR -> <checkout>/../shared/data, TIKTOKEN_CACHE_DIR -> that/tiktoken,
LLM_SCRATCH_CACHE_DIR -> a fresh temporary folder for this test session; under pytest-xdist,
OMP_NUM_THREADS -> the cores divided by the workers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"

os.environ.setdefault("LLM_SCRATCH_DATA_DIR", str(SHARED_DATA_DIR))
os.environ.setdefault(
    "TIKTOKEN_CACHE_DIR", str(Path(os.environ["LLM_SCRATCH_DATA_DIR"]) / "tiktoken")
)
# pytest-xdist runs a worker per core: each worker, and every run it starts, takes its share of
# the cores (by default torch's OpenMP threads in every worker would take them all, and spin
# against each other)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
if "LLM_SCRATCH_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="llm_scratch_test_cache_")
    os.environ["LLM_SCRATCH_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder with the-verdict.txt, tinyshakespeare.txt and the tiktoken cache."""
    path = Path(os.environ["LLM_SCRATCH_DATA_DIR"])
    if not (path / "the-verdict.txt").is_file():
        pytest.skip(f"shared test data not found in {path}")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests marked ``slurm`` on one xdist worker (their jobs share the cluster's one
    node: two tests' jobs at once would wait on each other); skip the tests marked ``gpu`` where
    torch sees no CUDA GPU (as lightning-hydra-template's ``RunIf(min_gpus=1)``); torch is
    imported only when such a test is collected."""
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.xdist_group("slurm"))
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu; run by scripts/gpu_check.sh)")
    for item in gpu_items:
        item.add_marker(skip)
