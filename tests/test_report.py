"""The sweep report: seed groups, their statistics and the comparisons between settings, checked
against textbook formulas computed here; report.json's shape; failed jobs and bad input; a run's
own report; one real two-seed sweep end to end."""

from __future__ import annotations

import csv
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
    config: dict | None = None,
    summary_extra: dict | None = None,
) -> Path:
    """A job directory as a sweep leaves it: .hydra/overrides.yaml (with the launcher's own
    hydra.* override), metrics.csv, summary.json when it finished (with ``summary_extra``'s
    entries, metrics merged), job_output.log and .hydra/config.yaml if given."""
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
        extra = dict(summary_extra or {})
        metrics.update(extra.pop("metrics", {}))
        summary = {"metrics": metrics, "num_params": 1000, "wall_time_s": 1.0, **extra}
        (job / "summary.json").write_text(json.dumps(summary))
    if output is not None:
        (job / "job_output.log").write_text(output)
    if config is not None:
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
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
    # both levels ran seeds 1, 2 and 3: the verdict is the seed-by-seed test's, Welch's beside
    assert val["test"] == "paired_by_seed"
    pd, pci, pp = textbook_paired(false_vals, true_vals)
    sentence = (
        f"pre_norm=False raises val/loss by {pd:.2f} compared with pre_norm=True "
        f"(95% CI {pci[0]:.2f} to {pci[1]:.2f}, p = {pp:.2g}, seed by seed, 3 seeds): "
        "larger than seed noise"
    )
    assert val["verdict"] == sentence and sentence in text
    assert val["other_test"] == (
        f"Welch's test (each job as independent): {diff:+.2f} (95% CI {ci[0]:+.2f} to "
        f"{ci[1]:+.2f}, p = {p:.2g})"
    )
    assert f"{sentence}. *Beside it, {val['other_test']}.*" in text
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
    # Welch's test counts the seeds' noise; seed by seed it cancels: each seed gains 0.02.
    # Both levels ran the same seeds: one verdict, the seed-by-seed test's, Welch's beside it
    assert warm["test"] == "paired_by_seed"
    assert warm["verdict"].endswith("larger than seed noise")
    assert "not distinguishable" not in warm["verdict"]
    assert warm["other_test"].startswith("Welch's test (each job as independent): +0.02")
    assert warm["ci95"][0] < 0 < warm["ci95"][1]  # Welch's own interval, as data
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
    # one verdict, from the test that fits the design (the same seeds: seed by seed)
    assert pre["test"] == "paired_by_seed"
    assert pre["verdict"].startswith("pre_norm=False vs pre_norm=True: val/loss differs by")
    assert "seed by seed, 3 seeds" in pre["verdict"] and "raises" not in pre["verdict"]
    assert pre["verdict"].endswith("not distinguishable from seed noise")
    assert pre["other_test"].startswith("Welch's test (each job as independent)")
    assert pre["distinguishable"] is False
    warm = by_factor["scheduler.warmup_fraction"]
    assert warm["paired_by_seed"]["seeds"] == [1, 2, 3] and warm["test"] == "paired_by_seed"


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
    assert "compared with the baseline `lr=1e-3`." in text


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
    """The job is in no group and named under "Could not read", with the fix; the others are
    reported."""
    content, words = DAMAGED_OVERRIDES[kind]
    sweep = make_sweep(tmp_path, [(["seed=1"], 3.0), (["seed=2"], 3.1)])
    overrides = sweep / "1" / ".hydra" / "overrides.yaml"
    overrides.write_text(content)
    jobs, _ = collect_jobs(sweep)
    assert [job.overrides_known for job in jobs] == [True, False]
    (note,) = jobs[1].unreadable
    assert note.path == "1/.hydra/overrides.yaml"
    assert "hydra.overrides.task" in note.effect and "in no group" in note.effect
    for word in words:
        assert word in note.problem
    text, data = report(sweep)
    assert data["unreadable"] == [
        {"path": note.path, "problem": note.problem, "effect": note.effect}
    ]
    assert "## ⚠ Could not read (1)" in text and "`1/.hydra/overrides.yaml`" in text
    assert [g["seeds"] for g in data["groups"]] == [[1]]


