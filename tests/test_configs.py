"""The composed configs: warm-up settings of the scheduler and of every experiment. Also: every
user-settable value whose validity is knowable is checked before anything runs, with one line
naming the key the user set and nothing written."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from llm_scratch.errors import UserError
from llm_scratch.train.job import train
from llm_scratch.train.optim import SchedulerConfig
from llm_scratch.train.validate import validate_config
from tests.helpers import CHAR_VERDICT, compose_config, option_names, run_cli

# Warm-up steps over a 1000-step run, as the scheduler computed them before warmup_steps and
# warmup_fraction defaulted to null; per sweep job for the ablations that sweep the warm-up.
WARMUP_AT_1000 = {
    None: [50],  # the default: 5% of the run
    "label_shift": [20],
    "instruct_cpu": [20],
    "shakespeare_baby": [100],
    "shakespeare_cpu": [50],
    "nanogpt_cpu": [100],
    "ablation_norm": [0, 100],
    "ablation_norm_cpu": [0, 100],
    "ablation_lr": [100, 0],
    "ablation_lr_cpu": [100, 0],
    # the code study: 10% warm-up; its lr ablation sweeps the peaks with the warm-up only
    "code_cpu": [100],
    "ablation_norm_code": [0, 100],
    "ablation_init_code": [100],
    "ablation_tying_code": [100],
    "ablation_lr_code": [100],
    "ablation_attention_code": [100],
}
EXPERIMENTS = option_names("experiment")


def _sweep_jobs(cfg) -> list[dict]:
    """The scheduler settings of each job of the config's sweep (one job without a sweep)."""
    params = cfg.hydra.sweeper.params
    params = OmegaConf.to_container(params) if params is not None else {}
    jobs: list[dict] = [{}]
    for key, values in params.items():
        if key.startswith("scheduler."):
            name = key.split(".", 1)[1]
            values = [yaml.safe_load(v) for v in str(values).split(",")]
            jobs = [{**job, name: v} for job in jobs for v in values]
    return jobs


