"""Turn a sweep into a report: ``python training/report.py <multirun dir> [--out DIR]``.

Writes report.md (a table with one row per job, the loss curves overlaid, one sample per job)
and its PNG plots into the multirun directory, or into --out.
"""

import argparse
import sys
from pathlib import Path

from llm_scratch.errors import UserError, report_user_error
from llm_scratch.report import collect_jobs, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the multirun directory of a sweep")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: sweep_dir)"
    )
    parser.add_argument("--title", default=None, help="the report's title")
    args = parser.parse_args(argv)
    try:
        jobs, shared = collect_jobs(args.sweep_dir)
        title = args.title or f"Sweep report: {args.sweep_dir}"
        path = write_report(jobs, shared, args.out or args.sweep_dir, title=title)
    except UserError as error:
        return report_user_error(error)
    print(f"wrote {path} ({len(jobs)} jobs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
