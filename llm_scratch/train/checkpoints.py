"""Finding the checkpoint a run continues from."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from llm_scratch.errors import UserError


def _last_in(run_dir: Path) -> Path | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def resolve_ckpt_path(ckpt_path: str | None, paths: DictConfig) -> str | None:
    """Turn the user's ``ckpt_path`` into a checkpoint file.

    - a ``.ckpt`` file: itself;
    - a run directory: its ``checkpoints/last.ckpt``;
    - ``last``: the ``last.ckpt`` of the most recent run under ``paths.log_dir`` (Lightning's own
      ``"last"`` would look in the new run's empty directory).
    """
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        runs = sorted(
            Path(paths.log_dir).glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if not runs:
            raise UserError(
                f"ckpt_path=last: no run under {paths.log_dir} has a checkpoints/last.ckpt. "
                "Pass the checkpoint file or the run directory instead."
            )
        return str(runs[-1])
    path = Path(ckpt_path)
    if path.is_dir():
        last = _last_in(path)
        if last is None:
            raise UserError(
                f"ckpt_path={ckpt_path} is a directory without checkpoints/last.ckpt. "
                "Pass a .ckpt file or a run directory that saved one."
            )
        return str(last)
    if not path.is_file():
        raise UserError(
            f"ckpt_path={ckpt_path} does not exist. Pass a .ckpt file, a run directory, or 'last'."
        )
    return str(path)
