"""The benchmarks run end to end at tiny sizes and produce sane figures (no speed is asserted:
speed goals live in the benchmarks' output, not in timed tests)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from llm_scratch.bench import attention, data, generation, overhead, profile, throughput
from llm_scratch.bench.__main__ import main
from llm_scratch.bench.common import measure_matmul_peak, peak_flops
from llm_scratch.train.job import train
from llm_scratch.utils.flops import known_peak_flops
from tests.helpers import FAST, REPO, column, compose_config, read_metrics

TINY = [
    "model=gpt-nano",
    "data=shakespeare_char",
    "data.context_length=16",
    "data.batch_size=2",
    "trainer.accelerator=cpu",
]


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


# Four 24 MiB buffers freed and allocated again, as a training step's activations are; the last
# steps' minor page faults per step, in a fresh process (the thresholds are process-wide). The
# control sets glibc's documented default thresholds (128 KiB) explicitly: left to adjust
# themselves, whether they return a freed block depends on what else the heap holds, so a
# control at the self-adjusting defaults faults in some processes and not in others.
REALLOCATE = """
import ctypes, resource, sys, torch
from llm_scratch.utils import allocator
if sys.argv[1] == "retain":
    applied = allocator.retain_freed_memory()
else:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    applied = bool(mallopt(allocator.M_MMAP_THRESHOLD, 128 << 10))
    applied = applied and bool(mallopt(allocator.M_TRIM_THRESHOLD, 128 << 10))
