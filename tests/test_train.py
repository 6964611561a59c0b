"""The training job end to end through the entry point's function, on CPU, on real corpora."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import yaml
from hydra.utils import instantiate

from llm_scratch.errors import UserError
from llm_scratch.model import GPTConfig
from llm_scratch.train.commands import continue_command, override, sample_command
from llm_scratch.train.job import train
from llm_scratch.train.validate import validate_config
from tests.helpers import FAST, REPO, column, compose_config, option_names, read_metrics, run_cli


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in ("data", "model", "trainer", "logger", "callbacks") for o in option_names(g)]
    + [("experiment", o) for o in option_names("experiment")],
)
def test_every_config_composes_and_instantiates(group, option, tmp_path):
    extra = ["data.path=" + str(tmp_path / "corpus.txt")] if option == "text" else []
    if option == "shards" or option == "code_cpu" or option.endswith("_code"):
        from llm_scratch.data.prepare import PrepareSettings, prepare

        # these read a prepared dataset (data=shards): The Verdict's, made here
        out = tmp_path / "verdict_shards"
        settings = dict(workers=1, progress="none", val_fraction=0.1)
        prepare(PrepareSettings(source="verdict", out=str(out), **settings), log=lambda _: None)
        extra = [f"data.path={out}"]
    cfg = compose_config([f"{group}={option}", *extra], tmp_path / "run")
    validate_config(cfg)
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size
    model_config = instantiate(cfg.model, vocab_size=50257)
    assert model_config.n_layer == cfg.model.n_layer
    # the GPU and DDP configs are instantiated on the CPU here: same keys, one CPU device
    trainer = instantiate(
        cfg.trainer, logger=False, enable_checkpointing=False, accelerator="cpu", devices=1
    )
    assert trainer.max_epochs == cfg.trainer.max_epochs
    # a node whose keys do not fit the class it names raises here
    for node in [*(cfg.callbacks or {}).values(), *(cfg.logger or {}).values()]:
        assert type(instantiate(node)).__name__ == node._target_.rsplit(".", 1)[-1]


# the corpora cut windows at a stride; instruction data (data=instruct) is examples, not windows,
# and prepared shards (data=shards) have no stride: their windows follow the context length
@pytest.mark.parametrize(
    "option", [o for o in option_names("data") if o not in ("instruct", "shards")]
)
def test_data_stride_follows_a_changed_context_length(option, tmp_path):
    # A shorter context must not skip text (or a longer one overlap) because of a fixed stride.
    extra = ["data.path=" + str(tmp_path / "corpus.txt")] if option == "text" else []
    cfg = compose_config([f"data={option}", "data.context_length=64", *extra], tmp_path / "run")
    assert instantiate(cfg.data).stride == 64


def test_model_presets_are_from_name_field_for_field(tmp_path):
    from dataclasses import asdict

    from llm_scratch.model.config import PRESETS

    names = set(option_names("model")) - {"hf_gpt2"}
    assert names == set(PRESETS)
    for name in PRESETS:
        cfg = compose_config([f"model={name}", "data.context_length=64"], tmp_path)
        trained = instantiate(cfg.model, vocab_size=50257)
        expected = asdict(GPTConfig.from_name(name, vocab_size=50257, context_length=64))
        assert asdict(trained) == expected, name  # the data sets vocabulary and context


def test_typo_and_wrong_type_are_named_before_anything_runs(tmp_path):
    # the groups without a schema (data, trainer, callbacks, logger): checked by validate_config
    cfg = compose_config(["+data.batchsize=4", *FAST], tmp_path / "run")
    with pytest.raises(UserError, match=r"Unknown config key 'data\.batchsize'"):
        train(cfg)
    cfg = compose_config(["trainer.max_epochs=many", *FAST], tmp_path / "run")
    with pytest.raises(UserError, match=r"trainer\.max_epochs.*wrong type"):
        train(cfg)
    cfg = compose_config(["data.batch_size=2.5", *FAST], tmp_path / "run")
    with pytest.raises(UserError, match=r"data\.batch_size.*wrong type.*int"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_verdict_run_learns_and_leaves_a_complete_run_dir(tmp_path):
    run = tmp_path / "run"
    cfg = compose_config([*FAST, "trainer.max_epochs=4", "optimizer.lr=3e-3"], run)
    metrics = train(cfg)
    rows = read_metrics(run)
    losses = column(rows, "train/loss")
    assert len(losses) == 4 * 9  # 18 windows of 256 tokens, batch 2, drop_last
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    val = column(rows, "val/loss")
    assert len(val) == 4 and val[-1] < val[0]
    assert metrics["val/ppl"] == pytest.approx(
        torch.tensor(metrics["val/loss"]).exp().item(), rel=1e-4
    )
    for name in ("config.yaml", "tokenizer.json", "samples.jsonl", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("best-*.ckpt"))
    assert (run / "samples.jsonl").read_text().count("Every effort moves you") == 4
    # plain hyperparameters: loads with torch's safe loader
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["n_layer"] == 3
    # the sampling script on the checkpoint the run produced
    out = subprocess.run(
        [
            sys.executable,
            "training/sample.py",
            f"ckpt_path={run}",
            "prompt=Every effort",
            "max_new_tokens=5",
            "num_samples=2",
            "temperature=0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.count("Every effort") == 2
    # resume from the run directory continues from its step, into a new directory
    resumed = tmp_path / "resumed"
    cfg = compose_config(
        [*FAST, "trainer.max_epochs=5", "optimizer.lr=3e-3", f"ckpt_path={run}"], resumed
    )
    train(cfg)
    steps = [int(r["step"]) for r in read_metrics(resumed) if r.get("train/loss")]
    assert steps[0] == 4 * 9 + 1 and steps[-1] == 5 * 9


@pytest.mark.slow
def test_shakespeare_char_run(tmp_path):
    run = tmp_path / "run"
    cfg = compose_config(
        [
            *FAST,
            "data=shakespeare_char",
            "data.context_length=64",
            "data.batch_size=8",
            "trainer.max_steps=6",
            "trainer.limit_val_batches=2",
            "trainer.val_check_interval=3",
        ],
        run,
    )
    metrics = train(cfg)
    assert cfg.model.context_length == 64
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["vocab_size"] == 65
    assert ckpt["global_step"] == 6
    assert 0 < metrics["val/loss"] < 6
    assert len(column(read_metrics(run), "val/loss")) == 2


def test_a_new_run_never_overwrites_an_earlier_one(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"earlier")
    cfg = compose_config(FAST, run)
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"earlier"


def test_sample_arguments_take_prompts_verbatim_and_check_types():
    from llm_scratch.sample import parse_args

    cfg = parse_args(["ckpt_path=run", "prompt=ROMEO: [1, 2]", "top_k=5", "temperature=0"])
    assert (cfg.prompt, cfg.top_k, cfg.temperature) == ("ROMEO: [1, 2]", 5, 0.0)
    with pytest.raises(UserError, match="Bad argument.*abc"):
        parse_args(["ckpt_path=run", "top_k=abc"])
    with pytest.raises(UserError, match="write key=value"):
        parse_args(["prompt"])
    with pytest.raises(UserError, match="ckpt_path is required"):
        parse_args(["prompt=hi"])


def test_step_options_count_optimizer_steps_under_gradient_accumulation(
    tmp_path, monkeypatch, shared_data_dir
):
    """With 2 batches per optimizer step, ``log_every_n_steps=3`` means steps 3 and 6 (batches
    6 and 12), for the throughput metrics and for the finite-loss check alike; tokens/s still
    counts every batch's tokens. (Counting batches gave steps 1, 3, 4 and 6.)"""
    from llm_scratch.train.callbacks import FiniteLossGuard
    from llm_scratch.train.module import GPTLightningModule

    logged, checks, checked_at = [], [], []
    log_dict = GPTLightningModule.log_dict
    check, batch_end = FiniteLossGuard.check, FiniteLossGuard.on_train_batch_end

    def spy_log_dict(module, metrics, *args, **kwargs):
        if "train/tokens_per_sec" in metrics:
            logged.append((module.trainer.global_step, metrics["train/tokens_seen"]))
        return log_dict(module, metrics, *args, **kwargs)

    def spy_check(guard):
        checks.append(1)
        return check(guard)

    def spy_batch_end(guard, trainer, *args):  # the checks made at batch ends, by step
        before = len(checks)
        batch_end(guard, trainer, *args)
        if len(checks) > before:
            checked_at.append(trainer.global_step)

    monkeypatch.setattr(GPTLightningModule, "log_dict", spy_log_dict)
    monkeypatch.setattr(FiniteLossGuard, "check", spy_check)
    monkeypatch.setattr(FiniteLossGuard, "on_train_batch_end", spy_batch_end)
    batch, context = 4, 16
    cfg = compose_config(
        [
            *FAST,
            "data.tokenizer=char",
            f"data.context_length={context}",
            f"data.batch_size={batch}",
            "trainer.accumulate_grad_batches=2",
            "trainer.log_every_n_steps=3",
            "trainer.max_steps=6",
            "trainer.limit_val_batches=0",
            # only the callbacks under test; no validation or checkpoint saves
            "callbacks.model_checkpoint=null",
            "callbacks.periodic_checkpoint=null",
            "callbacks.sigterm_checkpoint=null",
            "callbacks.final_checkpoint=null",
            "callbacks.text_sampler=null",
        ],
        tmp_path / "run",
    )
    train(cfg)
    tokens_per_step = 2 * batch * context
    assert logged == [(3, 3 * tokens_per_step), (6, 6 * tokens_per_step)]
    assert checked_at == [3, 6]


