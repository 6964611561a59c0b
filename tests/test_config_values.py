"""Every user-settable value whose validity is knowable is checked before anything runs: one
line naming the key the user set, nothing written."""

from __future__ import annotations

import pytest

from llm_scratch.errors import UserError
from llm_scratch.train.job import train
from tests.helpers import CHAR_VERDICT, compose_config, run_cli

TINY = [
    *CHAR_VERDICT,
    "trainer.max_steps=2",
]


@pytest.mark.parametrize(
    "override,match",
    [
        ("trainer.accumulate_grad_batches=0", r"trainer.accumulate_grad_batches=0 is out of range"),
        ("trainer.gradient_clip_val=-1", r"trainer.gradient_clip_val=-1 .*null or 0 switches"),
        ("trainer.log_every_n_steps=0", r"^trainer.log_every_n_steps=0 is out of range"),
        ("trainer.val_check_interval=0", r"trainer.val_check_interval=0 is out of range"),
        ("trainer.val_check_interval=1.5", r"trainer.val_check_interval=1.5 is out of range"),
        ("trainer.max_steps=0", r"trainer.max_steps=0 is out of range"),
        ("trainer.max_epochs=0", r"trainer.max_epochs=0 is out of range.*0 trains nothing"),
        ("data.batch_size=0", r"data.batch_size=0 is out of range"),
        ("callbacks.text_sampler.temperature=-1", r"callbacks.text_sampler.temperature=-1 "),
        ("callbacks.text_sampler.max_new_tokens=-1", r"callbacks.text_sampler.max_new_tokens=-1"),
        ("callbacks.text_sampler.top_k=0", r"callbacks.text_sampler.top_k=0 is out of range"),
        ("data.batch_size=${nope}", r"'data.batch_size'='\$\{nope\}' cannot be resolved"),
    ],
    ids=lambda v: v if "=" in v else "",
)
def test_out_of_range_values_are_refused_before_anything_runs(tmp_path, override, match):
    run = tmp_path / "run"
    with pytest.raises(UserError, match=match) as info:
        train(compose_config([*TINY, override], run))
    assert "\n" not in str(info.value)
    assert not run.exists() or not any(run.rglob("*"))


def test_an_unresolvable_value_is_one_line_naming_its_key(tmp_path):
    out = run_cli(
        "training/run_experiment.py",
        *TINY,
        "data.batch_size=${nope}",
        f"hydra.run.dir={tmp_path}/r",
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Error executing job" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Config key 'data.batch_size'"), lines


def test_values_in_range_still_train(tmp_path):
    overrides = ["trainer.gradient_clip_val=0", "callbacks.text_sampler.top_k=5"]
    train(compose_config([*TINY, *overrides, "trainer.val_check_interval=2"], tmp_path / "run"))
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