def test_bad_input_through_the_entry_point_is_one_line(tmp_path):
    sweep = make_sweep(tmp_path, [(["seed=1"], 3.0), (["seed=2"], 3.1)])
    overrides = sweep / "1" / ".hydra" / "overrides.yaml"
    overrides.write_text(DAMAGED_OVERRIDES["not_yaml"][0])
    out = run_cli("training/report.py", str(sweep))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (warning,) = out.stderr.strip().splitlines()
    assert warning.startswith("warning: 1 thing(s) could not be read, first 1/.hydra/overrides")
    # usage errors of argparse are the same one line
    for args in ([], ["--nope", str(sweep)], [str(sweep), "--out"]):
        one_error_line(run_cli("training/report.py", *args), "training/report.py --help")
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
    assert text.startswith("# Run report: run\n") and "1 job: the run in `run`" in text
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
    # paths from the report's directory, none of this machine
    assert "`../first` (to step 6) → `../second` (to step 12)" in text
    assert str(tmp_path) not in text


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


# ----------------------------------------------------------------------------- runs compared


def make_runs(root: Path) -> Path:
    """A directory of runs named by time, as `run_experiment.py` without -m leaves them: the
    defaults (lr 0.0006 in its config), one with a higher lr, one with more layers."""
    runs = root / "runs"
    config = {"seed": 1337, "optimizer": {"lr": 0.0006}, "model": {"n_layer": 3}}
    make_job(runs, "2026-12-06_10-00-00_000001", [], 3.00, 4.0, config=config)
    make_job(runs, "2026-12-06_10-05-00_000002", ["optimizer.lr=1e-3"], 3.09, 4.0, config=config)
    deeper = {**config, "model": {"n_layer": 6}}
    make_job(runs, "2026-12-06_10-10-00_000003", ["model.n_layer=6"], 1.20, 4.0, config=deeper)
    return runs


def test_runs_given_one_by_one_or_as_their_directory_are_compared_with_the_defaults(tmp_path):
    runs = make_runs(tmp_path)
    first, second, _ = sorted(runs.iterdir())
    out = run_cli("training/report.py", str(first), str(second))
    assert out.returncode == 0 and out.stderr == "", out.stderr[-3000:]
    assert f"wrote {runs / 'report.md'}" in out.stdout  # into the folder that holds them
    data = json.loads((runs / "report.json").read_text())
    assert [g["label"] for g in data["groups"]] == ["lr=0.0006 (default)", "lr=1e-3"]
    assert data["groups"][0]["defaults"] == ["optimizer.lr"]
    (val,) = [c for c in data["comparisons"] if c["metric"] == "val/loss"]
    assert (val["a"], val["b"], val["b_is_default"]) == (1e-3, 0.0006, True)
    assert val["diff"] == pytest.approx(0.09)
    text = (runs / "report.md").read_text()
    body = text.split("\n", 1)[1]  # (the title names the folders given)
    assert "(not set)" not in text and "2026-12-06" not in body.split("## Jobs")[0]
    samples = text.split("## Samples")[1]
    assert "| defaults |" in samples and "| lr=1e-3 |" in samples  # named by what they are

    # the directory of runs: the third run differs from the lr run in two ways; lr is
    # compared where n_layer is the same (its effect as before), the 6-layer run is named as
    # left out, never pooled into lr's baseline (which would make the difference -0.81)
    text, data = report(runs)
    by_factor = {c["factor"]: c for c in data["comparisons"] if c["metric"] == "val/loss"}
    lr = by_factor["optimizer.lr"]
    assert lr["diff"] == pytest.approx(0.09) and lr["context"] == {"model.n_layer": 3}
    assert lr["left_out"] == ["lr=0.0006 (default), n_layer=6"]
    assert "with n_layer=3 (default)" in lr["verdict"]
    n_layer = by_factor["model.n_layer"]
    assert n_layer["diff"] == pytest.approx(-1.8) and n_layer["left_out"] == [
        "lr=1e-3, n_layer=3 (default)"
    ]
    assert "Not compared (no partner that differs in `lr` alone)" in text


