"""The environment variables the sweep launcher (hydra_plugins/llm_scratch_launcher) sets for each
job it starts, read by the job: named once here, below both."""

# "<task_name>-<sweep directory name>": groups a sweep's jobs (W&B) and marks a process as a job
SWEEP_ID_ENV = "LLM_SCRATCH_SWEEP_ID"
# the job directory of a stopped sweep's job that is to continue from its own last.ckpt
CONTINUE_ENV = "LLM_SCRATCH_CONTINUE_JOB"
# The marker a sweep launcher writes into each job folder it creates, before the job runs: the
# sweep's id (from its sweep.json) and the job's number. It is the proof that the folder is the
# sweep's own; nothing without it is ever emptied or continued in place. A run's directory check
# (llm_scratch/train/run_dir.py) accepts it as it accepts log files.
SWEEP_JOB_MARKER = ".sweep_job"
