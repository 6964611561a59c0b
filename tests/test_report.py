"""The sweep report: seed groups, their statistics and the comparisons between settings, checked
against textbook formulas computed here; report.json's shape; failed jobs and bad input; a run's
own report; one real two-seed sweep end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from llm_scratch.errors import UserError
from llm_scratch.report import collect_jobs, compare, group_jobs
from llm_scratch.report.stats import describe, paired, welch
from tests.helpers import FAST, REPO, compose_config, run_cli

# ----------------------------------------------------------------------------- hand-made sweeps


def make_job(
    sweep: Path,
    name: str,
    overrides: list[str],
    val_loss: float | None = None,
    epoch_loss: float | None = None,
    val_curve: list[float] | None = None,
    finished: bool = True,
    output: str | None = None,
) -> Path:
    """A job directory as a sweep leaves it: .hydra/overrides.yaml (with the launcher's own
    hydra.* override), metrics.csv, summary.json when it finished, job_output.log if given."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"hydra.run.dir={job}", *overrides])
    )
    val_curve = val_curve if val_curve is not None else [val_loss + 0.5, val_loss]
    rows = ["epoch,step,train/loss,val/loss"]
    for step, val in enumerate(val_curve):
        rows += [f"0,{step},{val + 0.1},", f"0,{step},,{val}"]
    (job / "metrics.csv").write_text("\n".join(rows) + "\n")
    if finished:
        metrics = {"val/loss": val_loss, "train/epoch_loss": epoch_loss, "val/ppl": 1.0}
        summary = {"metrics": metrics, "num_params": 1000, "wall_time_s": 1.0}
        (job / "summary.json").write_text(json.dumps(summary))
    if output is not None:
        (job / "job_output.log").write_text(output)
    return job


def make_sweep(root: Path, jobs: list[tuple[list[str], float]]) -> Path:
    """A sweep of finished jobs, numbered in the order given: (overrides, val/loss); the train
    loss of the last epoch is val/loss + 1, the best val/loss 0.25 below the final one."""
    sweep = root / "sweep"
    for number, (overrides, val) in enumerate(jobs):
        make_job(
            sweep,
            str(number),
            ["model=gpt-nano", *overrides],
            val,
            val + 1,
            [val + 1, val - 0.25, val],
        )
    return sweep


def textbook_mean_ci(values: list[float]) -> tuple[float, float, tuple[float, float]]:
    x = np.asarray(values)
    mean, sd = x.mean(), x.std(ddof=1)
    interval = scipy_stats.t.interval(0.95, len(x) - 1, loc=mean, scale=sd / math.sqrt(len(x)))
    return mean, sd, interval


def textbook_welch(a: list[float], b: list[float]) -> tuple[float, tuple[float, float], float]:
    """The difference, Welch's interval and p from the textbook formulas (p from the t
    distribution's survival function, not from ttest_ind)."""
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff, se = a.mean() - b.mean(), math.sqrt(va + vb)
    q = scipy_stats.t.isf(0.025, df)
    return diff, (diff - q * se, diff + q * se), 2 * scipy_stats.t.sf(abs(diff) / se, df)