def test_runs_that_differ_in_every_way_are_not_compared(tmp_path):
    runs = tmp_path / "runs"
    make_job(runs, "a", ["optimizer.lr=1e-3", "model.n_layer=6"], 3.0, 4.0)
    make_job(runs, "b", ["optimizer.lr=1e-4", "model.n_layer=4"], 3.5, 4.0)
    _, data = report(runs)
    for c in (c for c in data["comparisons"] if c["metric"] == "val/loss"):
        assert c["diff"] is None and "differ in more than one way" in c["missing"], c


def test_the_report_opens_with_a_summary_of_each_factor_on_the_main_metric(tmp_path):
    bpb = {("True", 1): 2.0, ("True", 2): 2.1, ("False", 1): 2.6, ("False", 2): 2.8}
    sweep = tmp_path / "sweep"
    for n, ((pre, seed), value) in enumerate(bpb.items()):
        make_job(
            sweep,
            str(n),
            [f"model.pre_norm={pre}", f"seed={seed}"],
            value * 0.7,
            summary_extra={"metrics": {"val/bpb": value}},
        )
    text, data = report(sweep)
    summary = text.split("## Summary")[1].split("\n## ")[0]
    assert text.index("## Summary") < text.index("## Groups") < text.index("## Comparisons")
    assert "On val/bpb (bits per byte" in summary
    (item,) = data["summary"]
    assert data["main_metric"] == "val/bpb" and item["metric"] == "val/bpb"
    assert item["diff"] == pytest.approx(0.65) and item["test"] == "paired_by_seed"
    assert f"- **pre_norm**: {item['verdict']}." in summary
    assert item["verdict"].startswith("pre_norm=False raises val/bpb by 0.65")
    # val/bpb is compared like every metric, and in the table
    assert any(c["metric"] == "val/bpb" for c in data["comparisons"])
    assert "### val/bpb" in text and "| val bpb |" in text


def test_a_short_run_draws_bars_not_a_band_of_one_point(tmp_path):
    import matplotlib.pyplot as plt

    from llm_scratch.report.write import _plot_group

    sweep = tmp_path / "sweep"
    for seed, value in ((1, 3.0), (2, 3.4)):
        make_job(sweep, str(seed), [f"seed={seed}"], value, val_curve=[value])
    (group,) = group_jobs(collect_jobs(sweep)[0])
    fig, ax = plt.subplots()
    assert _plot_group(ax, group, "val", smooth=False) == "bars"
    (bars,) = ax.containers  # one error bar, from the lowest seed to the highest
    assert bars.lines[0].get_ydata().tolist() == pytest.approx([3.2])
    plt.close(fig)
    fig, ax = plt.subplots()
    for seed, value in ((1, 3.0), (2, 3.4)):
        (sweep / str(seed) / "metrics.csv").write_text(
            f"epoch,step,train/loss,val/loss\n0,1,,{value + 1}\n0,2,,{value}\n"
        )
    (group,) = group_jobs(collect_jobs(sweep)[0])
    assert _plot_group(ax, group, "val", smooth=False) == "band"
    plt.close(fig)


def test_the_report_console_is_quiet_with_labels_too_long_for_the_plot(tmp_path):
    long = "x" * 400
    sweep = make_sweep(
        tmp_path,
        [([f"+tag={long}{n}", f"seed={s}"], 3.0 + n + s / 10) for n in range(3) for s in (1, 2)],
    )
    out = run_cli("training/report.py", str(sweep))
    assert out.returncode == 0 and out.stderr == "", out.stderr[-3000:]
    assert (sweep / "train_loss.png").read_bytes()[:4] == b"\x89PNG"
    # nor with curves that diverged (matplotlib warns of overflow placing its ticks)
    for n, curve in enumerate(([math.inf, 3.0], [math.nan, 1e308], [3.5, 3.0])):
        make_job(tmp_path / "diverged", str(n), [f"seed={n}"], 3.0, val_curve=curve)
    out = run_cli("training/report.py", str(tmp_path / "diverged"))
    assert out.returncode == 0 and out.stderr == "", out.stderr[-3000:]


