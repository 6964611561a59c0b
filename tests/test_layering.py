"""The package's layers import one way: utils/errors, model/, data/, train/, report/, entry points.

Every import of every module is read from its source (function-level imports included), so a
new import that points the wrong way, or closes a cycle, fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "llm_scratch"
# What each layer must never import (a prefix matches the module and everything below it).
FORBIDDEN = {
    "llm_scratch.model": (
        "llm_scratch.data",
        "llm_scratch.train",
        "llm_scratch.report",
        "llm_scratch.bench",
        "llm_scratch.checkpoint",
        "lightning",
        "hydra",
        "omegaconf",
    ),
    "llm_scratch.data": ("llm_scratch.train", "llm_scratch.report", "llm_scratch.bench"),
    "llm_scratch.report": ("llm_scratch.train", "lightning"),
    "llm_scratch.utils": ("llm_scratch.model", "llm_scratch.data", "llm_scratch.train"),
    "llm_scratch.errors": ("llm_scratch.model", "llm_scratch.data", "llm_scratch.train"),
}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = REPO) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, as absolute names."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, level - 1 packages up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from llm_scratch.model import hf` imports the submodule llm_scratch.model.hf
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports_of(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_layers_import_nothing_above_them():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        for layer, forbidden in FORBIDDEN.items():
            if name == layer or name.startswith(layer + "."):
                wrong += [
                    f"{name} imports {m}"
                    for m in imports_of(path)
                    if any(m == f or m.startswith(f + ".") for f in forbidden)
                ]
    assert not wrong, wrong


def test_no_module_imports_one_that_imports_it_back():
    graph = package_graph()

    def parents(name: str) -> set[str]:  # importing a.b.c runs a/__init__ and a/b/__init__
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    edges = {n: {m for m in deps if m not in parents(n)} for n, deps in graph.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_import_check_sees_function_level_imports(tmp_path):
    # the checks above are only as good as imports_of: it must see an import inside a function
    source = tmp_path / "llm_scratch" / "model" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from llm_scratch.train import module\n    import lightning\n")
    found = imports_of(source, root=tmp_path)
    assert {"llm_scratch.train", "llm_scratch.train.module", "lightning"} <= found


LOADS_NO_LIGHTNING = """
import sys
{body}
heavy = sorted(m for m in ("lightning", "pytorch_lightning", "hydra") if m in sys.modules)
assert not heavy, heavy
"""


@pytest.mark.parametrize(
    "body",
    [
        "import llm_scratch.model, llm_scratch.checkpoint, llm_scratch.report, llm_scratch.summary",
        "import llm_scratch.data; from llm_scratch.data import load_tokenizer",
    ],
    ids=["imports", "data"],
)
def test_importing_the_lower_layers_loads_no_lightning(body):
    code = LOADS_NO_LIGHTNING.format(body=body)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("backend", ["gpt", "hf_gpt2"])
def test_loading_a_checkpoint_for_sampling_loads_no_lightning(tmp_path, backend):
    if backend == "hf_gpt2":
        pytest.importorskip("transformers")
    model = (
        {"backend": "hf_gpt2", "vocab_size": 8, "context_length": 8, "n_layer": 1, "n_head": 2}
        | {"n_embd": 8}
        if backend == "hf_gpt2"
        else {"vocab_size": 8, "context_length": 8, "n_layer": 1, "n_head": 2, "n_embd": 8}
    )
    body = f"""
import torch
from llm_scratch.data.tokenizers import CharTokenizer
from llm_scratch.model import build_model
tokenizer = CharTokenizer.from_text("hello world")
config, net = build_model({model!r})
state = {{"model." + k: v for k, v in net.state_dict().items()}}
hparams = {{"model": {model!r}, "tokenizer": tokenizer.to_dict()}}
torch.save({{"state_dict": state, "hyper_parameters": hparams}}, {str(tmp_path / "x.ckpt")!r})
from llm_scratch.checkpoint import load_model
from llm_scratch.sample import sample_texts
loaded, tok, _ = load_model({str(tmp_path / "x.ckpt")!r})
assert len(sample_texts(loaded, tok, "he", max_new_tokens=3, temperature=0)[0]) == 5
"""
    code = LOADS_NO_LIGHTNING.format(body=body)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