def _load_report_cli():
    spec = importlib.util.spec_from_file_location("report_cli", REPO / "training" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT_CLI = _load_report_cli()


def report(sweep: Path, *args: str) -> tuple[str, dict]:
    """training/report.py's main, in this process (a fresh one per call costs seconds: the
    tests that check its console output run it with run_cli); report.md's text and
    report.json."""
    assert REPORT_CLI.main([str(sweep), *args]) == 0
    return (sweep / "report.md").read_text(), json.loads((sweep / "report.json").read_text())


def one_error_line(out: subprocess.CompletedProcess, *words: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- the arithmetic


def test_describe_gives_the_mean_sample_sd_and_students_t_interval():
    values = [2.1, 2.5, 1.9, 2.8]
    stats = describe(values)
    mean, sd, (lo, hi) = textbook_mean_ci(values)
    assert stats.n == 4
    assert stats.mean == pytest.approx(mean, rel=1e-12)
    assert stats.std == pytest.approx(sd, rel=1e-12)
    assert stats.ci95 == pytest.approx((lo, hi), rel=1e-12)
    # the t quantile for 3 degrees of freedom, from a printed table: wider than the normal 1.96
    assert (stats.ci95[1] - stats.mean) / (sd / 2) == pytest.approx(3.182, abs=1e-3)


def test_welch_matches_the_textbook_and_its_p_agrees_with_its_interval():
    a, b = [3.1, 3.4, 2.9], [3.9, 4.4, 4.1, 4.6, 3.8]
    result = welch(a, b)
    diff, ci, p = textbook_welch(a, b)
    assert result.diff == pytest.approx(diff, rel=1e-12)
    assert result.ci95 == pytest.approx(ci, rel=1e-10)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    # scipy's own interval of the same test, asked for another way
    interval = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert result.ci95 == pytest.approx((interval.low, interval.high), rel=1e-10)
    # p < 0.05 exactly when the 95% interval leaves out 0, over many random draws
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_a, n_b = rng.integers(2, 7, size=2)
        x = list(rng.normal(0, 1, n_a))
        y = list(rng.normal(rng.uniform(-2, 2), rng.uniform(0.2, 3), n_b))
        r = welch(x, y)
        assert (r.p_value < 0.05) == (not r.ci95[0] <= 0 <= r.ci95[1]), (x, y, r)


def test_below_two_values_or_without_spread_there_is_no_interval():
    one = describe([2.5])
    assert (one.n, one.mean, one.std, one.ci95) == (1, 2.5, None, None)
    assert describe([]).mean is None
    single = welch([2.5], [3.0, 3.5])
    assert single.diff == pytest.approx(-0.75) and single.ci95 is None and single.p_value is None
    flat = welch([1.0, 1.0], [2.0, 2.0])
    assert flat.diff == pytest.approx(-1.0) and flat.ci95 is None and flat.p_value is None
    # a diverged seed: no honest mean
    assert (
        describe([1.0, math.nan]).mean is None and welch([1.0, math.inf], [1.0, 2.0]).diff is None
    )


# ----------------------------------------------------------------------------- groups and report.json


def test_groups_ignore_the_seed_and_report_json_has_the_documented_shape(tmp_path):
    true_vals, false_vals = [3.0, 3.2, 3.1], [3.6, 3.9, 3.75]
    sweep = make_sweep(
        tmp_path,
        [
            (["model.pre_norm=True", f"seed={s}"], v)
            for s, v in zip((1, 2, 3), true_vals, strict=True)
        ]
        + [
            (["model.pre_norm=False", f"seed={s}"], v)
            for s, v in zip((1, 2, 3), false_vals, strict=True)
        ],
    )
    text, data = report(sweep)

    assert set(data) >= {"groups", "comparisons"}
    group_keys = {"label", "overrides", "seeds", "n", "metrics"}
    metric_keys = {"values", "mean", "std", "ci95"}
    comparison_keys = {"metric", "factor", "a", "b", "diff", "ci95", "p_value", "n_a", "n_b"}
    assert len(data["groups"]) == 2
    for group, values in zip(data["groups"], (true_vals, false_vals), strict=True):
        assert group_keys <= set(group)
        assert group["seeds"] == [1, 2, 3] and group["n"] == 3
        assert "seed" not in group["overrides"] and "hydra.run.dir" not in group["overrides"]
        assert set(group["metrics"]) >= {"val/loss", "val/loss_best", "train/epoch_loss"}
        for metric, shift in (("val/loss", 0), ("val/loss_best", -0.25), ("train/epoch_loss", 1)):
            got = group["metrics"][metric]
            assert metric_keys <= set(got)
            expected = [v + shift for v in values]
            mean, sd, ci = textbook_mean_ci(expected)
            assert got["values"] == pytest.approx(expected)
            assert got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(sd)
            assert got["ci95"] == pytest.approx(list(ci))
    assert data["groups"][0]["overrides"] == {"model": "gpt-nano", "model.pre_norm": True}
    assert data["groups"][1]["label"] == "pre_norm=False"

    assert {c["metric"] for c in data["comparisons"]} == {
        "val/loss",
        "val/loss_best",
        "train/epoch_loss",
    }
    (val,) = [c for c in data["comparisons"] if c["metric"] == "val/loss"]
    assert comparison_keys <= set(val)
    # two levels: the first listed (True) is the baseline b
    assert (val["factor"], val["a"], val["b"], val["n_a"], val["n_b"]) == (
        "model.pre_norm",
        False,
        True,
        3,
        3,
    )
    diff, ci, p = textbook_welch(false_vals, true_vals)
    assert val["diff"] == pytest.approx(diff) and val["ci95"] == pytest.approx(list(ci))
    assert val["p_value"] == pytest.approx(p)
    sentence = (
        f"pre_norm=False raises val/loss by {diff:.2f} compared with pre_norm=True "
        f"(95% CI {ci[0]:.2f} to {ci[1]:.2f}, p = {p:.2g}, 3 seeds each)"
    )
    assert val["verdict"] == sentence and sentence in text
    assert (
        "## Groups" in text and "## Comparisons" in text and "| 0 | pre_norm=True, seed=1 |" in text
    )


def test_a_2x2_grid_compares_main_effects_pooled_over_the_other_factor(tmp_path):
    # pre_norm shifts the loss by -1.0; warm-up by +0.02, less than the seeds' noise
    noise = {1: 0.05, 2: -0.03}
    jobs = []
    for pre, pre_effect in (("True", -1.0), ("False", 0.0)):
        for warm, warm_effect in (("0.0", 0.0), ("0.1", 0.02)):
            for seed in (1, 2):
                overrides = [
                    f"model.pre_norm={pre}",
                    f"scheduler.warmup_fraction={warm}",
                    f"seed={seed}",
                ]
                jobs.append((overrides, 4.0 + pre_effect + warm_effect + noise[seed]))
    sweep = make_sweep(tmp_path, jobs)
    text, data = report(sweep)
    assert len(data["groups"]) == 4
    by_factor = {c["factor"]: c for c in data["comparisons"] if c["metric"] == "val/loss"}
    assert set(by_factor) == {"model.pre_norm", "scheduler.warmup_fraction"}

    pre = by_factor["model.pre_norm"]
    pooled_true = [v for overrides, v in jobs if "model.pre_norm=True" in overrides]
    pooled_false = [v for overrides, v in jobs if "model.pre_norm=False" in overrides]
    diff, ci, p = textbook_welch(pooled_false, pooled_true)
    assert (pre["n_a"], pre["n_b"]) == (4, 4)
    assert pre["diff"] == pytest.approx(1.0) and pre["diff"] == pytest.approx(diff)
    assert pre["ci95"] == pytest.approx(list(ci)) and pre["p_value"] == pytest.approx(p)
    assert (
        "raises val/loss by 1.00" in pre["verdict"]
        and "pooled over the other factors" in pre["verdict"]
    )

    warm = by_factor["scheduler.warmup_fraction"]
    assert (warm["a"], warm["b"]) == (0.1, 0.0)
    assert warm["diff"] == pytest.approx(0.02)
    # Welch's test counts the seeds' noise; seed by seed it cancels: each seed gains 0.02
    assert "not distinguishable from seed noise; but the jobs share seeds" in warm["verdict"]
    assert warm["verdict"].endswith("larger than seed noise")
    assert "main effect" in text


def textbook_paired(a: list[float], b: list[float]) -> tuple[float, tuple[float, float], float]:
    d = np.asarray(a) - np.asarray(b)
    mean, se, df = d.mean(), d.std(ddof=1) / math.sqrt(len(d)), len(d) - 1
    q = scipy_stats.t.isf(0.025, df)
    return mean, (mean - q * se, mean + q * se), 2 * scipy_stats.t.sf(abs(mean) / se, df)


def test_jobs_that_share_seeds_are_also_compared_seed_by_seed(tmp_path):
    # post-norm sits on a plateau whatever the seed; pre-norm's gain depends on the seed (the
    # grid's pattern). Pooled, Welch's test counts 6 jobs a side and finds the gain; seed by
    # seed there are 3 pairs, and the gain is not shown.
    pre_by_seed = {1: 3.2, 2: 5.0, 3: 5.8}
    jobs = []
    for pre in ("True", "False"):
        for warm, warm_noise in (("0.0", {}), ("0.1", {1: 0.05, 2: -0.04, 3: 0.01})):
            for seed in (1, 2, 3):
                value = pre_by_seed[seed] if pre == "True" else 6.05 + seed / 1000
                value += warm_noise.get(seed, 0.0)
                overrides = [f"model.pre_norm={pre}", f"scheduler.warmup_fraction={warm}"]
                jobs.append(([*overrides, f"seed={seed}"], value))
    _, data = report(make_sweep(tmp_path, jobs))
    by_factor = {c["factor"]: c for c in data["comparisons"] if c["metric"] == "val/loss"}
    pre = by_factor["model.pre_norm"]

    def mean_at(level: str, seed: int) -> float:
        values = [v for o, v in jobs if f"model.pre_norm={level}" in o and f"seed={seed}" in o]
        return sum(values) / len(values)

    after = [mean_at("False", seed) for seed in (1, 2, 3)]
    before = [mean_at("True", seed) for seed in (1, 2, 3)]
    diff, ci, p = textbook_paired(after, before)
    pair = pre["paired_by_seed"]
    assert pair["seeds"] == [1, 2, 3]
    assert pair["diff"] == pytest.approx(diff) and pair["ci95"] == pytest.approx(list(ci))
    assert pair["p_value"] == pytest.approx(p) and p > 0.05
    assert pre["p_value"] < 0.05  # Welch, over 6 jobs a side
    assert pre["verdict"].startswith("pre_norm=False raises val/loss by")
    assert "but the jobs share seeds, and seed by seed (3 seeds)" in pre["verdict"]
    assert pre["verdict"].endswith("not distinguishable from seed noise")
    # where the two agree, the verdict is Welch's alone
    warm = by_factor["scheduler.warmup_fraction"]
    assert warm["paired_by_seed"]["seeds"] == [1, 2, 3] and "seed by seed" not in warm["verdict"]


def test_paired_matches_the_textbook_and_needs_two_pairs_with_spread():
    a, b = [3.1, 5.2, 5.9, 4.4], [6.0, 6.1, 6.05, 6.2]
    diff, ci, p = textbook_paired(a, b)
    got = paired(a, b)
    assert got.diff == pytest.approx(diff) and got.ci95 == pytest.approx(ci)
    assert got.p_value == pytest.approx(p) and got.df == 3
    assert paired([1.0], [2.0]).ci95 is None  # one pair: no interval
    assert paired([1.0, 2.0], [0.5, 1.5]).ci95 is None  # the same difference: no spread
    with pytest.raises(ValueError, match="as many on each side"):
        paired([1.0, 2.0], [1.0])


def test_a_factor_with_three_levels_is_compared_with_its_first_listed_level(tmp_path):
    lrs = ("1e-3", "3e-4", "1e-4")
    values = {"1e-3": [3.0, 3.1], "3e-4": [3.5, 3.6], "1e-4": [4.5, 4.7]}
    sweep = make_sweep(
        tmp_path,
        [([f"optimizer.lr={lr}", f"seed={s}"], values[lr][s - 1]) for lr in lrs for s in (1, 2)],
    )
    text, data = report(sweep)
    val = [c for c in data["comparisons"] if c["metric"] == "val/loss"]
    assert [(c["a"], c["b"]) for c in val] == [(3e-4, 1e-3), (1e-4, 1e-3)]
    for c, level in zip(val, ("3e-4", "1e-4"), strict=True):
        diff, ci, _ = textbook_welch(values[level], values["1e-3"])
        assert c["diff"] == pytest.approx(diff) and c["ci95"] == pytest.approx(list(ci))
    assert "compared with the baseline `lr=1e-3`, the first listed" in text


def test_a_numeric_factor_of_three_levels_or_more_is_plotted_against(tmp_path):
    from llm_scratch.report.write import numeric_factors

    lrs, warmups = ("1e-3", "1e-5", "1e-4"), ("0.1", "0.0")
    sweep = make_sweep(
        tmp_path,
        [
            ([f"optimizer.lr={lr}", f"scheduler.warmup_fraction={w}", f"seed={s}"], 3 + i + s / 10)
            for i, lr in enumerate(lrs)
            for w in warmups
            for s in (1, 2)
        ],
    )
    text, _ = report(sweep)
    # lr has three numeric levels (sorted); the warm-up's two make a line each, not an axis
    assert numeric_factors(group_jobs(collect_jobs(sweep)[0])) == {
        "optimizer.lr": [1e-5, 1e-4, 1e-3]
    }
    for file in ("lr_val_loss.png", "lr_train_epoch_loss.png"):
        assert f"]({file})" in text
        assert (sweep / file).read_bytes().startswith(b"\x89PNG")
    assert text.index("## Against the numeric factors") < text.index("## Comparisons")
    two_levels = make_sweep(
        tmp_path / "two", [(["optimizer.lr=1e-3"], 3.0), (["optimizer.lr=1e-4"], 4.0)]
    )
    text, _ = report(two_levels)
    assert "## Against the numeric factors" not in text
    assert not list(two_levels.glob("lr_*.png"))


def test_a_group_of_one_shows_its_value_and_says_why_there_is_no_interval(tmp_path):
    sweep = make_sweep(
        tmp_path,
        [
            (["model.pre_norm=True", "seed=1"], 3.0),
            (["model.pre_norm=True", "seed=2"], 3.2),
            (["model.pre_norm=False", "seed=1"], 3.7),
        ],
    )
    text, data = report(sweep)
    single = data["groups"][1]["metrics"]["val/loss"]
    assert single == {"values": [3.7], "n": 1, "mean": 3.7, "std": None, "ci95": None}
    val = next(c for c in data["comparisons"] if c["metric"] == "val/loss")
    assert val["diff"] == pytest.approx(0.6)
    assert val["ci95"] is None and val["p_value"] is None
    assert "an interval needs at least 2 seeds on each side" in val["missing"]
    assert val["verdict"] in text and "no interval and no test" in val["verdict"]


def test_jobs_that_differ_only_in_seed_are_one_group_with_nothing_to_compare(tmp_path):
    sweep = make_sweep(tmp_path, [([f"seed={s}"], 3.0 + s / 10) for s in (1, 2, 3)])
    jobs, _ = collect_jobs(sweep)
    (group,) = group_jobs(jobs)
    assert group.label == "all jobs" and group.seeds == [1, 2, 3]
    assert compare([group]) == []
    text, data = report(sweep)
    assert data["comparisons"] == [] and "one setting, nothing to compare" in text


# ----------------------------------------------------------------------------- failed jobs, bad input


def test_a_failed_job_is_named_and_its_group_keeps_the_seeds_that_finished(tmp_path):
    sweep = make_sweep(
        tmp_path,
        [
            (["model.pre_norm=True", "seed=1"], 3.0),
            (["model.pre_norm=True", "seed=2"], 3.2),
            (["model.pre_norm=False", "seed=1"], 3.7),
            (["model.pre_norm=False", "seed=2"], 3.8),
        ],
    )
    make_job(
        sweep,
        "4",
        ["model=gpt-nano", "model.pre_norm=False", "seed=3"],
        val_curve=[9.0],
        finished=False,
        output="training...\nerror: CUDA out of memory | try a smaller batch\n",
    )
    # a job that failed before Hydra wrote its .hydra/: only its console output is left
    (sweep / "5").mkdir()
    (sweep / "5" / "job_output.log").write_text("ModuleNotFoundError: No module named 'x'\n")
    text, data = report(sweep)

    false_group = data["groups"][1]
    assert false_group["seeds"] == [1, 2] and false_group["n"] == 2
    assert false_group["metrics"]["val/loss"]["values"] == pytest.approx([3.7, 3.8])
    assert false_group["failed_jobs"] == ["4"]
    assert len(data["groups"]) == 2  # job 5 is in no group
    assert [f["job"] for f in data["failed_jobs"]] == ["4", "5"]
    assert data["failed_jobs"][1]["overrides"] is None
    section = text.split("## ⚠ Jobs that did not finish (2 of 6)")[1].split("\n## ")[0]
    assert (
        "| 4 | pre_norm=False, seed=3 | `error: CUDA out of memory \\| try a smaller batch` |"
        in section
    )
    assert "| 5 | (overrides unknown" in section and "No module named 'x'" in section


def test_a_sweep_where_no_job_finished_says_so_in_a_marked_section(tmp_path):
    sweep = tmp_path / "sweep"
    for n, pre in enumerate(("True", "False")):
        make_job(sweep, str(n), [f"model.pre_norm={pre}"], val_curve=[5.0], finished=False)
    out = run_cli("training/report.py", str(sweep))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.startswith("warning: no job in") and out.stderr.count("\n") == 1
    text = (sweep / "report.md").read_text()
    assert "## ⚠ No job has finished" in text and "## Comparisons" not in text
    data = json.loads((sweep / "report.json").read_text())
    assert [g["n"] for g in data["groups"]] == [0, 0]
    assert all(c["diff"] is None for c in data["comparisons"])


DAMAGED_OVERRIDES = {
    "not_yaml": ("- model.pre_norm=True\n- [unclosed\n", ["not YAML (line 3, column 1"]),
    "a_mapping": ("model.pre_norm: true\n", ["not a list of overrides", "dict"]),
    "not_strings": ("- 1\n- 2\n", ["not a list of overrides", "[1, 2]"]),
}


@pytest.mark.parametrize("kind", list(DAMAGED_OVERRIDES))
def test_a_damaged_overrides_file_is_named_with_the_fix(tmp_path, kind):
    content, words = DAMAGED_OVERRIDES[kind]
    sweep = make_sweep(tmp_path, [(["seed=1"], 3.0), (["seed=2"], 3.1)])
    overrides = sweep / "1" / ".hydra" / "overrides.yaml"
    overrides.write_text(content)
    with pytest.raises(UserError) as error:
        collect_jobs(sweep)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"Cannot read {overrides}: ")
    assert "hydra.overrides.task" in message
    for word in words:
        assert word in message


def test_bad_input_through_the_entry_point_is_one_line(tmp_path):
    sweep = make_sweep(tmp_path, [(["seed=1"], 3.0), (["seed=2"], 3.1)])
    overrides = sweep / "1" / ".hydra" / "overrides.yaml"
    overrides.write_text(DAMAGED_OVERRIDES["not_yaml"][0])
    one_error_line(run_cli("training/report.py", str(sweep)), f"Cannot read {overrides}")
    (tmp_path / "empty").mkdir()
    one_error_line(run_cli("training/report.py", str(tmp_path / "empty")), "holds no jobs")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="is not a directory"):
        collect_jobs(tmp_path / "a_file")


