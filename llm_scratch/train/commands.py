"""The commands a run prints (continue it, sample from it, report on it): real commands that
run as they are copied, whatever the run directory's name (spaces, quotes, a newline).

Every printed command goes through :func:`command`: shell-quoted with ``shlex``, or, for an
argument holding a newline or another control character, in bash's ``$'...'`` form, so the
command stays on one line; a value of a Hydra override (``training/run_experiment.py
key=value``) is quoted for Hydra's parser too.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

TRAIN = "training/run_experiment.py"
SAMPLE = "training/sample.py"
REPORT = "training/report.py"

# what Hydra's override parser takes unquoted in a value (no commas, brackets, quotes, spaces)
_PLAIN = re.compile(r"[A-Za-z0-9_/.@%+~-]+")


def hydra_value(value: str) -> str:
    """``value`` as Hydra's override parser reads it back unchanged: as it is when plain, else
    single-quoted (a quote escaped, and the backslashes before a quote or at the end doubled)."""
    if _PLAIN.fullmatch(value):
        return value
    quoted = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", value)
    quoted = re.sub(r"(\\+)$", lambda m: m[1] * 2, quoted)
    return f"'{quoted}'"


def override(key: str, value: object) -> str:
    """``key=value`` for training's command line (a Hydra override)."""
    return f"{key}={hydra_value(str(value))}"


def shell_quote(arg: str) -> str:
    """``arg`` for a shell command line, on one line: ``shlex.quote``, or ``$'...'`` (bash, zsh)
    where it holds a control character."""
    if not any(ord(c) < 32 or ord(c) == 127 for c in arg):
        return shlex.quote(arg)
    escaped = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    body = "".join(
        escaped.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c) for c in arg
    )
    return f"$'{body}'"


def command(script: str, *args: str) -> str:
    """``python <script> <args>``, each argument quoted for the shell."""
    return " ".join(shell_quote(a) for a in ("python", script, *args))


def continue_command(run_dir: Path, *extra: str) -> str:
    """The command that continues the run in ``run_dir`` with its own config (and ``extra``
    overrides), into a directory of its own."""
    return command(TRAIN, override("ckpt_path", run_dir), *extra)


def sample_command(run_dir: Path) -> str:
    # sample.py takes its values verbatim (not through Hydra's parser): shell quoting only
    return command(SAMPLE, f"ckpt_path={run_dir}")


def report_command(run_dir: Path) -> str:
    return command(REPORT, str(run_dir))


def shown_path(path: Path) -> str:
    """A path for a line of text: as it is, or shell-quoted where it holds a control character
    (a newline would break the line)."""
    text = str(path)
    return shell_quote(text) if any(ord(c) < 32 or ord(c) == 127 for c in text) else text
