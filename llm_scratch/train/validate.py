"""Check the config groups that no schema types, before anything runs, naming the key.

Hydra itself refuses an override of a key that does not exist (``model.pre_normm=true``) and,
through the structured configs of llm_scratch/train/config_store.py, a wrongly typed value of
the top-level keys, the optimizer, the scheduler and the model. The other groups (data, trainer,
callbacks, logger) are objects Hydra instantiates from YAML: each node with a ``_target_`` is
checked here against the signature of what it instantiates (an unknown key, a missing value, or
a value of the wrong type).
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llm_scratch.errors import UserError
from llm_scratch.train.sharding import check_fsdp_config

# The groups checked here; the others are typed by their schemas.
CHECKED_GROUPS = ("data", "trainer", "logger", "callbacks")


def _matches(value: Any, annotation: Any) -> bool:
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
    return True  # a type we do not check (objects built elsewhere, enums, ...)


def _describe(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", text) if "[" not in text else text


def _check_fields(path: str, node: DictConfig, hints: dict[str, Any], open_ended: bool) -> None:
    for key in node:
        full = f"{path}.{key}" if path else str(key)
        if key == "_target_" or str(key).startswith("_"):
            continue
        if key not in hints:
            if open_ended:
                continue
            allowed = ", ".join(sorted(k for k in hints if not k.startswith("_")))
            raise UserError(f"Unknown config key '{full}'. Known keys here: {allowed}.")
        value = OmegaConf.select(node, str(key), throw_on_missing=False)
        if OmegaConf.is_missing(node, key):
            raise UserError(f"Config key '{full}' has no value (???): set it, e.g. {full}=...")
        if isinstance(value, DictConfig) and "_target_" in value:
            _check_target(full, value)
        elif not _matches(value, hints[key]):
            raise UserError(
                f"Config key '{full}' has the wrong type: got {value!r} "
                f"({type(value).__name__}), expected {_describe(hints[key])}."
            )


def _signature_hints(target: Any) -> tuple[dict[str, Any], bool]:
    func = target.__init__ if inspect.isclass(target) else target
    signature = inspect.signature(func)
    try:
        annotations = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: check names only
        annotations = {}
    hints = {}
    open_ended = False
    for name, parameter in signature.parameters.items():
        if name == "self":
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
            continue
        hints[name] = annotations.get(name, Any)
    return hints, open_ended


def _check_target(path: str, node: DictConfig) -> None:
    try:
        target = get_object(node._target_)
    except Exception as error:
        raise UserError(
            f"Config key '{path}._target_'={node._target_!r} cannot be imported: {error}"
        ) from error
    hints, open_ended = _signature_hints(target)
    _check_fields(path, node, hints, open_ended)


def _check_known_keys(path: str, node: DictConfig) -> None:
    """Only that every key of ``node`` is an argument of what it instantiates."""
    hints, open_ended = _signature_hints(get_object(node._target_))
    unknown = [k for k in node if not str(k).startswith("_") and k not in hints]
    if unknown and not open_ended:
        allowed = ", ".join(sorted(k for k in hints if not k.startswith("_")))
        raise UserError(f"Unknown config key '{path}.{unknown[0]}'. Known keys here: {allowed}.")


def _check_tree(path: str, node: Any) -> None:
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        _check_target(path, node)
        return
    for key in node:
        _check_tree(f"{path}.{key}" if path else str(key), node[key])


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


def _int_at_least(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _interval(v: Any) -> bool:
    if isinstance(v, float):
        return 0.0 < v <= 1.0
    return v is None or _int_at_least(1)(v)


# Values whose valid range is known before anything runs; each is refused naming its own key
# (a callback's value set by interpolation is checked under the key the user sets: first here).
RANGES: dict[str, tuple[Any, str]] = {
    "trainer.accumulate_grad_batches": (_int_at_least(1), "an integer >= 1"),
    "trainer.log_every_n_steps": (_int_at_least(1), "an integer >= 1"),
    "trainer.gradient_clip_val": (
        lambda v: v is None or (_number(v) and v >= 0),
        "a number >= 0 (null or 0 switches clipping off)",
    ),
    "trainer.val_check_interval": (
        _interval,
        "a number of training batches >= 1, or a fraction of an epoch in (0, 1]",
    ),
    "trainer.max_steps": (lambda v: _int_at_least(-1)(v) and v != 0, "-1 (no limit) or >= 1"),
    "trainer.max_epochs": (
        lambda v: v is None or (_int_at_least(-1)(v) and v != 0),
        "null or -1 (no limit), or >= 1 (0 trains nothing)",
    ),
    "data.batch_size": (_int_at_least(1), "an integer >= 1"),
    "callbacks.text_sampler.max_new_tokens": (_int_at_least(1), "an integer >= 1"),
    "callbacks.text_sampler.temperature": (
        lambda v: _number(v) and v >= 0,
        "a number >= 0 (0: greedy)",
    ),
    "callbacks.text_sampler.top_k": (
        lambda v: v is None or _int_at_least(1)(v),
        "null or an integer >= 1",
    ),
    "callbacks.finite_loss.check_every_n_steps": (_int_at_least(1), "an integer >= 1"),
    "callbacks.throughput.log_every_n_steps": (_int_at_least(1), "an integer >= 1"),
}


def _check_ranges(cfg: DictConfig) -> None:
    for key, (valid, expected) in RANGES.items():
        if OmegaConf.select(cfg, key.rsplit(".", 1)[0], default=None) is None:
            continue  # the group or callback is not in this config
        node = OmegaConf.select(cfg, key.rsplit(".", 1)[0])
        name = key.rsplit(".", 1)[1]
        if name not in node:
            continue
        value = node[name]
        if not valid(value):
            raise UserError(f"{key}={value!r} is out of range: it must be {expected}.")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`UserError` naming the first unknown key, wrongly typed or unresolvable
    value, or value out of its range."""
    _check_resolves("", OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    # The model's schema types its keys, but +model.<key>=... can still add one it lacks.
    if isinstance(cfg.get("model"), DictConfig) and "_target_" in cfg.model:
        _check_known_keys("model", cfg.model)
    for key in CHECKED_GROUPS:
        if key in cfg:
            _check_tree(key, cfg[key])
    _check_ranges(cfg)
    check_fsdp_config(cfg)  # what trainer=fsdp cannot combine with
