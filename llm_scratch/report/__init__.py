"""Sweep reports: the jobs pooled by seed, the comparisons between settings with their
intervals, a table, loss curves and samples of every job, in report.md and report.json."""

from llm_scratch.report.collect import JobResult, collect_jobs, is_run_dir
from llm_scratch.report.groups import Comparison, Group, compare, group_jobs
from llm_scratch.report.write import write_report

__all__ = [
    "Comparison",
    "Group",
    "JobResult",
    "collect_jobs",
    "compare",
    "group_jobs",
    "is_run_dir",
    "write_report",
]
