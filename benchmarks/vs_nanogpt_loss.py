"""Validation loss after 2000 steps at nanoGPT's CPU config, nanoGPT against ours, 3 seeds each.

nanoGPT is run from a temporary copy of its files (``--peer``, a clone of nanoGPT; nothing of
it is part of this package), as its README runs it on a CPU, with two changes: its
hard-coded seed 1337 becomes each ``--seeds`` value, and it evaluates only at the start and the
end (``--eval_interval=2000``) over 200 random batches a split (its config's own
``eval_iters``, not the README's 20, for a less noisy estimate). Our side is the sweep

    python training/run_experiment.py -m experiment=nanogpt_cpu seed=1,2,3

whose jobs' final ``val/loss`` (the whole validation split) is read from their summary.json:

    python benchmarks/vs_nanogpt_loss.py --peer <nanoGPT clone> --ours <its sweep dir>

Prints each seed's loss, the means with 95% intervals and Welch's test of the difference; with
``--out``, writes the figures as JSON too. Needs ``LLM_SCRATCH_DATA_DIR`` (tinyshakespeare.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from llm_scratch.report.stats import describe, welch

STEPS = 2000
# nanoGPT's README CPU run (README.md, "I only have a macbook"), evaluated at the start and end
NANOGPT_ARGS = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=200",
    f"--eval_interval={STEPS}",
    "--log_interval=100",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    f"--max_iters={STEPS}",
    f"--lr_decay_iters={STEPS}",
    "--dropout=0.0",
]
FINAL = re.compile(rf"step {STEPS}: train loss ([\d.]+), val loss ([\d.]+)")


def nanogpt_val_loss(peer: Path, seed: int, corpus: Path, work: Path) -> float:
    """nanoGPT's validation loss after STEPS steps with ``seed``, from a fresh copy of it."""
    copy = work / f"nanogpt-seed{seed}"
    shutil.copytree(peer, copy)
    for path in copy.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
    train = copy / "train.py"
    source = train.read_text()
    if "torch.manual_seed(1337 + seed_offset)" not in source:
        raise SystemExit("error: nanoGPT's train.py no longer seeds with 1337 + seed_offset")
    train.write_text(source.replace("1337 + seed_offset", f"{seed} + seed_offset"))
    data = copy / "data" / "shakespeare_char"
    shutil.copy(corpus, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    args = [*NANOGPT_ARGS, f"--out_dir={work / f'out-seed{seed}'}"]
    run = subprocess.run(
        [sys.executable, "train.py", *args], cwd=copy, capture_output=True, text=True
    )
    found = FINAL.search(run.stdout)
    if run.returncode != 0 or not found:
        tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
        raise SystemExit(f"error: nanoGPT's run with seed {seed} failed: {' / '.join(tail)}")
    return float(found.group(2))


def our_val_losses(sweep: Path) -> dict[int, float]:
    """Seed -> final val/loss of each job of our sweep that trained all STEPS steps."""
    losses = {}
    for summary_path in sorted(sweep.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        if summary.get("global_step") != STEPS:
            continue
        config = OmegaConf.load(summary_path.parent / "config.yaml")
        losses[int(config.seed)] = float(summary["metrics"]["val/loss"])
    if not losses:
        raise SystemExit(f"error: no job in {sweep} has trained {STEPS} steps")
    return losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", type=Path, required=True, help="nanoGPT's files")
    p.add_argument("--ours", type=Path, required=True, help="the experiment=nanogpt_cpu sweep")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = p.parse_args(argv)
    corpus = Path(os.environ.get("LLM_SCRATCH_DATA_DIR", "")) / "tinyshakespeare.txt"
    if not corpus.is_file():
        raise SystemExit("error: set LLM_SCRATCH_DATA_DIR to a folder with tinyshakespeare.txt")
    ours = our_val_losses(args.ours)
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="vs_nanogpt_loss_") as tmp:
        theirs = {seed: nanogpt_val_loss(args.peer, seed, corpus, Path(tmp)) for seed in seeds}
    rows = {"nanoGPT": theirs, "ours": ours}
    for name, losses in rows.items():
        d = describe(list(losses.values()))
        seeds_text = ", ".join(f"seed {s}: {v:.4f}" for s, v in sorted(losses.items()))
        print(
            f"{name}: mean {d.mean:.4f}, 95% CI {d.ci95[0]:.4f} to {d.ci95[1]:.4f} ({seeds_text})"
        )
    diff = welch(list(ours.values()), list(theirs.values()))
    print(
        f"ours - nanoGPT: {diff.diff:+.4f} (95% CI {diff.ci95[0]:+.4f} to {diff.ci95[1]:+.4f}, "
        f"Welch p = {diff.p_value:.2f})"
    )
    if args.out:
        figures = {
            "steps": STEPS,
            "nanogpt_args": NANOGPT_ARGS,
            "val_loss": {
                name: {str(s): v for s, v in losses.items()} for name, losses in rows.items()
            },
            "ours_minus_nanogpt": {"diff": diff.diff, "ci95": diff.ci95, "p_value": diff.p_value},
        }
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