# ----------------------------------------------------------------------------- one run, imports


def test_a_single_run_directory_gives_a_run_report(tmp_path):
    run = make_job(tmp_path, "run", ["model=gpt-nano", "seed=7"], 3.0, 4.0)
    out = run_cli("training/report.py", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(1 job, a single run)" in out.stdout and "sweep" not in out.stdout.lower()
    text = (run / "report.md").read_text()
    assert text.startswith(f"# Run report: {run}\n") and "1 job: the run in" in text
    assert "sweep" not in text.lower() and "## Comparisons" not in text
    data = json.loads((run / "report.json").read_text())
    assert data["groups"][0]["seeds"] == [7] and data["comparisons"] == []


def test_a_continued_run_is_reported_whole(tmp_path):
    """A run stopped at step 6 and continued to 12 in a new directory (ckpt_path=), continued
    again to 15: the last one's report draws the whole run, the curves of a run never stopped."""
    from llm_scratch.train.job import train

    common = [
        *FAST,
        "data.tokenizer=char",
        "data.context_length=32",
        "data.stride=null",
        "data.batch_size=64",
        "scheduler.name=constant",
        "trainer.val_check_interval=4",
        "trainer.limit_val_batches=2",
        "callbacks.text_sampler=null",
    ]

    def run(name: str, max_steps: int, ckpt: str | None = None) -> Path:
        extra = [f"ckpt_path={tmp_path / ckpt}"] if ckpt else []
        train(compose_config([*common, f"trainer.max_steps={max_steps}", *extra], tmp_path / name))
        return tmp_path / name

    whole = collect_jobs(run("whole", 15))[0][0]
    run("first", 6)
    run("second", 12, "first")
    (job,), _ = collect_jobs(run("third", 15, "second/checkpoints/last.ckpt"))
    assert job.continued_from == [(tmp_path / "first", 6), (tmp_path / "second", 12)]
    assert [step for step, _ in job.train_curve] == list(range(1, 16))
    assert job.train_curve == whole.train_curve
    assert [step for step, _ in job.val_curve] == [4, 8, 12]
    assert job.val_curve == whole.val_curve
    text, _ = report(tmp_path / "third")
    assert f"`{tmp_path / 'first'}` (to step 6) → `{tmp_path / 'second'}` (to step 12)" in text


def test_the_report_loads_no_lightning(tmp_path):
    sweep = make_sweep(tmp_path, [(["seed=1"], 3.0), (["seed=2"], 3.1)])
    code = (
        "import sys; from pathlib import Path\n"
        "from llm_scratch.report import collect_jobs, write_report\n"
        f"jobs, shared = collect_jobs({str(sweep)!r})\n"
        f"write_report(jobs, shared, Path({str(tmp_path / 'out')!r}))\n"
        "assert 'lightning' not in sys.modules, 'lightning was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


# ----------------------------------------------------------------------------- a real sweep


@pytest.mark.slow
def test_a_real_two_seed_sweep_is_pooled_into_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli(
        "training/run_experiment.py",
        "-m",
        *FAST,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "seed=1,2",
        f"hydra.sweep.dir={sweep}",
        env={"LLM_SCRATCH_LOG_DIR": str(tmp_path / "outputs")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text, data = report(sweep)
    summaries = [json.loads((sweep / j / "summary.json").read_text()) for j in ("0", "1")]
    final = [s["metrics"]["val/loss"] for s in summaries]
    assert final[0] != final[1], "the seeds trained alike: nothing to pool"
    (group,) = data["groups"]
    assert group["seeds"] == [1, 2] and group["n"] == 2
    val = group["metrics"]["val/loss"]
    mean, sd, ci = textbook_mean_ci(final)
    assert val["values"] == pytest.approx(final)
    assert val["mean"] == pytest.approx(mean) and val["ci95"] == pytest.approx(list(ci))
    best = group["metrics"]["val/loss_best"]["values"]
    assert all(b <= f for b, f in zip(best, final, strict=True))
    assert "the mean over its seeds at each step with a band from their minimum" in text
    for png in ("train_loss.png", "val_loss.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