def _warmups(overrides: list[str], tmp_path) -> list[int]:
    cfg = compose_config(overrides, tmp_path / "run")
    validate_config(cfg)
    base = OmegaConf.to_container(cfg.scheduler, resolve=True)
    return [SchedulerConfig(**{**base, **job}).warmup(1000) for job in _sweep_jobs(cfg)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """A prepared dataset (The Verdict's), for the experiments on data=shards."""
    from llm_scratch.data.prepare import PrepareSettings, prepare

    out = tmp_path_factory.mktemp("data") / "verdict"
    settings = dict(workers=1, progress="none", val_fraction=0.1)
    prepare(PrepareSettings(source="verdict", out=str(out), **settings), log=lambda _: None)
    return str(out)


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_experiment_keeps_its_warmup(experiment, tmp_path, shards):
    overrides = [] if experiment is None else [f"experiment={experiment}"]
    if experiment and (experiment == "code_cpu" or experiment.endswith("_code")):
        overrides.append(f"data.path={shards}")  # the prepared corpus: the user's to give
    assert _warmups(overrides, tmp_path) == WARMUP_AT_1000.get(experiment, [0])


def test_norm_ablation_on_a_base_with_warmup_steps_sweeps_the_fraction(tmp_path):
    assert _warmups(["experiment=shakespeare_cpu", "ablation=norm"], tmp_path) == [0, 100]


def test_lr_ablation_sweeps_six_peaks_on_one_schedule_whatever_the_base(tmp_path):
    cfg = compose_config(["experiment=shakespeare_cpu", "ablation=lr"], tmp_path / "run")
    params = cfg.hydra.sweeper.params
    assert [float(v) for v in params["optimizer.lr"].split(",")] == [
        1e-5,
        3e-5,
        1e-4,
        3e-4,
        1e-3,
        3e-3,
    ]
    # shakespeare_cpu's own min_lr (2e-4, above the lowest peaks) and warm-up steps are overridden
    base = OmegaConf.to_container(cfg.scheduler, resolve=True)
    for job in _sweep_jobs(cfg):
        scheduler = SchedulerConfig(**{**base, **job})
        assert (scheduler.name, scheduler.min_lr) == ("cosine", 0.0)
    assert _warmups(["experiment=shakespeare_cpu", "ablation=lr"], tmp_path) == [100, 0]


@pytest.mark.parametrize(
    "override, warmup",
    [
        ("scheduler.warmup_steps=10", 10),
        ("scheduler.warmup_fraction=0.2", 200),
        ("scheduler.warmup_steps=0", 0),
        ("scheduler.warmup_fraction=0.0", 0),
    ],
)
def test_either_warmup_key_alone_works(override, warmup, tmp_path):
    assert _warmups([override], tmp_path) == [warmup]


def test_two_conflicting_warmups_are_refused(tmp_path):
    cfg = compose_config(
        ["scheduler.warmup_steps=10", "scheduler.warmup_fraction=0.1"], tmp_path / "run"
    )
    with pytest.raises(UserError, match="both set a warm-up"):
        SchedulerConfig(**OmegaConf.to_container(cfg.scheduler, resolve=True))
    with pytest.raises(UserError, match="warmup_steps=-1"):
        SchedulerConfig(warmup_steps=-1)


def test_verdict_book_is_the_books_gpt2_without_qkv_bias(tmp_path):
    import torch

    from llm_scratch.model import GPT, GPTConfig

    cfg = compose_config(["experiment=verdict_book"], tmp_path / "run")
    validate_config(cfg)
    fields = OmegaConf.to_container(cfg.model, resolve=True)
    fields.pop("_target_")
    config = GPTConfig(**{**fields, "vocab_size": 50257})
    assert (config.bias, config.qkv_bias, config.context_length) == (True, False, 256)
    assert config.weight_init == "pytorch"  # the book's GPTModel initialises nothing itself
    with torch.device("meta"):
        model = GPT(config)
    # rasbt's GPT_CONFIG_124M with qkv_bias=False and context 256 (its separate output head)
    assert model.num_params() == 162_419_712


def _lr_at(step: int, scheduler: dict, estimated_steps: int) -> float:
    """The learning rate the module's scheduler gives at ``step`` under a Trainer that
    estimates ``estimated_steps`` optimizer steps for the run."""
    from types import SimpleNamespace

    from llm_scratch.train.module import GPTLightningModule

    model = dict(vocab_size=16, context_length=8, n_layer=1, n_head=1, n_embd=8)
    module = GPTLightningModule(model, optimizer={"lr": 1.0}, scheduler=scheduler)
    module._trainer = SimpleNamespace(
        precision="32-true", gradient_clip_val=None, estimated_stepping_batches=estimated_steps
    )
    lr_scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    return lr_scheduler.lr_lambdas[0](step)


def test_a_pinned_total_keeps_the_schedule_when_a_continued_run_trains_longer():
    cosine = {"name": "cosine", "warmup_steps": 0, "min_lr": 0.0}
    # the first run planned 100 steps; continued with max_epochs doubled, the Trainer says 200
    assert _lr_at(90, cosine, 100) == pytest.approx(0.0245, abs=1e-4)
    assert _lr_at(90, cosine, 200) == pytest.approx(0.5782, abs=1e-4)  # the jump
    pinned = {**cosine, "total_steps": 100}
    assert _lr_at(90, pinned, 200) == _lr_at(90, cosine, 100)
    with pytest.raises(UserError, match="scheduler.total_steps=0"):
        SchedulerConfig(total_steps=0)


@pytest.mark.parametrize(
    "env, group",
    [
        ({}, None),  # a single run
        ({"SLURM_ARRAY_JOB_ID": "4242"}, "4242"),  # a sweep under hydra/launcher=slurm
        ({"LLM_SCRATCH_SWEEP_ID": "norm-2026", "SLURM_ARRAY_JOB_ID": "4242"}, "norm-2026"),
    ],
)
def test_wandb_groups_the_jobs_of_a_sweep_under_either_launcher(env, group, tmp_path, monkeypatch):
    for name in ("LLM_SCRATCH_SWEEP_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = compose_config(["logger=wandb", "hydra/launcher=slurm"], tmp_path / "run")
    assert cfg.logger.wandb.group == group


# ==================== Every user-settable value whose validity is knowable is checked before anything runs: one ...

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


# ==================== The study on data the model cannot memorise (experiment=ablation_<name>_code)

# the code corpus prepared with GPT-2 BPE (training/prepare_data.py source=code.jsonl): its
# training split's tokens, as its index.json and the prepare command's last line state them
CODE_TRAIN_TOKENS = 36_192_793
# each ablation's jobs: seeds x its settings
CODE_JOBS = {"norm": 12, "init": 6, "tying": 6, "lr": 18, "attention": 2}


def _sweep_values(cfg) -> dict[str, list[str]]:
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    return {key: str(values).split(",") for key, values in params.items()}


@pytest.mark.parametrize("ablation", sorted(CODE_JOBS))
def test_every_code_ablation_composes_its_jobs_on_the_same_unseen_tokens(
    ablation, tmp_path, shards
):
    """Every job of the sweep composes with data.path set; every job trains on the same number
    of tokens (compute-matched), fewer than one epoch's windows (no token seen twice)."""
    base = [f"experiment=ablation_{ablation}_code", f"data.path={shards}"]
    cfg = compose_config(base, tmp_path / "run")
    assert cfg.data.path == shards and cfg.data.sampling == "epoch"
    values = _sweep_values(cfg)
    jobs = 1
    for options in values.values():
        jobs *= len(options)
    assert jobs == CODE_JOBS[ablation]
    assert "training_probes" in cfg.callbacks  # the probes are on
    tokens = set()
    for key, options in values.items():
        for value in options:  # each level of each factor, as the sweep's jobs set it
            job = compose_config([*base, f"{key}={value}"], tmp_path / f"{key}={value}")
            validate_config(job)
            for section in job.values():  # every interpolation resolves (hydra's own aside)
                if OmegaConf.is_config(section) and section is not job.hydra:
                    OmegaConf.to_container(section, resolve=True)
            seen = job.trainer.max_steps * job.data.batch_size * job.data.context_length
            tokens.add(seen * job.trainer.get("accumulate_grad_batches", 1))
    (seen,) = tokens  # compute-matched: every job the same tokens
    assert seen < CODE_TRAIN_TOKENS // 10


def test_the_code_ablations_vary_what_the_study_says(tmp_path):
    def values(ablation: str) -> dict[str, list[str]]:
        cfg = compose_config(
            [f"experiment=ablation_{ablation}_code", "data.path=d"], tmp_path / ablation
        )
        return _sweep_values(cfg)

    assert values("norm")["model.pre_norm"] == ["true", "false"]
    assert values("norm")["scheduler.warmup_fraction"] == ["0.0", "0.1"]
    lr = values("lr")
    assert [float(v) for v in lr["optimizer.lr"]] == [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    assert lr["scheduler.warmup_fraction"] == ["0.1"] and lr["seed"] == ["1", "2", "3"]
    attention = values("attention")
    assert attention["seed"] == ["1"] and attention["model.attention"] == ["loop", "fused"]
    cfg = compose_config(["experiment=ablation_attention_code", "data.path=d"], tmp_path / "a")
    assert cfg.model.dropout == 0.0  # loop and fused give the same curve only without dropout