def test_the_report_names_the_dataset_and_writes_no_absolute_path(tmp_path):
    dataset = {"path": str(tmp_path / "data" / "code-shards"), "fingerprint": "9f3c2a"}
    sweep = tmp_path / "sweep"
    for n, lr in enumerate(("1e-3", "1e-4")):
        make_job(
            sweep,
            str(n),
            [
                f"paths.log_dir={tmp_path / 'outputs'}",
                f"data.path={dataset['path']}",
                f"optimizer.lr={lr}",
            ],
            3.0 + n,
            summary_extra={"dataset": dataset},
        )
    make_job(
        sweep,
        "2",
        ["optimizer.lr=1e-5"],
        val_curve=[5.0],
        finished=False,
        output=f"error: cannot write {sweep / '2' / 'checkpoints'}\n",
    )
    text, data = report(sweep)
    assert "Dataset: `code-shards` (fingerprint `9f3c2a`), jobs 0, 1." in text
    assert data["datasets"][0] == {
        "name": "code-shards",
        "fingerprint": "9f3c2a",
        "jobs": ["0", "1"],
    }
    both = text + json.dumps(data)
    assert str(tmp_path) not in both and "/tmp" not in both
    assert "log_dir=<sweep dir>/../outputs" in text
    assert data["groups"][0]["overrides"]["paths.log_dir"] == "<sweep dir>/../outputs"
    assert "error: cannot write <sweep dir>/2/checkpoints" in text
    # written elsewhere (--out), the jobs keep their names from the sweep's directory
    assert REPORT_CLI.main([str(sweep), "--out", str(tmp_path / "elsewhere" / "norm")]) == 0
    text = (tmp_path / "elsewhere" / "norm" / "report.md").read_text()
    assert str(tmp_path) not in text and "| 0 | " in text and "| 2 | " in text


# ----------------------------------------------------------------------------- what cannot be read

