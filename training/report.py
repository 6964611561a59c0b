"""Compare runs: ``python training/report.py <sweep dir | run dir | dir of runs> [more ...] [--out DIR]``.

Writes report.md (a summary of each factor's effect with its verdict; the jobs pooled into
groups that differ only in seed, with mean, sd and 95% interval per group; each factor's
comparisons, seed by seed where the levels ran the same seeds and Welch's test otherwise; a
table with one row per job; the loss curves, one per group; one sample per job), report.json
(the same figures for scripts) and the PNG plots. One directory: written there; several: into
the folder that holds them all; or into --out. What could not be read is named in the report.
"""

import argparse
import sys
from pathlib import Path

from llm_scratch.errors import UserError, report_user_error
from llm_scratch.report import collect, write_report
from llm_scratch.report.collect import SWEEP_MANIFEST


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as the package's one ``error:`` line (exit 2)."""

    def error(self, message: str) -> None:
        raise UserError(f"{message}; see `python training/report.py --help`.")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "dirs",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="a sweep's multirun directory, a run's directory, or a directory of runs; "
        "several are compared together",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write (default: the one DIR, or the folder that holds them all)",
    )
    parser.add_argument("--title", default=None, help="the report's title")
    return parser


def _title(dirs: list[Path], single_run: bool) -> str:
    """Named by the folders (never their absolute paths): a run's, a sweep's, or runs'."""
    names = ", ".join(d.resolve().name or str(d) for d in dirs)
    if single_run:
        return f"Run report: {names}"
    sweep = len(dirs) == 1 and any(
        (dirs[0] / name).exists() for name in ("multirun.yaml", SWEEP_MANIFEST)
    )
    return f"{'Sweep report' if sweep else 'Report'}: {names}"


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        collection = collect(args.dirs)
        jobs, single_run = collection.jobs, collection.single_run
        out = args.out or collection.base
        if out == Path(out.anchor):  # runs on different trees: never write into /
            raise UserError(
                f"The directories given share no folder but {out}; pass --out DIR for the report."
            )
        path = write_report(
            jobs,
            collection.shared,
            out,
            title=args.title or _title(args.dirs, single_run),
            single_run=single_run,
            unreadable=collection.unreadable,
            base=collection.base,
        )
    except UserError as error:
        return report_user_error(error)
    finished = sum(job.finished for job in jobs)
    if single_run:
        counts = "1 job, a single run" + ("" if finished else "; it did not finish")
    else:
        counts = f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}, {finished} finished"
    print(f"wrote {path} and {path.with_name('report.json').name} ({counts})")
    problems = collection.all_unreadable
    if problems:
        print(
            f"warning: {len(problems)} thing(s) could not be read, first {problems[0].path}: "
            f"{problems[0].problem}; report.md lists them under 'Could not read'",
            file=sys.stderr,
        )
    if not finished:
        what = "the run" if single_run else "no job"
        where = " ".join(str(d) for d in args.dirs)
        print(
            f"warning: {what} in {where} has {'not ' if single_run else ''}finished "
            "(no summary.json): the report shows the curves logged so far and no statistics",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
