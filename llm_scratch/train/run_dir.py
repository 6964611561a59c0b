"""What a run directory may hold: a run never writes over an earlier run's results, and a run
that fails on its config leaves nothing of its own behind."""

from __future__ import annotations

import contextlib
from pathlib import Path

from llm_scratch.errors import UserError


def check_run_dir(output_dir: Path, ckpt_path: str | None) -> None:
    """A run never writes over an earlier run's results, not even the run it continues: the
    CSV logger would start metrics.csv afresh, and a continuation gets its own directory."""
    earlier = [p for p in ("checkpoints", "metrics.csv") if (output_dir / p).exists()]
    if (
        earlier
        and ckpt_path is not None
        and Path(ckpt_path).resolve().is_relative_to(output_dir.resolve())
    ):
        raise UserError(
            f"ckpt_path={ckpt_path} would continue the run in its own directory {output_dir} "
            "and overwrite its metrics.csv; leave hydra.run.dir at its default (or choose a new "
            "one) so that the continuation gets a directory of its own."
        )
    if earlier:
        raise UserError(
            f"Run directory {output_dir} already holds a run ({', '.join(earlier)}). "
            "Choose a new hydra.run.dir, or continue that run in a new directory: ckpt_path="
            f"{output_dir} with hydra.run.dir left at its default."
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"Cannot write to the run directory {output_dir} ({error.strerror}). "
            "Choose a writable place with hydra.run.dir=... or paths.log_dir=..."
        ) from error


def remove_unfinished(output_dir: Path, written: list[Path]) -> None:
    """After a failure, remove the files this call wrote (config.yaml, tokenizer.json) if the run
    left nothing else: no checkpoint, metrics, samples or logger files. Hydra's own files (.hydra/
    and the log) stay, and so does anything an earlier run put there."""
    ours = {path.resolve() for path in written}
    for path in output_dir.rglob("*"):
        relative = path.relative_to(output_dir)
        hydras = relative.parts[0] == ".hydra" or (
            len(relative.parts) == 1 and path.suffix == ".log"
        )
        if path.is_file() and not hydras and path.resolve() not in ours:
            return  # the run produced something: keep its config and tokenizer with it
    for path in written:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