NESTED = "[" * 5_000  # deeper than Python's recursion limit
SUMMARY = {"metrics": {"val/loss": 3.0}, "num_params": 1000}
# (file of job 1, what it holds, whether the report must name it); bytes are written as they
# are, None makes a folder in its place, "missing" deletes it
MALFORMED = {
    "summary null": ("summary.json", "null", True),
    "summary string": ("summary.json", '"done"', True),
    "summary list": ("summary.json", "[1, 2]", True),
    "summary nested": ("summary.json", NESTED, True),
    "summary truncated": ("summary.json", '{"metrics": {"val/lo', True),
    "summary empty": ("summary.json", "", True),
    "summary not utf-8": ("summary.json", b'{"metrics": {"val/loss": 3.0}, "x": "\xff"}', True),
    "summary folder": ("summary.json", None, True),
    "metrics null": ("summary.json", {"metrics": None}, True),
    "metrics string": ("summary.json", {"metrics": "3.0"}, True),
    "metrics list": ("summary.json", {"metrics": [3.0]}, True),
    "metric string": ("summary.json", {"metrics": {"val/loss": "3.0"}}, True),
    "metric nested": ("summary.json", {"metrics": {"val/loss": {"mean": 3.0}}}, True),
    "metric bool": ("summary.json", {"metrics": {"val/loss": True}}, True),
    "num_params string": ("summary.json", {**SUMMARY, "num_params": "many"}, True),
    "num_params list": ("summary.json", {**SUMMARY, "num_params": [1]}, True),
    "tokens_per_sec nested": ("summary.json", {**SUMMARY, "tokens_per_sec": {"a": 1}}, True),
    "continued_from string": ("summary.json", {**SUMMARY, "continued_from": "0"}, True),
    "continued_from bad step": (
        "summary.json",
        {**SUMMARY, "continued_from": {"checkpoint": "x.ckpt", "global_step": "3"}},
        True,
    ),
    "continued_from gone": (
        "summary.json",
        {**SUMMARY, "continued_from": {"checkpoint": "/nowhere/last.ckpt", "global_step": 3}},
        True,
    ),
    "dataset list": ("summary.json", {**SUMMARY, "dataset": ["a"]}, True),
    "metrics.csv folder": ("metrics.csv", None, True),
    "metrics.csv missing": ("metrics.csv", "missing", True),
    "metrics.csv not utf-8": ("metrics.csv", b"epoch,step,train/loss,val/loss\n0,1,\xff,\n", True),
    "metrics.csv nul": ("metrics.csv", b"epoch,step,train/loss\x00\n0,1,3.0\n", False),
    "metrics.csv no step": ("metrics.csv", "a,b\n1,2\n", True),
    "samples folder": ("samples.jsonl", None, True),
    "samples not utf-8": ("samples.jsonl", b'{"text": "\xfe"}\n', True),
    "samples null lines": ("samples.jsonl", "null\n[1]\n" + NESTED + "\n", True),
    "samples text not string": ("samples.jsonl", '{"text": {"a": 1}}\n', True),
    "overrides folder": (".hydra/overrides.yaml", None, True),
    "overrides missing": (".hydra/overrides.yaml", "missing", True),
    "overrides not utf-8": (".hydra/overrides.yaml", b"- seed=\xff\n", True),
    "overrides string": (".hydra/overrides.yaml", "seed=2\n", True),
    "overrides nested": (".hydra/overrides.yaml", NESTED, True),
    "overrides null": (".hydra/overrides.yaml", "null\n", False),
    "config list": (".hydra/config.yaml", "- 1\n", True),
    "config folder": (".hydra/config.yaml", None, True),
    "config not utf-8": (".hydra/config.yaml", b"seed: \xff\n", True),
    "config nested": (".hydra/config.yaml", NESTED, True),
    "hydra.yaml string": (".hydra/hydra.yaml", "hydra\n", True),
    "hydra.yaml odd choices": (".hydra/hydra.yaml", "hydra: {runtime: {choices: [1]}}\n", False),
    "job_output.log folder": ("job_output.log", None, False),
}


def _put(path: Path, content) -> None:
    if path.is_dir():
        path.rmdir()
    elif path.exists():
        path.unlink()
    if content is None:
        path.mkdir(parents=True)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        path.write_text(json.dumps(content))
    elif content != "missing":
        path.write_text(content)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_every_malformed_file_is_named_not_a_traceback(tmp_path, case):
    """Whatever a run's directory holds, the report is written (exit 0) and names each file
    it could not use, with the problem and what it did without it."""
    file, content, named = MALFORMED[case]
    sweep = make_sweep(
        tmp_path,
        [
            ([f"model.pre_norm={p}", f"seed={s}"], 3.0 + s / 10)
            for p in (True, False)
            for s in (1, 2)
        ],
    )
    _put(sweep / "1" / file, content)
    text, data = report(sweep)
    paths = [entry["path"] for entry in data["unreadable"]]
    if named:
        assert f"1/{file}" in paths, data["unreadable"]
        assert "## ⚠ Could not read" in text and f"`1/{file}`" in text
    else:
        assert f"1/{file}" not in paths, data["unreadable"]
    for entry in data["unreadable"]:
        assert entry["problem"] and entry["effect"] and not entry["path"].startswith("/")


SWEEP_MANIFESTS = {
    "a deleted job": (
        {"jobs": [{"num": n, "dir": str(n), "overrides": []} for n in range(3)]},
        "lists job 2, whose folder is missing",
    ),
    "null": ("null", 'no list of "jobs"'),
    "a list": ("[1]", 'no list of "jobs"'),
    "odd entries": ({"jobs": [None, {"dir": "../elsewhere"}, {"num": 0}]}, "a job entry is null"),
    "not utf-8": (b"\xff\xfe", "not UTF-8"),
    "a folder": (None, "a folder, not a file"),
}


