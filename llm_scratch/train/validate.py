"""Check a composed config before anything runs: unknown keys and wrong types name the key.

Hydra already refuses an override of a key that does not exist (``model.pre_normm=true``).
This adds what YAML cannot say: every node with a ``_target_`` is checked against the
signature of what it instantiates (an unknown key, or a value of the wrong type), and the
top-level keys against :class:`RunSchema`.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from llm_scratch.errors import UserError
from llm_scratch.train.optim import OptimizerConfig, SchedulerConfig


@dataclass
class RunSchema:
    """Top-level keys of ``train.yaml`` that are not config groups."""

    task_name: str = "train"
    seed: int = 1337
    ckpt_path: str | None = None
    init_from: str | None = None
    compile: bool = False
    train: bool = True
    validate_after: bool = False


# Sections that are plain settings rather than objects to instantiate.
SECTION_SCHEMAS = {"optimizer": OptimizerConfig, "scheduler": SchedulerConfig}
# Keys whose null means "filled in at run time" (the vocabulary comes from the tokenizer).
NULL_MEANS_DERIVED = {"model.vocab_size"}
GROUP_KEYS = {"data", "model", "trainer", "logger", "callbacks", "paths", "hydra"} | set(
    SECTION_SCHEMAS
)


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
        elif value is None and full in NULL_MEANS_DERIVED:
            continue
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
    run_hints = typing.get_type_hints(RunSchema) | {k: Any for k in GROUP_KEYS}
    _check_fields("", cfg, run_hints, open_ended=False)
    for key, schema in SECTION_SCHEMAS.items():
        if key in cfg:
            _check_fields(key, cfg[key], typing.get_type_hints(schema), open_ended=False)
    for key in ("data", "model", "trainer", "logger", "callbacks"):
        if key in cfg:
            _check_tree(key, cfg[key])
