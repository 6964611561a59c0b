"""The documentation's commands parse, and it holds no path of the machine that wrote it.

Every ``python training/<script>.py ...`` shown in README.md and docs/**/*.md (in shell code
blocks and inline code) is checked without running anything: a training command composes with
Hydra (a sweep's first job) and passes the config checks a run makes before it starts;
``sample.py`` options parse; ``report.py`` options are ones it offers; the Hydra-configured
scripts (``prepare_data.py``, ``evaluate.py``) compose their own config.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.helpers import REPO, compose_config, run_cli

DOC_FILES = [REPO / "README.md"] + sorted(
    p for p in (REPO / "docs").rglob("*.md") if "results" not in p.relative_to(REPO / "docs").parts
)
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
COMMAND = re.compile(r"python\s+training/([\w-]+)\.py\b(.*)", re.DOTALL)
INLINE = re.compile(r"(?<!`)`(python\s+training/[^`]+)`(?!`)")
FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```[ \t]*$", re.DOTALL | re.MULTILINE)
PLACEHOLDER = re.compile(r"<[^<>]*>")


# a line of a shell block that runs an entry point (after a prompt or environment variables),
# not a line of output that mentions one
RUNS = re.compile(r"^(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*python\s+training/")


def _shell_commands(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, prompts stripped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [line.strip() for line in joined.splitlines()]
    return [line.removeprefix("$ ") for line in lines if RUNS.match(line)]


def _collect() -> list[tuple[str, str, str]]:
    """(where, script, arguments) of every training/ command in the docs."""
    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(REPO))
        candidates = []
        for match in FENCE.finditer(text):
            if match.group(2) in SHELL_LANGS:
                line = text.count("\n", 0, match.start()) + 1
                candidates += [(line, cmd) for cmd in _shell_commands(match.group(3))]
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for match in INLINE.finditer(prose):
            line = prose.count("\n", 0, match.start()) + 1
            candidates.append((line, " ".join(match.group(1).split())))
        for line, cmd in candidates:
            for m in COMMAND.finditer(cmd):
                # the script's arguments end where the shell's next command or redirection starts
                args = re.split(r"\s(?:&&|\|\||\||;|>|2>)\s", m.group(2))[0]
                found.append((f"{name}:{line}", m.group(1), args))
    unique = {}  # the same command shown on several pages is checked once, where it first shows
    for where, script, args in found:
        unique.setdefault((script, " ".join(args.split())), where)
    return [(where, script, args) for (script, args), where in unique.items()]


COMMANDS = _collect()


OPTIONAL = re.compile(r"(?<![=\w'\"])\[[^\]]*\]")  # [key=value ...]: optional arguments


def _tokens(args: str) -> list[str]:
    # <run dir>, <time>, ...: a placeholder the user fills in; any value parses the same way
    tokens = shlex.split(PLACEHOLDER.sub("x", OPTIONAL.sub("", args)), comments=True)
    return [t for t in tokens if t != "..."]


def _jobs(overrides: list[str]) -> list[list[str]]:
    """A sweep's first job (each swept key at its first value), then, for each swept key, the
    first job with that key at each of its other values: every value is composed once."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {
        i: [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        for i, o in enumerate(parsed)
        if o.is_sweep_override()
    }
    first = [swept[i][0] if i in swept else text for i, text in enumerate(overrides)]
    jobs = [first]
    for i, values in swept.items():
        jobs += [first[:i] + [value] + first[i + 1 :] for value in values[1:]]
    return jobs


@cache
def _options(script: str) -> str:
    """What ``--help`` of an argparse entry point lists."""
    result = subprocess.run(
        [sys.executable, f"training/{script}.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_docs_show_commands():
    """The collector finds the commands (a regex that matched nothing would pass every check)."""
    scripts = {script for _, script, _ in COMMANDS}
    assert {"run_experiment", "sample", "report"} <= scripts
    assert sum(script == "run_experiment" for _, script, _ in COMMANDS) >= 30


@pytest.mark.parametrize(
    ("where", "script", "args"), COMMANDS, ids=[f"{w} {s}" for w, s, _ in COMMANDS]
)
def test_a_documented_command_parses(where: str, script: str, args: str, tmp_path: Path):
    if not (REPO / "training" / f"{script}.py").is_file():
        pytest.skip(f"training/{script}.py does not exist (yet): {where} shows it")
    tokens = _tokens(args)
    if script == "run_experiment":
        overrides = [t for t in tokens if t not in ("-m", "--multirun", "--help", "-h")]
        first, *others = _jobs(overrides)
        for job in others:
            compose_config(job, tmp_path / "run")
        cfg = compose_config(first, tmp_path / "run")
        # the checks a run makes before it starts, where they do not need the user's files: a
        # placeholder, data.path, init_from or ckpt_path names a file that does not exist here
        user_files = PLACEHOLDER.search(args) or any(
            t.split("=")[0] in ("data.path", "init_from", "ckpt_path") for t in overrides
        )
        if not user_files:
            from llm_scratch.train.validate import validate_config

            validate_config(cfg)
    elif script == "sample":
        from llm_scratch.sample import parse_args

        if tokens != ["--help"]:
            parse_args(tokens)
    elif script == "report":
        listed = _options("report")
        for token in tokens:
            if token.startswith("-"):
                assert re.search(rf"(?<![\w-]){re.escape(token.split('=')[0])}\b", listed), (
                    f"{where}: report.py has no option {token}"
                )
    elif (REPO / "configs" / f"{script}.yaml").is_file():
        # a Hydra entry point: --cfg job composes its config and prints it, running nothing (of
        # a sweep, its first job)
        if "-m" in tokens or "--multirun" in tokens:
            tokens = _jobs([t for t in tokens if t not in ("-m", "--multirun")])[0]
        result = run_cli(f"training/{script}.py", *tokens, "--cfg", "job")
        assert result.returncode == 0, f"{where}: {result.stderr.strip()[-2000:]}"
    else:
        pytest.fail(f"{where}: no check for training/{script}.py; add one to tests/test_docs.py")


MACHINE_PATH = re.compile(r"(?<![\w.<>$~-])/(?:root|work|home|tmp)/|\.\./shared\b")
HISTORY = re.compile(r"\b(?:sittings?|engineers?)\b", re.IGNORECASE)


def _published() -> list[Path]:
    docs = [p for p in (REPO / "docs").rglob("*") if p.suffix in (".md", ".json")]
    bench = list((REPO / "benchmarks" / "results").glob("*.json"))
    return [REPO / "README.md", *sorted(docs), *sorted(bench)]


def test_no_machine_paths_in_what_is_published():
    """README, docs/ (reports included) and benchmark results name no path of the machine that
    made them: a user has no /root/runs or ../shared."""
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()[:120]}"
        for path in _published()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert not found, "absolute paths of the machine:\n" + "\n".join(found)


def test_the_docs_speak_of_the_package_not_of_how_it_was_made():
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()[:120]}"
        for path in DOC_FILES
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert not found, "\n".join(found)


def test_the_path_check_catches_what_it_should():
    assert MACHINE_PATH.search("paths.log_dir=/root/runs/outputs")
    assert MACHINE_PATH.search("LLM_SCRATCH_DATA_DIR=../shared/data")
    assert MACHINE_PATH.search('"path": "/tmp/pytest-1/run"')
    assert not MACHINE_PATH.search("paths.log_dir=<log dir>")
    assert not MACHINE_PATH.search("outputs/train/runs/x and docs/results/a/b")