@pytest.mark.parametrize("case", list(SWEEP_MANIFESTS))
def test_a_job_listed_in_sweep_json_but_gone_is_named(tmp_path, case):
    content, problem = SWEEP_MANIFESTS[case]
    sweep = make_sweep(tmp_path, [(["seed=1"], 3.0), (["seed=2"], 3.1)])
    _put(sweep / "sweep.json", content)
    text, data = report(sweep)
    entry = data["unreadable"][0]
    assert entry["path"] == "sweep.json" and problem in entry["problem"], entry
    assert {e["path"] for e in data["unreadable"]} == {"sweep.json"}
    assert "## ⚠ Could not read" in text
    assert [g["seeds"] for g in data["groups"]] == [[1, 2]]


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


def test_best_bits_per_byte_is_the_lowest_validation_of_each_job(tmp_path):
    """val/bpb_best: each finished job's lowest val/bpb (not its last), pooled over seeds and
    compared like val/loss; a job that did not finish has none."""
    sweep = tmp_path / "sweep"
    curves = {  # (pre_norm, seed): val/bpb at steps 0, 1, 2
        (True, 1): [3.0, 2.0, 2.2],
        (True, 2): [3.1, 2.1, 2.4],
        (False, 1): [3.3, 3.0, 2.9],
        (False, 2): [3.2, 3.1, 3.0],
    }
    for number, ((pre, seed), bpb) in enumerate(curves.items()):
        job = make_job(sweep, str(number), [f"model.pre_norm={pre}", f"seed={seed}"], 1.0)
        rows = ["epoch,step,train/loss,val/loss,val/bpb"]
        rows += [f"0,{step},,1.0,{value}" for step, value in enumerate(bpb)]
        (job / "metrics.csv").write_text("\n".join(rows) + "\n")
    make_job(sweep, "4", ["model.pre_norm=True", "seed=3"], 1.0, val_curve=[0.5], finished=False)
    _, data = report(sweep)
    best = {g["label"]: g["metrics"]["val/bpb_best"]["values"] for g in data["groups"]}
    assert best == {"pre_norm=True": [2.0, 2.1], "pre_norm=False": [2.9, 3.0]}
    (compared,) = [c for c in data["comparisons"] if c["metric"] == "val/bpb_best"]
    assert compared["a"] is False and compared["b"] is True
    assert compared["diff"] == pytest.approx(0.9)


def test_task_accuracy_from_evaluation_during_training_is_compared_like_any_metric(tmp_path):
    """Runs that scored a task while training (callbacks=eval) carry eval/<task>/acc in
    summary.json: the report describes and compares it with the same statistics."""
    sweep = tmp_path / "sweep"
    accuracies = {"True": [0.50, 0.55, 0.52], "False": [0.30, 0.28, 0.33]}
    for number, (level, seed) in enumerate((lv, s) for lv in accuracies for s in (1, 2, 3)):
        acc = accuracies[level][seed - 1]
        make_job(
            sweep,
            str(number),
            ["model=gpt-nano", f"model.pre_norm={level}", f"seed={seed}"],
            3.0,
            4.0,
            summary_extra={"metrics": {"eval/cloze/acc": acc, "eval/cloze/acc_norm": acc + 0.01}},
        )
    text, data = report(sweep)
    by_label = {g["label"]: g for g in data["groups"]}
    for level, values in accuracies.items():
        group = next(g for label, g in by_label.items() if f"pre_norm={level}" in label)
        assert group["metrics"]["eval/cloze/acc"]["values"] == values
        assert group["metrics"]["eval/cloze/acc"]["mean"] == pytest.approx(np.mean(values))
    acc = next(c for c in data["comparisons"] if c["metric"] == "eval/cloze/acc")
    diff, interval, _ = textbook_paired(accuracies["False"], accuracies["True"])
    assert acc["test"] == "paired_by_seed"  # the same seeds on both sides
    pair = acc["paired_by_seed"]
    assert pair["diff"] == pytest.approx(diff) and pair["ci95"] == pytest.approx(list(interval))
    assert "accuracy on the task cloze" in text


# ----------------------------------------------------------------------------- training probes


