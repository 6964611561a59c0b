"""Sweep reports: one Markdown file with a table, loss curves and samples of every job."""

from llm_scratch.report.collect import JobResult, collect_jobs
from llm_scratch.report.write import write_report

__all__ = ["JobResult", "collect_jobs", "write_report"]
