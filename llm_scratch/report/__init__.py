"""Reports of runs: the jobs pooled by seed, the comparisons between settings with their
intervals and one verdict each, a table, loss curves and samples of every job, in report.md and
report.json; what could not be read is named, never a traceback."""

from llm_scratch.report.collect import (
    Collection,
    JobResult,
    Unreadable,
    collect,
    collect_jobs,
    is_run_dir,
)
from llm_scratch.report.groups import Comparison, Group, compare, group_jobs
from llm_scratch.report.write import write_report

__all__ = [
    "Collection",
    "Comparison",
    "Group",
    "JobResult",
    "Unreadable",
    "collect",
    "collect_jobs",
    "compare",
    "group_jobs",
    "is_run_dir",
    "write_report",
]