def _probe_rows(sweep: Path, name: str, rows: list[str]) -> None:
    """Append columns of probes to a hand-made job's metrics.csv (header, then rows)."""
    (sweep / name / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_probe_columns_are_pooled_per_group_and_malformed_ones_leave_no_section(tmp_path):
    from llm_scratch.report.probes import BLOCK_PROBES as REPORT_PROBES
    from llm_scratch.train.probes import BLOCK_PROBES

    assert REPORT_PROBES == BLOCK_PROBES  # the report's copy (it loads no torch) is current
    sweep = make_sweep(tmp_path, [(["seed=1"], 3.0), (["seed=2"], 3.2)])
    head = "epoch,step,train/loss,val/loss,probes/grad_norm/block0,probes/grad_norm/block1"
    head += ",probes/grad_norm,probes/clipped"
    for job, scale in (("0", 1.0), ("1", 3.0)):
        _probe_rows(
            sweep,
            job,
            [
                head,
                "0,0,4.0,,,,,",
                f"0,1,,,{scale},{2 * scale},{3 * scale},{scale - 1}",
                "0,1,,3.0,,,,",
                f"0,2,,,{scale * 10},{scale * 20},{scale * 30},0",
            ],
        )
    text, data = report(sweep)
    assert "## Training-health probes" in text
    (group,) = data["probes"]["groups"]
    norms = group["probes"]["grad_norm"]
    assert norms["block1"] == {
        "steps": [1, 2],
        "mean": [4.0, 40.0],
        "min": [2.0, 20.0],
        "max": [6.0, 60.0],
        "n": 2,
    }
    assert norms["model"]["mean"] == [6.0, 60.0]
    assert group["probes"]["clipped"]["model"]["mean"] == [1.0, 0.0]
    for png in ("probe_grad_norm_heatmap.png", "probe_grad_norm.png", "probe_clipped.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # cells that are not numbers, columns that are not a probe's: no probe section, no error
    for job in ("0", "1"):
        _probe_rows(
            sweep,
            job,
            [
                "epoch,step,train/loss,val/loss,probes/grad_norm/blockX,probes/clipped",
                "0,1,4,,a,nan",
            ],
        )
    text, data = report(sweep)
    assert "probes" not in text.lower() and data["probes"] is None
    assert not data["unreadable"]


@pytest.mark.slow
def test_a_real_sweep_with_probes_reports_their_mean_over_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli(
        "training/run_experiment.py",
        "-m",
        *FAST,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "+probes@callbacks.training_probes=training",
        "callbacks.training_probes.every_n_steps=2",
        "seed=1,2",
        f"hydra.sweep.dir={sweep}",
        env={"LLM_SCRATCH_LOG_DIR": str(tmp_path / "outputs")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text, data = report(sweep)
    # the values by hand: every probe cell of both jobs' metrics.csv, averaged over the seeds
    by_hand: dict[tuple[str, int], list[float]] = {}
    for job in ("0", "1"):
        rows = list(csv.DictReader((sweep / job / "metrics.csv").open()))
        for row in rows:
            for column, cell in row.items():
                if column.startswith("probes/") and cell:
                    by_hand.setdefault((column, int(row["step"])), []).append(float(cell))
    assert {step for _, step in by_hand} == {2, 4}
    (group,) = data["probes"]["groups"]
    checked = 0
    for (column, step), values in by_hand.items():
        assert len(values) == 2, (column, step)
        parts = column.split("/")
        name, layer = parts[1], parts[2] if len(parts) == 3 else "model"
        series = group["probes"][name][layer]
        i = series["steps"].index(step)
        assert series["mean"][i] == pytest.approx(sum(values) / 2, rel=1e-12)
        assert (series["min"][i], series["max"][i]) == (min(values), max(values))
        checked += 1
    # gpt-nano's 3 blocks x 4 probes, the global norm and clipped, at 2 steps
    assert checked == (3 * 4 + 2) * 2
    assert "## Training-health probes" in text
    for name in ("grad_norm", "update_ratio", "resid_rms", "attn_entropy"):
        for png in (f"probe_{name}_heatmap.png", f"probe_{name}.png"):
            assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({png})" in text
