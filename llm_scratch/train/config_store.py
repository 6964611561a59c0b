"""What Hydra composes besides the YAML files in configs/: typed schemas and generated options.

Registered in Hydra's ConfigStore (``register_configs``, called before every composition):

- ``train_schema``: the top-level keys of ``train.yaml`` with their types, and the optimizer and
  scheduler sections as :class:`OptimizerConfig` / :class:`SchedulerConfig`. Hydra checks a
  value's type and refuses an unknown key when it composes; the range checks stay next to the
  fields, in the dataclasses' ``__post_init__``.
- ``model=<preset>``: one option per entry of :data:`llm_scratch.model.PRESETS`, typed as
  :class:`GPTConfig` (so ``GPTConfig.from_name`` and ``model=<preset>`` agree field for field);
  in training, ``vocab_size`` comes from the tokenizer and ``context_length`` from the data.
  ``schema/model/hf_gpt2`` types ``configs/model/hf_gpt2.yaml``.
- ``experiment=ablation_<name>`` and ``experiment=ablation_<name>_cpu``: an ablation's sweep
  (``configs/ablation/<name>.yaml``) on the reference study (``verdict_book``, GPU-sized) or on
  its CPU-sized version (``verdict_cpu``), one pair per entry of :data:`ABLATIONS`.
- ``experiment=ablation_<name>_code``: the ablations of :data:`CODE_ABLATIONS` on data the model
  cannot memorise (``code_cpu``, with ``data.path=`` the prepared corpus), with the changes of
  :data:`CODE_CHANGES`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from llm_scratch.constraints import SEED_MAX, check
from llm_scratch.model.config import PRESETS, GPTConfig, HFGPT2Config
from llm_scratch.train.optim import OptimizerConfig, SchedulerConfig

# configs/ablation/<name>.yaml, each run on top of the reference and the CPU-sized study
ABLATIONS = ("norm", "init", "attention", "tying", "grid", "lr")
REFERENCE_STUDY, CPU_STUDY = "verdict_book", "verdict_cpu"
# the ablations on the code corpus (configs/experiment/code_cpu.yaml), and what each changes there
CODE_STUDY = "code_cpu"
CODE_ABLATIONS = ("norm", "init", "tying", "lr", "attention")
CODE_CHANGES: dict[str, dict[str, Any]] = {
    # six peaks with the warm-up only (18 runs), on a model half as wide (the vocabulary's head,
    # most of the cost at this size, half as wide), the same tokens
    "lr": {
        "model": {"n_embd": 64},
        "hydra": {"sweeper": {"params": {"scheduler.warmup_fraction": "0.1"}}},
    },
    # a check, not a study: the same curve without dropout (code_cpu has none), one seed
    "attention": {"hydra": {"sweeper": {"params": {"seed": "1"}}}},
}

# Filled in at run time: the vocabulary from the tokenizer, the context from the data.
_FROM_DATA = {"vocab_size": None, "context_length": "${data.context_length}"}


def _required(options: str) -> Any:
    """A section a run cannot do without (``~model`` is refused), and how to choose one."""
    return field(default=None, metadata={"required": options})


@dataclass
class TrainSchema:
    """The top-level keys of ``configs/train.yaml``; the config groups are typed by their own
    schemas (model) or by what they instantiate (data, trainer, callbacks, logger). The range
    of each value is declared here (``metadata=check(...)``, llm_scratch/constraints.py) and
    checked by llm_scratch/train/validate.py."""

    # part of the run directory's and the log file's names
    task_name: str = field(default="train", metadata=check(nonempty=True, path_part=True))
    # numpy's seed range (Lightning's seed_everything seeds numpy too)
    seed: int = field(default=1337, metadata=check(ge=0, le=SEED_MAX))
    ckpt_path: str | None = field(default=None, metadata=check(nonempty=True))
    init_from: str | None = field(default=None, metadata=check(nonempty=True))
    compile: bool = False
    train: bool = True
    validate_after: bool = False
    continue_with_changes: bool = False
    print_config: bool = False
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: Any = _required("data=verdict, shakespeare_char, shakespeare_bpe, text or instruct")
    model: Any = _required("model=<preset> (gpt-mini, gpt2, ...) or model=hf_gpt2")
    trainer: Any = _required("trainer=default, cpu, gpu, bf16, ddp or fsdp")
    logger: Any = None
    callbacks: Any = None
    paths: Any = _required("paths=default")


@dataclass
class PathsSchema:
    """The keys of ``configs/paths/default.yaml`` (a key of the user's own there is fine when
    an interpolation uses it, e.g. ``+paths.root=/data data.path=${paths.root}/a.txt``)."""

    log_dir: str = field(default="outputs", metadata=check(nonempty=True, path=True))
    data_dir: str | None = field(default=None, metadata=check(nonempty=True, path=True))
    cache_dir: str | None = field(default=None, metadata=check(nonempty=True, path=True))
    output_dir: str = field(default="", metadata=check(nonempty=True, path=True))


def _schema_of(config_class: type, target: str) -> type:
    """A dataclass with ``config_class``'s fields (``vocab_size`` may be null: filled in from
    the data) plus ``_target_``, the class Hydra instantiates."""
    specs: list[Any] = [("_target_", str, field(default=target))]
    for f in fields(config_class):
        kind = f.type if f.name != "vocab_size" else (int | None)
        specs.append((f.name, kind, field(default=None if f.name == "vocab_size" else f.default)))
    return make_dataclass(f"{config_class.__name__}Schema", specs)


GPTConfigSchema = _schema_of(GPTConfig, "llm_scratch.model.GPTConfig")
HFGPT2ConfigSchema = _schema_of(HFGPT2Config, "llm_scratch.model.hf_backend.HFGPT2Config")


def preset_node(name: str) -> Any:
    """The ``model=<name>`` option: ``GPTConfig.from_name(name)``'s fields, typed, with the
    vocabulary and the context left to the data."""
    values = asdict(GPTConfig.from_name(name))
    return GPTConfigSchema(**{**values, **_FROM_DATA})


def register_configs() -> None:
    """Put the schemas and generated options into Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    for name in PRESETS:
        store.store(group="model", name=name, node=preset_node(name))
    store.store(group="schema/model", name="hf_gpt2", node=HFGPT2ConfigSchema)
    for ablation in ABLATIONS:
        for study, suffix in ((REFERENCE_STUDY, ""), (CPU_STUDY, "_cpu")):
            name = f"ablation_{ablation}{suffix}"
            node = {
                "defaults": [study, {"override /ablation": ablation}, "_self_"],
                "task_name": name,
            }
            store.store(group="experiment", name=name, node=node, package="_global_")
    for ablation in CODE_ABLATIONS:
        name = f"ablation_{ablation}_code"
        node = {
            "defaults": [CODE_STUDY, {"override /ablation": ablation}, "_self_"],
            "task_name": name,
            **CODE_CHANGES.get(ablation, {}),
        }
        store.store(group="experiment", name=name, node=node, package="_global_")
