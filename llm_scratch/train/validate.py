"""Check every user-set value before anything runs, naming the key the user set.

One pass over the composed config (:func:`validate_config`), before the run directory is
claimed. Each node is checked against what consumes it:

- a node with ``_target_`` (data, model, trainer, each callback and logger) against the
  signature of what it instantiates: an unknown key, a missing required value, a value of the
  wrong type, and the range each parameter declares (``Annotated[int, Check(ge=1)]``, or a
  dataclass field's ``metadata=check(...)``, llm_scratch/constraints.py); for classes whose
  source is not ours (Lightning's Trainer and callbacks) the ranges are in
  :data:`CONSUMER_CHECKS`, by class, so they hold under any key that reaches them;
- the top level, ``optimizer``, ``scheduler`` and ``paths`` against their dataclasses
  (llm_scratch/train/config_store.py, llm_scratch/train/optim.py), the same way;
- every value against what no consumer accepts (NaN, infinity, an integer beyond 64 bits, a
  NUL character), whatever its key;
- a key that nothing reads (``+new.key=1``) or a required group deleted (``~model``);
- what only the consumer itself can tell (``n_embd`` divisible by ``n_head``, the data's own
  cross-checks) by building the cheap objects once: the optimizer and scheduler settings, the
  model's config and the data module (nothing is read or written), each inside
  :func:`llm_scratch.train.boundary.configured`, which names the group.

A value set by interpolation (``callbacks.finite_loss.check_every_n_steps:
${trainer.log_every_n_steps}``) is refused under the key the user sets.

:class:`CheckConfigFirst`, a Hydra callback (configs/hydra/default.yaml), runs the checks before
Hydra creates the run directory (for a sweep: the first job's config before the sweep's): a
value that would fail there (a ``task_name`` too long for a file name) is refused naming its
key, and a refused run leaves no directory behind. The job checks again, before it claims the
directory (each sweep job, runs in-process).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import os
import re
import sys
import types
import typing
from dataclasses import MISSING
from typing import Any, Literal, Union

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from llm_scratch.constraints import (
    METADATA_KEY,
    Check,
    Either,
    declared,
    generic_problem,
    memory_bytes,
)
from llm_scratch.errors import UserError, one_line, report_user_error
from llm_scratch.train.boundary import configured
from llm_scratch.train.config_store import PathsSchema, TrainSchema
from llm_scratch.train.optim import OptimizerConfig, SchedulerConfig
from llm_scratch.train.sharding import check_fsdp_config

# Every metric a run logs (module.py, the throughput callback): what a checkpoint callback can
# monitor. tests/test_boundary.py checks it against the columns of a trained run's metrics.csv.
# The optional callbacks log families of names: eval/<task>/acc, probes/<name>/...
LOGGED_METRICS = (
    "train/loss",
    "train/lr",
    "train/epoch_loss",
    "train/tokens_seen",
    "train/tokens_per_sec",
    "train/mfu",
    "val/loss",
    "val/ppl",
    "val/bpb",
    "step",
    "epoch",
)
METRIC_FAMILIES = ("eval/", "probes/")

# The sections typed by a dataclass rather than by what they instantiate.
SCHEMA_SECTIONS: dict[str, type] = {
    "": TrainSchema,
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
    "paths": PathsSchema,
}
# Groups of named entries, each an object built from its ``_target_`` (or null: left out).
ENTRY_GROUPS = ("callbacks", "logger")
# Arguments the job passes itself when it instantiates a group (not set in the config).
SUPPLIED = {
    "trainer": {"callbacks", "logger", "plugins"},
    "model": {"vocab_size"},
}

_COUNT = Check(kind=int, ge=1)
_FRACTION = Check(kind=float, ge=0, le=1)
_BATCHES = Either(Check(kind=int, ge=0), _FRACTION)
# The ranges of the classes whose source is not ours (Lightning's), by class (and for their
# subclasses); our own classes declare theirs on their signatures (``batch_size: Count``).
CONSUMER_CHECKS: dict[str, dict[str, Check | Either]] = {
    "lightning.pytorch.trainer.trainer.Trainer": {
        "max_epochs": Check(ge=-1, ne=0, why="-1: no limit; 0 trains nothing"),
        "min_epochs": Check(ge=0),
        "max_steps": Check(ge=-1, ne=0, why="-1: no limit (max_epochs decides)"),
        "min_steps": Check(ge=0),
        "check_val_every_n_epoch": Check(ge=1, why="null: by val_check_interval alone"),
        "val_check_interval": Either(
            Check(kind=int, ge=1, why="training batches"),
            Check(kind=float, gt=0, le=1, why="of an epoch"),
        ),
        "limit_train_batches": _BATCHES,
        "limit_val_batches": _BATCHES,
        "limit_test_batches": _BATCHES,
        "limit_predict_batches": _BATCHES,
        "overfit_batches": _BATCHES,
        "num_sanity_val_steps": Check(ge=-1, why="-1: the whole validation set"),
        "log_every_n_steps": Check(ge=1),
        "accumulate_grad_batches": Check(ge=1),
        "gradient_clip_val": Check(ge=0, why="null or 0 switches clipping off"),
        "num_nodes": Check(ge=1),
        "devices": Either(Check(kind=int, ge=-1, ne=0, why="-1: all"), Check(kind=str)),
        "reload_dataloaders_every_n_epochs": Check(ge=0),
        "precision": Check(nonempty=True),
        "default_root_dir": Check(nonempty=True),
    },
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint": {
        "monitor": Check(choices=LOGGED_METRICS, prefixes=METRIC_FAMILIES, why="a metric logged"),
        "mode": Check(choices=("min", "max")),
        "save_top_k": Check(ge=-1, why="-1: every checkpoint"),
        "every_n_train_steps": Check(ge=0, why="null or 0: not by steps"),
        "every_n_epochs": Check(ge=0),
        "filename": Check(nonempty=True),
        "dirpath": Check(nonempty=True),
    },
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping": {
        "monitor": Check(choices=LOGGED_METRICS, prefixes=METRIC_FAMILIES, why="a metric logged"),
        "mode": Check(choices=("min", "max")),
        "patience": Check(ge=0),
    },
    "lightning.pytorch.loggers.csv_logs.CSVLogger": {"flush_logs_every_n_steps": _COUNT},
}


# ----------------------------------------------------------------------------- types
def _unwrap(annotation: Any) -> Any:
    """``Annotated[int, ...]`` as ``int``."""
    return typing.get_args(annotation)[0] if hasattr(annotation, "__metadata__") else annotation


def _matches(value: Any, annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    if origin is dict or annotation is dict:
        return isinstance(value, (dict, DictConfig))
    if inspect.isclass(annotation) and isinstance(value, list | dict | ListConfig | DictConfig):
        # an object of that class is built from a node with a _target_, never from a plain
        # list or mapping (unless the class is one)
        kinds = (list, tuple, typing.Sequence, dict, typing.Mapping)
        return issubclass(annotation, kinds)
    return True  # a type we do not check (objects built elsewhere, enums, ...)


def _describe(annotation: Any) -> str:
    annotation = _unwrap(annotation)
    text = str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", text) if "[" not in text else text


@dataclasses.dataclass
class _Param:
    annotation: Any
    required: bool
    checks: list[Check | Either]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.cache
def consumer_params(target: Any) -> tuple[dict[str, _Param], bool]:
    """What ``target`` (a class or function) takes: each parameter's type, whether it is
    required, and its declared ranges; and whether it takes any keyword (``**kwargs``)."""
    func = target.__init__ if inspect.isclass(target) else target
    signature = inspect.signature(func)
    try:
        annotations = typing.get_type_hints(func, include_extras=True)
    except Exception:  # unresolvable forward references: check names and ranges only
        annotations = {}
    field_checks: dict[str, list] = {}
    if dataclasses.is_dataclass(target):
        for f in dataclasses.fields(target):
            if METADATA_KEY in f.metadata:
                field_checks[f.name] = [f.metadata[METADATA_KEY]]
    table: dict[str, Check | Either] = {}
    for cls in reversed(inspect.getmro(target)) if inspect.isclass(target) else ():
        table.update(CONSUMER_CHECKS.get(_qualname(cls), {}))
    params, open_ended = {}, False
    for name, parameter in signature.parameters.items():
        if name == "self":
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        annotation = annotations.get(name, Any)
        checks = declared(annotation) + field_checks.get(name, [])
        if name in table:
            checks.append(table[name])
        params[name] = _Param(annotation, parameter.default is inspect.Parameter.empty, checks)
    return params, open_ended


# ----------------------------------------------------------------------------- the walk
_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
_SOLE_REFERENCE = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


class _Checker:
    """One validation pass over ``cfg`` (the job's config, without ``hydra``); ``raw`` is the
    whole config unresolved, for the keys that interpolations refer to."""

    def __init__(self, cfg: DictConfig, raw: dict) -> None:
        self.cfg = cfg
        self.raw = raw
        self.references = set(_REFERENCE.findall(str(raw)))

    # the key the user sets: through interpolations of one key (${trainer.log_every_n_steps})
    def user_key(self, key: str) -> str:
        seen = {key}
        while True:
            node: Any = self.raw
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    return key
                node = node[part]
            match = _SOLE_REFERENCE.match(node) if isinstance(node, str) else None
            if match is None or match.group(1) in seen:
                return key
            key = match.group(1)
            seen.add(key)

    def refuse(self, key: str, value: Any, problem: str) -> UserError:
        source = self.user_key(key)
        via = f" (it sets {key})" if source != key else ""
        return UserError(f"{source}={_short(value)} is out of range{via}: {problem}.")

    def referenced(self, key: str) -> bool:
        """Whether an interpolation uses ``key`` (or a node above or below it)."""
        return any(
            r == key or r.startswith(key + ".") or key.startswith(r + ".") for r in self.references
        )

    # every value, whatever its key
    def leaves(self, path: str, node: Any) -> None:
        if isinstance(node, DictConfig):
            keys: list[Any] = list(node)
        elif isinstance(node, ListConfig):
            keys = list(range(len(node)))
        else:
            return
        for key in keys:
            full = f"{path}.{key}" if path else str(key)
            if isinstance(node, DictConfig) and OmegaConf.is_missing(node, key):
                continue
            value = node[key]
            if isinstance(value, DictConfig | ListConfig):
                self.leaves(full, value)
            elif (problem := generic_problem(value)) is not None:
                raise self.refuse(full, value, problem)

    # a node against what it is consumed by
    def fields(self, path: str, node: DictConfig, target: Any, group: str, typed: bool) -> None:
        params, open_ended = consumer_params(target)
        supplied = SUPPLIED.get(group, set()) if path == group else set()
        for key in node:
            name = str(key)
            full = f"{path}.{name}" if path else name
            if name.startswith("_") or (not path and name == "hydra"):
                continue
            if name not in params:
                if open_ended:
                    continue
                if target in SCHEMA_SECTIONS.values() and self.referenced(full):
                    continue  # a value of the user's own, used by an interpolation
                full = _first_leaf(full, node[key]) if not OmegaConf.is_missing(node, key) else full
                known = sorted(k for k in params if not k.startswith("_"))
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
                hint = f" Did you mean {path + '.' if path else ''}{close[0]}?" if close else ""
                raise UserError(
                    f"Unknown config key '{full}': nothing uses it ({_where(path, target)} "
                    f"takes: {', '.join(known)}); remove it, or check its spelling.{hint}"
                )
            if OmegaConf.is_missing(node, key):
                raise UserError(f"Config key '{full}' has no value (???): set it, e.g. {full}=...")
            value = node[key]
            if not path and isinstance(value, DictConfig):
                continue  # a section: checked on its own
            param = params[name]
            if value is None and param.required and name not in supplied:
                raise UserError(f"Config key '{full}' is required; set it: {full}=...")
            if isinstance(value, DictConfig) and "_target_" in value:
                self.target(full, value, group)
                continue
            if typed and not _matches(value, param.annotation):
                raise UserError(
                    f"Config key '{self.user_key(full)}' has the wrong type: got {value!r} "
                    f"({type(value).__name__}), expected {_describe(param.annotation)}."
                )
            for rule in param.checks:
                if (problem := rule.problem(value)) is not None:
                    raise self.refuse(full, value, problem)
        for name, param in params.items():
            if param.required and name not in node and name not in supplied:
                raise UserError(
                    f"Config key '{path}.{name}' is required by {_where(path, target)}; set it: "
                    f"+{path}.{name}=..."
                )

    def target(self, path: str, node: DictConfig, group: str, typed: bool = True) -> None:
        try:
            target = get_object(str(node._target_))
            if not callable(target):
                raise TypeError(f"{target!r} is neither a class nor a function")
            consumer_params(target)
        except Exception as error:
            reason = one_line(str(error)).rstrip(".")
            raise UserError(
                f"Config key '{path}._target_'={node._target_!r} cannot be instantiated: "
                f"{reason}; give the dotted path of a class, e.g. the default's."
            ) from error
        self.fields(path, node, target, group, typed)

    def group(self, name: str, node: Any) -> None:
        """A config group: one object (``_target_``), or named entries of objects."""
        if name in ENTRY_GROUPS:
            if node is None:
                return
            if not isinstance(node, DictConfig):
                raise UserError(f"{name}={node!r}: give {name} entries, each with a _target_.")
            for key in node:
                entry = node[key]
                if entry is None:
                    continue  # switched off: callbacks.<name>=null
                if not isinstance(entry, DictConfig) or "_target_" not in entry:
                    # an experiment's settings for an entry the chosen group option lacks
                    # (experiment=verdict_cpu callbacks=none) reach here too
                    raise UserError(
                        f"Unknown config key '{name}.{key}': nothing uses it; each entry of "
                        f"{name} is an object with a _target_ (or null to leave it out: "
                        f"{name}.{key}=null, also where an experiment sets some of its values "
                        f"and {name}=<option> has no {key})."
                    )
                self.target(f"{name}.{key}", entry, name)
            return
        if not isinstance(node, DictConfig):
            raise UserError(
                f"{name}={node!r} is not a config group's node: choose {name}=<option>."
            )
        if "_target_" in node:
            # the model's types are its schema's (Hydra checked them on composition)
            self.target(name, node, name, typed=name != "model")


def _first_leaf(key: str, value: Any) -> str:
    """The key the user typed for an unknown node: ``new.key`` of ``+new.key=1``."""
    while isinstance(value, DictConfig) and len(value):
        name = next(iter(value))
        key, value = f"{key}.{name}", value[name]
    return key


def _where(path: str, target: Any) -> str:
    where = getattr(target, "__qualname__", str(target))
    return f"{path} ({where})" if path else f"the top level ({where})"


def _check_resolves(path: str, node: Any) -> None:
    """Every value resolves (``data.batch_size='${nope}'``): the key named, not later in a
    library with another key's name or none."""
    if not isinstance(node, DictConfig | ListConfig):
        return
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    for key in keys:
        full = f"{path}.{key}" if path else str(key)
        if OmegaConf.is_missing(node, key):
            continue  # ???: refused where a value is needed, with its own message
        try:
            value = node[key]
        except OmegaConfBaseException as error:
            raw = OmegaConf.to_container(node, resolve=False)[key]
            reason = str(error).splitlines()[0].rstrip(".")
            raise UserError(
                f"Config key '{full}'={raw!r} cannot be resolved ({reason}); give it a value, or "
                "an interpolation of a key that exists (e.g. ${seed})."
            ) from error
        _check_resolves(full, value)


def _required_groups(cfg: DictConfig) -> None:
    """A section the run cannot do without, deleted (``~model``) or set to null, or a top-level
    key deleted that has a value by default (``~seed``)."""
    for f in dataclasses.fields(TrainSchema):
        if f.metadata.get("required") and cfg.get(f.name) is None:
            raise UserError(
                f"{f.name} is required but the config has none (deleted with ~{f.name}, or set "
                f"to null); choose one: {f.metadata['required']}."
            )
        if f.name not in cfg and (f.default is not None or f.default_factory is not MISSING):
            raise UserError(
                f"{f.name} is required but was deleted (~{f.name}); leave it in, or give it a "
                f"value: {f.name}=..."
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _build_cheap_objects(cfg: DictConfig) -> None:
    """What only the consumers can tell, from building the objects that read no file and
    allocate nothing: the optimizer's and scheduler's settings, the model's config (with a
    stand-in vocabulary when the data gives it) and the data module."""
    with configured("optimizer"):
        OptimizerConfig(**OmegaConf.to_container(cfg.optimizer, resolve=True))
    with configured("scheduler"):
        SchedulerConfig(**OmegaConf.to_container(cfg.scheduler, resolve=True))
    model = cfg.model
    if not cfg.get("init_from") and isinstance(model, DictConfig) and "_target_" in model:
        with configured("model"):
            config = instantiate(model, vocab_size=model.get("vocab_size") or 50257)
        _check_model_fits(config)
    with configured("data"):
        instantiate(cfg.data)


# the model is built in fp32 in host memory before anything else (sharding, a GPU, training)
BYTES_PER_PARAMETER = 4


def _check_model_fits(config: Any) -> None:
    """A model whose weights alone exceed this machine's memory (``model.n_layer=1000000000``)
    is refused by its size: building it would exhaust memory block by block, and the system may
    kill the process rather than raise."""
    try:
        n_layer, n_embd, vocab = config.n_layer, config.n_embd, config.vocab_size
        context, tied = config.context_length, getattr(config, "tie_weights", True)
    except AttributeError:
        return
    embeddings = (vocab * (1 if tied else 2) + context) * n_embd
    params = embeddings + n_layer * (12 * n_embd * n_embd + 13 * n_embd) + 2 * n_embd
    need, memory = params * BYTES_PER_PARAMETER, memory_bytes()
    if memory and need > memory:
        raise UserError(
            f"The model (model.n_layer={n_layer}, model.n_embd={n_embd}, model.context_length="
            f"{context} (by default data.context_length), model.vocab_size={vocab} (by default "
            f"the tokenizer's)) has about {params:.3g} parameters, whose weights alone take "
            f"about {need / 1e9:.3g} GB, more than this machine's {memory / 1e9:,.0f} GB; "
            "choose a smaller model (e.g. model=gpt-nano)."
        )


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`UserError` naming the first key whose value no consumer would take: unknown
    or unused, missing, unresolvable, of the wrong type, out of its declared range."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    _required_groups(job)
    _check_resolves("", job)
    raw = OmegaConf.to_container(cfg, resolve=False)  # with hydra: hydra.run.dir uses task_name
    # resolved once: the checks below read every value, some more than once
    job = OmegaConf.create(OmegaConf.to_container(job, resolve=True))
    checker = _Checker(job, raw)
    # the top-level sections first: a value interpolated into a callback is refused as its own
    for section, schema in SCHEMA_SECTIONS.items():
        node = job if not section else job.get(section)
        if isinstance(node, DictConfig):
            checker.fields(section, node, schema, section, typed=section == "paths")
    for name in ("data", "model", "trainer", *ENTRY_GROUPS):
        if name in job:
            checker.group(name, job[name])
    checker.leaves("", job)
    _build_cheap_objects(job)
    check_fsdp_config(cfg)  # what trainer=fsdp cannot combine with


# ----------------------------------------------------------------------------- before Hydra
try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # another Hydra layout: the job validates the config itself
    _HydraCallback = object  # type: ignore[assignment,misc]


class CheckConfigFirst(_HydraCallback):  # type: ignore[misc,valid-type]
    """Validate a run's config before Hydra creates its run directory; a refusal is one line and
    exit status 2 (the job validates again: for sweeps, whose jobs Hydra starts otherwise, and
    for runs in-process)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """A sweep's first job's config (each swept key at its first value), checked before
        the sweep directory is made; a sweep over config groups is left to its jobs (each
        needs a composition of its own), and so is anything this cannot prepare."""
        try:
            cfg = _first_job(config)
        except Exception:  # noqa: BLE001 - the jobs validate themselves
            return
        if cfg is not None:
            self._check(cfg, os.path.join(str(cfg.hydra.sweep.dir), "0"))

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config.copy(), str(config.hydra.run.dir))

    @staticmethod
    def _check(cfg: Any, output_dir: str) -> None:
        with open_dict(cfg):
            # what Hydra sets once the directory exists (its name is checked here, not made)
            output_dir = os.path.abspath(output_dir)
            cfg.hydra.runtime.output_dir = output_dir
            if isinstance(cfg.get("paths"), DictConfig):
                cfg.paths.output_dir = output_dir
        try:
            validate_config(cfg)
        except UserError as error:
            # Hydra turns a callback's exception into a warning and goes on to make the
            # directory: leave with the one line here (LLM_SCRATCH_TRACEBACK=1: the job refuses
            # the config again, with the traceback)
            sys.exit(report_user_error(error))


def _first_job(config: Any) -> Any:
    """``config`` (a sweep's) with every swept key at its first value, as the first job gets it;
    None when a config group is swept (``model=gpt-nano,gpt-mini``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from llm_scratch.compat import apply_overrides

    parser = OverridesParser.create()
    given = parser.parse_overrides(list(config.hydra.overrides.task))
    node = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(node, resolve=False) if node else {}
    swept = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    groups = set(config.hydra.runtime.get("choices") or {})
    first = []
    # the command line's plain overrides are in config already; the sweeper's params are not
    for override in [o for o in given if o.is_sweep_override()] + swept:
        if override.key_or_group in groups or override.package is not None:
            return None
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            first.append(f"{override.get_key_element()}={value}")
        else:
            first.append(override.input_line)
    cfg = config.copy()
    apply_overrides(cfg, first)
    return cfg
