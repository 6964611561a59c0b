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


def _check_tree(path: str, node: Any) -> None:
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        _check_target(path, node)
        return
    for key in node:
        _check_tree(f"{path}.{key}" if path else str(key), node[key])


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`UserError` naming the first unknown key or wrongly typed value."""
    for key in CHECKED_GROUPS:
        if key in cfg:
            _check_tree(key, cfg[key])
    check_fsdp_config(cfg)  # what trainer=fsdp cannot combine with