def step():
    buffers = [torch.ones(6 << 20) for _ in range(4)]
    del buffers
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def faults_per_reallocation(mode: str) -> tuple[bool, float]:
    out = subprocess.run(
        [sys.executable, "-c", REALLOCATE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", float(out[1])


def test_freed_activations_are_reused_without_page_faults():
    """At glibc's default thresholds a step's freed buffers go back to the OS (thousands of
    faults to get them again); with the raised thresholds training sets, the memory is reused."""
    applied, retained = faults_per_reallocation("retain")
    if not applied:
        pytest.skip("not glibc: the allocator thresholds are glibc's")
    _, default = faults_per_reallocation("default")
    assert default > 10000  # the pattern does fault at glibc's default thresholds (24,576 pages)
    assert retained < 50


def test_matmul_peak_is_a_plausible_flop_rate():
    assert 1e8 < measure_matmul_peak("cpu", n=256, repeats=2) < 1e15


def test_peak_flops_is_the_data_sheet_figure_training_uses(monkeypatch):
    """The bench and the ThroughputLogger read a GPU's peak from the same table, in the same
    dtype; a CPU has no data-sheet figure (the bench measures one, training logs no MFU)."""
    import lightning.fabric.utilities.throughput as lightning_throughput

    asked = []

    def fake_table(device, dtype):  # no GPU here: stands in for Lightning's table
        asked.append(dtype)
        return 123e12

    monkeypatch.setattr(lightning_throughput, "get_available_flops", fake_table)
    cuda = torch.device("cuda")
    assert peak_flops(cuda, "bf16-mixed") == (123e12, "data sheet")
    assert known_peak_flops(cuda, "32-true") == 123e12
    assert asked == [torch.bfloat16, torch.float32]
    assert known_peak_flops("cpu", "bf16-mixed") is None


def test_throughput_through_lightning(shared_data_dir):
    result = throughput.run(TINY, variants=["", "trainer.precision=bf16-mixed"], steps=3, warmup=1)
    fp32, bf16 = result["rows"]
    assert fp32["precision"] == "32-true" and bf16["precision"] == "bf16-mixed"
    for row in (fp32, bf16):
        assert positive(row["tokens_per_sec"]) and positive(row["step_ms_median"])
        assert 0 < row["mfu"] < 1 and row["params"] > 0
    assert fp32["speedup"] == 1.0
    assert result["machine"]["torch"] == torch.__version__


def test_probes_option_times_the_config_without_and_with_the_probes(tmp_path, capsys):
    out = tmp_path / "probes.json"
    args = ["throughput", *TINY, "--probes", "--steps", "2", "--warmup", "1", "--repeats", "2"]
    assert main([*args, "--out", str(out)]) == 0
    off, on = json.loads(out.read_text())["rows"]
    assert off["overrides"] == TINY
    assert on["overrides"] == [*TINY, "+probes@callbacks.training_probes=training"]
    assert off["pair_ratios"] == [1.0, 1.0] and len(on["pair_ratios"]) == 2
    assert off["cpu_pair_ratios"] == [1.0, 1.0] and positive(on["cpu_pair_ratio_median"])
    assert on["pair_ratio_median"] == pytest.approx(sum(on["pair_ratios"]) / 2)
    assert all(r > 0 for r in on["pair_ratios"])
    capsys.readouterr()
    assert main([*args, "--variants", "", "compile=true", "--no-save"]) == 2
    assert capsys.readouterr().err == (
        "error: --probes sets the variants itself: give --probes or --variants\n"
    )


def test_profile_records_exactly_the_steady_state_steps(shared_data_dir):
    result = profile.run(TINY, steps=3, warmup=2, top=10_000, show=False)
    rows = {r["operator"]: r for r in result["rows"]}
    # one optimizer step per profiled step, each one fused AdamW kernel per parameter group
    assert rows["Optimizer.step#AdamW.step"]["calls_per_step"] == 1.0
    assert rows["aten::_fused_adamw_"]["calls_per_step"] == 2.0
    assert rows["aten::mm"]["self_ms_per_step"] > 0
    shares = [r["share"] for r in result["rows"]]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1.0)


def test_overhead_compares_the_same_work(shared_data_dir):
    result = overhead.run(TINY, steps=3, warmup=1, repeats=1, show=False)
    assert positive(result["bare_tokens_per_sec"]) and positive(result["lightning_tokens_per_sec"])
    assert result["ratio"] == pytest.approx(
        result["lightning_tokens_per_sec"] / result["bare_tokens_per_sec"]
    )


def test_attention_loop_and_fused_agree_and_are_timed():
    result = attention.run(
        contexts=(8, 16), heads=(2,), batch=1, n_embd=16, repeats=1, memory=False
    )
    assert [r["context"] for r in result["rows"]] == [8, 16]
    for row in result["rows"]:
        assert row["max_abs_diff"] < 1e-5 and row["grad_max_abs_diff"] < 1e-5
        assert positive(row["loop_ms"]) and positive(row["fused_ms"])
        assert row["speedup"] == pytest.approx(row["loop_ms"] / row["fused_ms"])
        assert positive(row["projections_ms"])
        loop_beyond = row["loop_ms"] - row["projections_ms"]
        fused_beyond = row["fused_ms"] - row["projections_ms"]
        if fused_beyond > 0:
            assert row["speedup_beyond_projections"] == pytest.approx(loop_beyond / fused_beyond)
        else:  # timing noise at these tiny sizes: no ratio rather than a meaningless one
            assert math.isnan(row["speedup_beyond_projections"])


def test_attention_peak_memory_in_a_fresh_process():
    row = attention.run(contexts=(64,), heads=(2,), batch=2, n_embd=32, repeats=1)["rows"][0]
    assert row["loop_peak_mib"] >= 0 and row["fused_peak_mib"] >= 0


def test_generation_cached_and_uncached_give_the_same_tokens():
    result = generation.run(
        model="gpt-nano", vocab_size=50, new_tokens=12, prompt_len=4, batches=(1, 2),
        past_context=8, repeats=1,
    )  # fmt: skip
    assert [(r["regime"], r["batch"]) for r in result["rows"]] == [
        ("within context", 1),
        ("within context", 2),
        ("past context", 1),
        ("past context", 2),
    ]
    assert result["rows"][0]["context_length"] == 16
    for row in result["rows"]:
        assert row["same_tokens"]
        assert positive(row["cached_tokens_per_sec"]) and positive(row["uncached_tokens_per_sec"])


def test_generation_at_a_given_context_against_hugging_faces_generate():
    pytest.importorskip("transformers")
    result = generation.run(
        model="gpt-nano", vocab_size=50, new_tokens=12, prompt_len=4, batches=(1,),
        past_context=8, repeats=1, context=40, hf=True,
    )  # fmt: skip
    within, past = result["rows"]
    assert within["context_length"] == 40 and past["context_length"] == 8
    # the same weights, greedy: Hugging Face's generate picks the same tokens
    assert within["same_tokens"] and within["same_tokens_as_hf"]
    assert positive(within["hf_tokens_per_sec"])
    assert within["speedup_vs_hf"] == pytest.approx(
        within["cached_tokens_per_sec"] / within["hf_tokens_per_sec"]
    )
    assert "hf_tokens_per_sec" not in past  # the peer runs within the context only
    with pytest.raises(ValueError, match="context=10 is shorter than prompt \\+ new tokens = 16"):
        generation.run(model="gpt-nano", vocab_size=50, new_tokens=12, prompt_len=4, context=10)


def test_data_build_at_both_strides(shared_data_dir):
    result = data.run(scales=(0.02,), tokenizer="char", context=32, batch=4, batches=5)
    one, ctx = result["rows"]
    assert one["stride"] == 1 and ctx["stride"] == 32 and one["tokens"] == ctx["tokens"]
    assert one["train_windows"] > 30 * ctx["train_windows"]
    for row in (one, ctx):
        assert positive(row["first_build_s"]) and row["peak_mib"] >= 0
        assert positive(row["batches_per_sec"])


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "attn.json"
    args = ["attention", "--contexts", "8", "--heads", "2", "--batch", "1", "--n-embd", "8"]
    assert main([*args, "--repeats", "1", "--no-memory", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "attention" and len(result["rows"]) == 1
    assert "Attention forward + backward" in capsys.readouterr().out


def test_cli_refuses_a_bad_option_in_one_line(tmp_path, capsys):
    out = tmp_path / "gen.json"
    assert main(["generation", "--context", "20", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: context=20 is shorter than prompt + new tokens = 516: the within-context "
        "regime needs at least that (the past-context one is --past-context)\n"
    )
    assert not out.exists()


def test_training_metrics_stay_logged_at_every_logging_step(tmp_path, shared_data_dir):
    # train/lr is logged only on the steps the loggers write; those rows must all have it.
    run = tmp_path / "run"
    cfg = compose_config(
        [
            *FAST,
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=3",
            "trainer.limit_val_batches=1",
        ],
        run,
    )
    train(cfg)
    rows = read_metrics(run)
    loss_rows = [r for r in rows if r.get("train/loss")]
    assert [int(r["step"]) for r in loss_rows] == [3, 6, 9, 12, 15, 18]
    assert all(r.get("train/lr") for r in loss_rows)
    assert len(column(rows, "train/epoch_loss")) == 2
    assert all(0 < v < 20 for v in column(rows, "train/epoch_loss"))


@pytest.mark.slow
def test_compile_trains_and_keeps_plain_state_dict_keys(tmp_path, shared_data_dir):
    result = throughput.run([*TINY, "compile=true"], steps=2, warmup=2, show=False)
    assert result["rows"][0]["compile"] and positive(result["rows"][0]["tokens_per_sec"])
    from llm_scratch.model import GPTConfig
    from llm_scratch.train.module import GPTLightningModule

    module = GPTLightningModule.from_config(
        GPTConfig.from_name("gpt-nano", vocab_size=40, context_length=16), compile=True
    )
    x = torch.randint(0, 40, (2, 8))
    logits, loss = module(x, x)
    loss.backward()
    assert not any("_orig_mod" in k for k in module.state_dict())
    out = module.model.generate(x[:1, :4], 4, temperature=0.0)
    assert out.shape == (1, 8)


NANOGPT = REPO.parent / "shared" / "peers" / "nanogpt"


@pytest.mark.skipif(not (NANOGPT / "model.py").is_file(), reason="nanoGPT's files are not here")
def test_the_step_against_nanogpt_computes_nanogpts_losses(tmp_path):
    """benchmarks/vs_nanogpt_step.py times the same math: from nanoGPT's weights, our model and
    optimizer give nanoGPT's losses step for step."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import vs_nanogpt_step
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = tmp_path / "vs.json"
    args = ["--peer", str(NANOGPT), "--pairs", "2", "--steps", "1", "--warmup", "1"]
    assert vs_nanogpt_step.main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    # GPT-2's tanh GELU instead of the erf one already differs by 1e-5 here
    assert result["same_weights_max_loss_diff"] < 1e-6
    assert len(result["ratio_runs"]) == 2 and all(positive(r) for r in result["ratio_runs"])


def test_training_seconds_are_the_tokens_over_the_median_logged_rate(tmp_path):
    from llm_scratch.bench.sweep import training_seconds

    (tmp_path / "metrics.csv").write_text(
        "step,train/tokens_per_sec,train/tokens_seen,val/loss\n"
        "5,100,500,\n5,,,3.0\n10,300,1000,\n15,200,1500,\n"
    )
    assert training_seconds(tmp_path) == 1500 / 200
    (tmp_path / "metrics.csv").write_text("step,val/loss\n5,3.0\n")
    assert training_seconds(tmp_path) is None  # too short to log a rate


@pytest.mark.slow
def test_sweep_phases_add_up_to_each_jobs_wall_time(tmp_path, shared_data_dir):
    from llm_scratch.bench import sweep
    from tests.helpers import CHAR_VERDICT

    tiny = [o for o in CHAR_VERDICT if o != "model=gpt-nano"]
    overrides = [*tiny, "trainer.val_check_interval=2"]
    # --workdir: made when it does not exist yet
    result = sweep.run(
        jobs=2, steps=4, overrides=overrides, workdir=tmp_path / "a" / "b", show=False
    )
    (nano,) = result["sweeps"]
    assert str(tmp_path) not in nano["command"] and "hydra.sweep.dir=<workdir>/" in nano["command"]
    # --before: a job of the same sweep in another checkout (here this one), summed up the same
    # way as today's from what any version writes
    before = sweep.before_sweep("nano", [*sweep.NANO, *overrides], 1, REPO, tmp_path)
    after = nano["coarse"]
    assert (before["jobs"], after["jobs"]) == (1, 2)
    assert before["kept_bytes_max"] == after["kept_bytes_max"]  # the same code keeps the same
    for summed in (before, after):
        assert 0 < summed["training_s"] < summed["wall"]
    assert math.isclose(after["wall"], nano["wall"])
    quick = {k: v for k, v in sweep.STARTUP.items() if k != "2-step gpt-nano run"}
    startup = sweep.startup({"before": REPO, "after": REPO}, 1, tmp_path, quick)
    for side in ("before", "after"):
        assert set(startup[side]) == set(quick) and startup[side]["import torch"]["x_torch"] == 1
        assert all(t["median"] > 0 for t in startup[side].values())
    assert len(nano["jobs"]) == 2
    for job in nano["jobs"]:
        phases = job["phases"]
        assert set(phases) == set(sweep.PHASES) and job["steps"] == 4
        # each phase lies between two timestamps (the process start is read to 1/100 s)
        assert all(v > -0.02 for v in phases.values()), phases
        assert math.isclose(sum(phases.values()), job["wall"], rel_tol=0.1)
        # two validations, each sampled and followed by a best checkpoint where val/loss fell
        # (weights only); one full last.ckpt, where training ends (not at each validation)
        assert phases["steps"] > 0 and phases["sampling"] > 0 and phases["checkpoints"] > 0
        sizes = sorted(w["bytes"] for w in job["checkpoint_writes"])
        assert len(sizes) >= 2 and sizes[-1] > 2 * sizes[0] and sizes.count(sizes[-1]) == 1
        assert job["kept_bytes"] >= sizes[-1]
    # the jobs and the launcher's time around them make up the sweep's wall time
    jobs_and_launcher = sum(j["wall"] for j in nano["jobs"]) + nano["launcher"]
    assert math.isclose(jobs_and_launcher, nano["wall"], rel_tol=0.1)
    assert nano["jobs"][0]["end"] <= nano["jobs"][1]["start"] + 0.02
