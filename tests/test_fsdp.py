"""trainer=fsdp: sharded training (FSDP2 on Lightning's ModelParallelStrategy) with 2 CPU
processes (gloo), against one process on the same global batch; its checkpoints continue a run,
sample and export like any other run's."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from llm_scratch.checkpoint import load_model
from llm_scratch.compat import shard_data_parallel_over_all_devices
from llm_scratch.errors import UserError
from llm_scratch.model import GPT, GPTConfig
from llm_scratch.train.sharding import (
    FSDP2Strategy,
    checkpoint_activations,
    decoder_blocks,
    optimizer_state_by_name,
    shard_model,
)
from llm_scratch.train.validate import validate_config
from tests.helpers import compose_config, run_cli

# gpt-nano, char-level Verdict, 64 random windows of 32 characters per epoch: 4 steps of a
# global batch of 16 windows an epoch, 2 epochs. Dropout 0: each process would draw its own
# masks (the same ones for its 8 rows as the other process), so only without dropout are the
# sharded and the one-process computation the same arithmetic. A small gradient-clipping
# threshold, so that every step is clipped: the gradient norm must be the global one.
# The sharded model has the per-head loop attention, cloned layers and the tied LM head.
MODEL = ["model.attention=loop", "model.layer_init=clone", "model.tie_weights=true"]
RUN = [
    "model=gpt-nano",
    "model.dropout=0.0",
    *MODEL,
    "data.tokenizer=char",
    "data.context_length=32",
    "data.sampling=random",
    "data.samples_per_epoch=64",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.max_epochs=2",
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "trainer.gradient_clip_val=0.05",
    "scheduler.total_steps=8",
    "callbacks.text_sampler.max_new_tokens=8",
    "+callbacks.global_losses._target_=tests.test_fsdp.GlobalLosses",
]
SHARDED = [
    "trainer=fsdp",
    "trainer.devices=2",
    "data.batch_size=8",
    "trainer.strategy.activation_checkpointing=true",
]
# The reference: one process on the whole global batch of 16. trainer=ddp with one device, so
# that Lightning wraps the sampler as under 2 processes (DistributedSampler reshuffles the
# epoch's order with the global seed; rank r takes every other window of it): batch k of the
# one process holds exactly the windows of batch k of both sharded processes together.
SINGLE = ["trainer=ddp", "trainer.devices=1", "data.batch_size=16"]
# float32 sums in another order (two per-process means averaged, a reduce-scatter of the
# gradients instead of one backward over the batch) differ in the last bits: 2.4e-7 to 4.8e-7
# here (one or two float32 ulps at a loss of 4), over 8 AdamW steps. A wrong batch split or a
# gradient not averaged over both processes differs by 1e-3 or more from the first step on.
TOLERANCE = 1e-5


class GlobalLosses(L.Callback):
    """Writes ``global_losses.json`` into the run directory: each step's training loss averaged
    over the processes, the loss of the whole global batch (Lightning logs rank 0's own).
    One all-reduce per step: a test's instrument, not for real runs."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self.losses[trainer.global_step] = float(loss)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "global_losses.json"
            path.write_text(json.dumps(self.losses))


def train(run_dir: Path, *overrides: str, expect: int = 0) -> str:
    result = run_cli("training/run_experiment.py", *RUN, *overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == expect, result.stderr[-3000:]
    return result.stderr


def global_losses(run_dir: Path) -> dict[int, float]:
    return {int(k): v for k, v in json.loads((run_dir / "global_losses.json").read_text()).items()}


def val_losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["val/loss"]) for r in csv.DictReader(f) if r["val/loss"]}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("single") / "run"
    train(run, *SINGLE)
    return run


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sharded") / "run"
    train(run, *SHARDED)
    return run


