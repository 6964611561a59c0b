"""What a library still raises from a user's setting comes out as one line: a validation
interval longer than an epoch, a full disk while torch.save writes, a non-ASCII path."""

from __future__ import annotations

import pytest
import torch

from llm_scratch.errors import UserError
from llm_scratch.train.job import train
from tests.helpers import CHAR_VERDICT, compose_config, run_cli

TINY = [
    *CHAR_VERDICT,
    "trainer.max_steps=4",
]


def test_a_validation_interval_longer_than_an_epoch_says_how(tmp_path):
    with pytest.raises(
        UserError,
        match=r"val_check_interval=100000 is more than the 23 .*"
        r"check_val_every_n_epoch=null",
    ) as info:
        train(compose_config([*TINY, "trainer.val_check_interval=100000"], tmp_path / "a"))
    assert "\n" not in str(info.value)
    # and the way it names works: every 3 batches across epochs
    overrides = [*TINY, "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null"]
    train(compose_config(overrides, tmp_path / "b"))


def test_a_full_disk_inside_torch_save_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as RuntimeError (inline_container.cc)."""
    run = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    cfg = compose_config(
        [*TINY, "trainer.max_steps=6", "callbacks.periodic_checkpoint.every_n_train_steps=2"], run
    )
    with pytest.raises(UserError, match=r"Could not write the checkpoint .*MiB free.*kept"):
        train(cfg)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]


def test_a_non_ascii_path_says_to_quote_it(tmp_path):
    out = run_cli("training/run_experiment.py", *TINY, "data=text", "data.path=/data/ünï/côde.txt")
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "quote" in lines[0] and "data.path='/data/ünï/côde.txt'" in lines[0], lines[0]


def test_init_from_a_hub_name_offline_fails_at_once(tmp_path, monkeypatch):
    import socket
    import time

    from llm_scratch import hub

    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(hub, "_cached", lambda name: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # restored after the test
    start = time.monotonic()
    with pytest.raises(UserError, match=r"init_from=gpt2: cannot reach huggingface.co .*cache"):
        train(compose_config([*TINY, "init_from=gpt2"], tmp_path / "run"))
    assert time.monotonic() - start < 20
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*"))
    # cached: the cached files are used, without retrying the network
    monkeypatch.setattr(hub, "_cached", lambda name: True)
    hub.check_hub_name("gpt2")
    assert __import__("os").environ["HF_HUB_OFFLINE"] == "1"


def test_a_model_too_large_for_memory_is_one_line_while_it_is_built(tmp_path):
    # 12 * 2**40 weights (48 TiB): the allocator refuses while the model is built, before
    # training (and its out-of-memory message about batches) starts
    big = ["model.n_layer=1", "model.n_head=1", "model.n_embd=1048576"]
    with pytest.raises(UserError, match=r"Out of memory while building the model \(n_layer=1"):
        train(compose_config([*TINY, *big], tmp_path / "run"))
    assert not any((tmp_path / "run").rglob("*"))
