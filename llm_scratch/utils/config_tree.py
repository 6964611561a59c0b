"""Print the resolved config, one section after another: a Rich tree on a terminal, plain YAML
otherwise (a log file, CI, nohup), so that no path or value is ever cut at the terminal width."""

from __future__ import annotations

import sys

import rich
import rich.syntax
import rich.tree
import yaml
from omegaconf import DictConfig, OmegaConf

ORDER = ("data", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger", "paths")


def print_config_tree(cfg: DictConfig) -> None:
    keys = [k for k in ORDER if k in cfg] + [k for k in cfg if k not in ORDER and k != "hydra"]
    if not sys.stdout.isatty():
        plain = OmegaConf.to_container(cfg, resolve=True)
        ordered = {str(k): plain[k] for k in keys}
        # no line width: PyYAML would fold a long value (a path with spaces) over lines
        text = yaml.safe_dump(ordered, sort_keys=False, width=float("inf"), allow_unicode=True)
        print("config:\n" + text.rstrip(), flush=True)
        return
    tree = rich.tree.Tree("config", style="bold")
    for key in keys:
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        # wrapped, not cropped, where a line is wider than the terminal
        syntax = rich.syntax.Syntax(text.rstrip(), "yaml", theme="ansi_dark", word_wrap=True)
        tree.add(str(key), style="bold").add(syntax)
    rich.print(tree)
