"""Turn a sweep into a report: ``python training/report.py <multirun dir> [--out DIR]``.

Writes report.md (the jobs pooled into groups that differ only in seed, with mean, sd and 95%
interval per group; each factor's comparison with Welch's interval and t-test and a verdict; a
table with one row per job; the loss curves, one per group; one sample per job), report.json
(the same figures for scripts) and the PNG plots into the multirun directory, or into --out.
A single run's directory gives that run's report.
"""

import argparse
import sys
from pathlib import Path

from llm_scratch.errors import UserError, report_user_error
from llm_scratch.report import collect_jobs, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep_dir", type=Path, help="the multirun directory of a sweep (or one run's directory)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: sweep_dir)"
    )
    parser.add_argument("--title", default=None, help="the report's title")
    args = parser.parse_args(argv)
    try:
        jobs, shared = collect_jobs(args.sweep_dir)
        # the directory of one run, not a sweep's (whose jobs are its sub-folders)
        single_run = [job.path for job in jobs] == [args.sweep_dir]
        kind = "Run report" if single_run else "Sweep report"
        title = args.title or f"{kind}: {args.sweep_dir}"
        path = write_report(
            jobs, shared, args.out or args.sweep_dir, title=title, single_run=single_run
        )
    except UserError as error:
        return report_user_error(error)
    finished = sum(job.finished for job in jobs)
    if single_run:
        counts = "1 job, a single run" + ("" if finished else "; it did not finish")
    else:
        counts = f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}, {finished} finished"
    print(f"wrote {path} and {path.with_name('report.json').name} ({counts})")
    if not finished:
        what = "the run" if single_run else "no job"
        print(
            f"warning: {what} in {args.sweep_dir} has {'not ' if single_run else ''}finished "
            "(no summary.json): the report shows the curves logged so far and no statistics",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