def test_help_shows_the_projects_text_groups_and_defaults():
    result = run_cli("training/run_experiment.py", "--help", "model=gpt-nano")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "train a GPT from scratch, or sweep ablations with -m" in out
    groups = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith("model: "))
    assert set(groups["model"].split(", ")) >= {"gpt2", "gpt-mini", "gpt-nano", "hf_gpt2"}
    # the composed config, with the override applied: the preset's sizes and every default
    assert "  n_layer: 3\n" in out and "  n_embd: 48\n" in out and "seed: 1337\n" in out


def test_a_default_run_console_is_quiet_and_says_where_the_run_went(tmp_path):
    # SLURM installed (a login node): Lightning's srun hint must not show either
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    run = tmp_path / "run with a long name" / ("deep" * 30)
    result = run_cli(
        "training/run_experiment.py",
        "model=gpt-nano",
        "trainer.max_steps=2",  # ends before the first validation
        "trainer.limit_val_batches=1",
        override("hydra.run.dir", run),
        env={"PATH": path},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    for noise in (
        "Tip:",
        "litlogger",
        "GPU available",
        "TPU available",
        "LeafSpec",
        "could not find the monitored key",
        "Total FLOPs: 0",
        "`weights_only` was not set",  # the checkpoint saved where the run ends
        "to estimate number of stepping batches",
        "Trainer already configured with model summary",
        "srun",
        "default_root_dir",  # the whole config: in the run directory, print_config=true prints it
    ):
        assert noise not in console, noise
    assert "ends the run before its first validation" in console  # our own warning stays
    # a model summary with real numbers, its rows whole (not a Rich table cut to 80 columns)
    flops = re.search(r"^(\S+(?: [KMBT])?)\s+Total Flops$", console, re.MULTILINE)
    assert flops and float(flops.group(1).split()[0]) > 0, console[-3000:]
    assert "[[1, 256, 50257], '?']" in console
    # the run directory in full (not cut at 80 columns), at the start and with commands at the end
    assert f"Run directory: {run}\n" in console
    assert f"Run finished: {run}\n" in console
    assert f"{sample_command(run)}\n" in console
    assert f"{continue_command(run)} trainer.max_steps=4" in console
    assert f"in full: {run / 'config.yaml'}; print_config=true prints it" in console
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["default_root_dir"] == str(run)
    assert result.stderr.strip() == "", result.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_print_config_prints_the_whole_config(tmp_path, capsys):
    train(compose_config([*FAST, "trainer.max_steps=1", "print_config=true"], tmp_path / "run"))
    out = capsys.readouterr().out
    assert f"default_root_dir: {tmp_path / 'run'}\n" in out and "optimizer:" in out


def _progress_trainer(global_step: int, done_in_epoch: int, epoch: int, run_steps: int):
    from types import SimpleNamespace

    progress = SimpleNamespace(current=SimpleNamespace(ready=done_in_epoch))
    return SimpleNamespace(
        num_training_batches=25,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        estimated_stepping_batches=run_steps,
        global_step=global_step,
        accumulate_grad_batches=1,
        current_epoch=epoch,
        max_epochs=10,
    )


@pytest.mark.parametrize(
    "global_step,done,epoch,run_steps,total,last_epoch",
    [
        (0, 0, 0, 40, 25, 1),  # max_steps=40 of 10 x 25: 25 batches now, ends in epoch 1
        (25, 0, 1, 40, 15, 1),  # the cut-short epoch has 15 batches, not 25
        (10, 10, 0, 250, 25, 9),  # the epochs end the run: all ten
        (30, 5, 1, 33, 8, 1),  # resumed mid-epoch: 5 done + 3 to go
    ],
)
def test_rich_progress_counts_toward_what_the_run_will_do(
    global_step, done, epoch, run_steps, total, last_epoch
):
    from llm_scratch.train.callbacks import RunRichProgressBar

    bar = RunRichProgressBar()
    bar._trainer = _progress_trainer(global_step, done, epoch, run_steps)
    assert bar.total_train_batches == total
    assert bar._get_train_description(epoch).strip() == f"Epoch {epoch}/{last_epoch}"


def test_log_lines_print_above_the_rich_bar(tmp_path):
    """On a terminal, a log line written while the bar is shown goes through the bar's console
    (Rich prints it above the bar) instead of into the bar; afterwards the handler writes where
    it wrote before."""
    import io
    import logging

    import lightning as L
    import rich
    from lightning.pytorch.demos.boring_classes import BoringModel
    from rich.file_proxy import FileProxy

    from llm_scratch.train.callbacks import RunRichProgressBar

    screen = io.StringIO()
    handler = logging.StreamHandler(sys.stdout)
    original = handler.stream
    log = logging.getLogger("tests.above_the_bar")
    log.addHandler(handler)
    seen = []

    class LogEachBatch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(type(handler.stream))
            log.warning("message at batch %d", batch_idx)

    bar = RunRichProgressBar(console_kwargs={"force_terminal": True, "file": screen})
    trainer = L.Trainer(
        max_steps=3,
        callbacks=[bar, LogEachBatch()],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    try:
        trainer.fit(BoringModel())
    finally:
        log.removeHandler(handler)
        rich.reconfigure()  # the bar reconfigured Rich's global console
    assert seen == [FileProxy] * 3
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # Rich's cursor moves
    lines = [line.strip() for line in text.splitlines() if "message at batch" in line]
    assert lines == [f"message at batch {i}" for i in range(3)]
    assert handler.stream is original


def test_progress_lines_count_steps_toward_max_steps(tmp_path):
    result = run_cli(
        "training/run_experiment.py",
        *FAST,
        "trainer.max_steps=12",  # 9 batches an epoch: ends 3 batches into the second
        "trainer.log_every_n_steps=3",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(("training:", "step "))]
    assert lines[0] == "training: 9 batches per epoch, 12 steps"
    assert lines[-1].startswith("step 12/12 (epoch 1, batch 3/9) ["), lines
    assert all("/12 (" in ln for ln in lines[1:]), lines


def test_sample_help_lists_every_option_with_its_default():
    from dataclasses import fields

    from llm_scratch.sample import SampleConfig

    result = run_cli("training/sample.py", "--help")
    assert result.returncode == 0, result.stderr
    for f in fields(SampleConfig):
        assert f"  {f.name} " in result.stdout, f.name
    assert "[200]" in result.stdout  # max_new_tokens' default
    assert "temperature=0 max_new_tokens=50 gives the same" in result.stdout  # as in training


def test_sample_takes_last_and_says_which_checkpoint(tmp_path):
    log_dir = tmp_path / "outputs"
    run = log_dir / "train" / "runs" / "one"
    train(compose_config([*FAST, "trainer.max_steps=2", "trainer.limit_val_batches=1"], run))
    result = run_cli(
        "training/sample.py",
        "ckpt_path=last",
        "max_new_tokens=3",
        "device=cpu",
        env={"LLM_SCRATCH_LOG_DIR": str(log_dir)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in result.stderr


def test_progress_lines_show_no_stale_validation_loss(capsys, monkeypatch):
    """The line printed just before a validation showed the previous validation's val/loss as
    if it were current: training lines show training figures; validation prints its own."""
    from types import SimpleNamespace

    from llm_scratch.train.callbacks import LineProgressBar

    bar = LineProgressBar(refresh_rate=1)
    trainer = SimpleNamespace(
        num_training_batches=4,
        global_step=4,
        estimated_stepping_batches=8,
        current_epoch=0,
        is_global_zero=True,
    )
    bar._trainer = trainer
    bar._first_step = 0
    shown = {"train/loss": 2.5, "val/loss": 3.1, "val/ppl": 22.2, "v_num": 0}
    monkeypatch.setattr(bar, "get_metrics", lambda trainer, module: shown)
    bar.on_train_batch_end(trainer, None, None, None, 3)  # the epoch's last batch: validation next
    out = capsys.readouterr().out
    assert "step 4/8" in out and "train/loss 2.5" in out
    assert "val/" not in out, out