@pytest.mark.slow
def test_sharded_losses_equal_one_process_on_the_same_global_batch(single, sharded):
    one, two = global_losses(single), global_losses(sharded)
    assert sorted(one) == sorted(two) == list(range(1, 9))
    diff = max(abs(one[s] - two[s]) for s in one)
    print(f"largest training-loss difference: {diff:.3g}")
    assert diff <= TOLERANCE, (one, two)
    assert one[8] < one[1] - 0.05  # it trained
    v1, v2 = val_losses(single), val_losses(sharded)
    assert sorted(v1) == sorted(v2) == [4, 8]
    assert max(abs(v1[s] - v2[s]) for s in v1) <= TOLERANCE
    summary = json.loads((sharded / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 8


@pytest.mark.slow
def test_sharded_checkpoint_samples_and_matches_the_samples_in_training(sharded, tmp_path):
    # samples.jsonl: every process generated (sharded weights), rank 0 wrote one line each time
    samples = [json.loads(line) for line in (sharded / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [4, 8]
    last = sharded / "checkpoints" / "last.ckpt"
    model, tokenizer, checkpoint = load_model(last)
    assert checkpoint["global_step"] == 8
    # one consolidated state dict: full-size tensors, the tied head saved as the embedding
    state = checkpoint["state_dict"]
    assert state["model.transformer.wte.weight"].shape == (model.config.vocab_size, 48)
    assert torch.equal(state["model.lm_head.weight"], state["model.transformer.wte.weight"])
    assert model.lm_head.weight is model.transformer.wte.weight
    # layer_init=clone: the blocks started equal and were trained apart
    blocks = [state[f"model.transformer.h.{i}.mlp.c_fc.weight"] for i in range(3)]
    assert blocks[0].shape == (192, 48) and not torch.equal(blocks[0], blocks[1])
    result = run_cli(
        "training/sample.py",
        f"ckpt_path={last}",
        "prompt=Every effort moves you",
        "max_new_tokens=8",
        "temperature=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert samples[-1]["text"] in result.stdout.splitlines()


@pytest.mark.slow
def test_sharded_run_stopped_by_sigterm_continues_exactly(sharded, tmp_path):
    # SIGTERM in the batch that ends epoch 0 (step 4), on both processes, as Lightning's handler
    # passes it on: last.ckpt is gathered from both and saved, the run exits 143 with one line.
    # (No validation at that step: a SIGTERM during one saves nothing, as for DDP. And at an
    # epoch's end: a multi-process run continued mid-epoch restarts that epoch.)
    stopped = tmp_path / "stopped"
    err = train(
        stopped,
        *SHARDED,
        "trainer.check_val_every_n_epoch=2",
        "+callbacks.stop._target_=tests.reliability_helpers.FakeSigterm",
        "+callbacks.stop.at_step=4",
        expect=143,
    )
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines and "saved checkpoints/last.ckpt at step 4" in lines[0], err[-3000:]
    continued = tmp_path / "continued"
    train(continued, *SHARDED, f"ckpt_path={stopped}")
    after, whole = global_losses(continued), global_losses(sharded)
    assert sorted(after) == [5, 6, 7, 8]
    assert max(abs(after[s] - whole[s]) for s in after) <= TOLERANCE, (after, whole)


# ------------------------------------------------------------------ in one process, fast
def nano(**overrides) -> GPT:
    torch.manual_seed(0)
    fields = dict(vocab_size=65, context_length=16, attention="loop", layer_init="clone")
    return GPT(GPTConfig.from_name("gpt-nano", **{**fields, **overrides}))


class ForwardCounter:
    """Counts the forward calls of every block's MLP and records its weight's dtype then."""

    def __init__(self, model: GPT) -> None:
        self.dtypes: list[torch.dtype] = []
        for block in decoder_blocks(model):
            block.mlp.c_fc.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.dtypes.append(module.weight.dtype)


def test_activation_checkpointing_recomputes_each_block_and_changes_nothing_else():
    plain = nano(dropout=0.1)
    checkpointed = copy.deepcopy(plain)
    for block in decoder_blocks(checkpointed):
        checkpoint_activations(block)
    counts = ForwardCounter(plain), ForwardCounter(checkpointed)
    x = torch.randint(0, 65, (4, 16))
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks, recomputed ones included
        _, loss = model(x, x)
        loss.backward()
        grads.append([p.grad for p in model.parameters()])
    assert len(counts[0].dtypes) == 3 and len(counts[1].dtypes) == 6  # forward, then again
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert list(plain.state_dict()) == list(checkpointed.state_dict())  # no name changes
    checkpointed.generate(x[:, :4], 3)  # generation (eval, no grad) runs each block once
    assert len(counts[1].dtypes) == 6 + 3 * 3


@pytest.fixture
def one_process_group():
    """A gloo process group of one process, for fully_shard without a launcher."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("tie_weights", [True, False], ids=["tied", "untied"])
def test_shard_model_wraps_every_block_and_keeps_the_model(one_process_group, tie_weights):
    plain = nano(tie_weights=tie_weights, dropout=0.0)
    sharded = copy.deepcopy(plain)
    shard_model(sharded, one_process_group, activation_checkpointing=True)
    shard_model(sharded, one_process_group)  # again (Lightning's validate after fit): no-op
    assert isinstance(sharded, FSDPModule)
    assert all(isinstance(b, FSDPModule) for b in sharded.transformer.h)
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    assert (sharded.lm_head.weight is sharded.transformer.wte.weight) == tie_weights
    x = torch.randint(0, 65, (2, 16))
    losses = []
    for model in (plain, sharded):
        _, loss = model(x, x)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-6)
    wte = sharded.transformer.wte.weight.grad.full_tensor()
    torch.testing.assert_close(wte, plain.transformer.wte.weight.grad, rtol=0, atol=1e-6)
    # the checkpoint form: one full state dict with the names and values of the plain model
    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    assert list(full) == list(plain.state_dict())
    for name, value in plain.state_dict().items():
        assert torch.equal(full[name], value), name
    # generate() outside forward gathers the root's weights (embeddings, LM head) too
    prompt = x[:, :4]
    greedy = dict(max_new_tokens=5, temperature=0.0)
    assert torch.equal(sharded.generate(prompt, **greedy), plain.generate(prompt, **greedy))


def test_bf16_gathers_the_weights_in_bfloat16_and_keeps_float32_shards(one_process_group):
    model = nano()
    counter = ForwardCounter(model)
    shard_model(model, one_process_group, bf16=True)
    x = torch.randint(0, 65, (2, 16))
    _, loss = model(x, x)
    loss.backward()
    assert counter.dtypes == [torch.bfloat16] * 3  # what the blocks compute with
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # what AdamW updates
    assert {p.grad.dtype for p in model.parameters()} == {torch.float32}


def test_the_mesh_is_data_parallel_over_every_device_of_every_node():
    strategy = FSDP2Strategy()
    # the private fields the shim sets are the ones Lightning's setup_environment reads
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == ("auto", "auto")
    strategy.num_nodes = 2
    strategy.parallel_devices = [torch.device("cpu")] * 4
    shard_data_parallel_over_all_devices(strategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (8, 1)


def test_trainer_fsdp_composes_and_refuses_what_it_cannot_train_with(tmp_path):
    cfg = compose_config(["trainer=fsdp"], tmp_path)
    assert cfg.trainer.strategy._target_ == "llm_scratch.train.sharding.FSDP2Strategy"
    assert cfg.trainer.precision == "bf16-mixed"
    validate_config(cfg)
    validate_config(compose_config(["trainer=fsdp", "trainer.precision=32-true"], tmp_path))
    with pytest.raises(UserError, match=r"trainer=fsdp does not combine with trainer.precision"):
        validate_config(compose_config(["trainer=fsdp", "trainer.precision=16-mixed"], tmp_path))
    with pytest.raises(UserError, match=r"Unknown config key 'trainer.strategy.tensor_parallel"):
        validate_config(
            compose_config(["trainer=fsdp", "+trainer.strategy.tensor_parallel_size=2"], tmp_path)
        )
    validate_config(compose_config(["trainer=ddp", "trainer.precision=16-mixed"], tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first", "then"),
    [(SINGLE, SHARDED), (SHARDED, SINGLE)],
    ids=["one-to-sharded", "sharded-to-one"],
)
def test_a_run_continues_across_one_process_and_sharded(single, tmp_path, first, then):
    # stopped at the end of epoch 0 (step 4) in one mode, continued in the other: the same
    # losses as the one process that never stopped, so the AdamW moments went to the right
    # parameters (a checkpoint of one process keys them group by group, decay then no decay)
    stopped, continued = tmp_path / "stopped", tmp_path / "continued"
    train(stopped, *first, "trainer.max_steps=4")
    train(continued, *then, f"ckpt_path={stopped}")
    after, whole = global_losses(continued), global_losses(single)
    assert sorted(after) == [5, 6, 7, 8]
    assert max(abs(after[s] - whole[s]) for s in after) <= TOLERANCE, (after, whole)


@pytest.mark.slow
def test_sharded_checkpoint_exports_to_gpt2_and_starts_a_sharded_fine_tune(sharded, tmp_path):
    transformers = pytest.importorskip("transformers")
    model, _, _ = load_model(sharded / "checkpoints" / "last.ckpt")
    model.save_hf(tmp_path / "gpt2")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], rtol=0, atol=1e-4)
    # init_from=<the sharded run>: its weights, loaded before this run shards them again
    tuned = tmp_path / "tuned"
    train(tuned, *SHARDED, f"init_from={sharded}", "trainer.max_steps=2")
    assert global_losses(tuned)[1] < global_losses(sharded)[1] - 0.1


def test_trainer_fsdp_on_several_nodes_through_the_slurm_launcher(tmp_path):
    cfg = compose_config(
        ["hydra/launcher=slurm", "trainer=fsdp", "trainer.devices=4", "trainer.num_nodes=2"],
        tmp_path,
    )
    from hydra_plugins.llm_scratch_launcher.slurm_launcher import Partition, job_resources

    # the launcher's auto settings follow the trainer: 2 nodes of 4 tasks, a GPU each
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    gpus = Partition("gpu", True, True, nodes=2, cpus=64, mem_mb=512_000, gpus=8)
    asked = job_resources(launcher, cfg, gpus)
    assert (asked.nodes, asked.gpus_per_node, asked.tasks_per_node) == (2, 4, 4)
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == 4
    validate_config(cfg)


def test_optimizer_state_by_name_matches_the_saved_groups_in_order():
    model = nano()
    groups = model.optimizer_param_groups(0.1)  # decay, then no decay: not parameters() order
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    x = torch.randint(0, 65, (2, 16))
    model(x, x)[1].backward()
    optimizer.step()
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = optimizer_state_by_name(optimizer.state_dict(), optimizer.param_groups, names)
    params = dict(model.named_parameters())
    assert sorted(by_name["state"]) == sorted(params)
    for name, state in by_name["state"].items():
        assert torch.equal(state["exp_avg"], optimizer.state[params[name]]["exp_avg"]), name
    decay = [names[id(p)] for p in groups[0]["params"]]
    assert by_name["param_groups"][0]["params"] == decay
    assert optimizer_state_by_name(by_name, optimizer.param_groups, names) is by_name
