"""Every user-set value, tried with bad values of every kind, gives a valid config or one line.

The config half enumerates every leaf key of the composed config (the default, experiment=
verdict_cpu and data=instruct) and sets each to a negative number, zero, NaN, infinity, a huge
float, an integer beyond 64 bits, a large one within, a string, an empty string, a list, or
deletes it (``~key``), applied as Hydra applies a command-line override
(:func:`llm_scratch.compat.apply_overrides`). Each case must be refused by Hydra (which the
entry point prints as one line), refused by :func:`validate_config` with one line naming the key
(before anything is written: the validation claims nothing), or be valid: then everything the
run builds before training (data, model config, loggers, callbacks, Trainer) builds, or refuses
in one line at the boundary. A few subprocesses prove the exit status, the single line and that
no directory is left, one per kind of refusal. The sample half does the same for every option
of ``training/sample.py``.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llm_scratch import sample
from llm_scratch.compat import apply_overrides
from llm_scratch.errors import UserError, one_line
from llm_scratch.train.boundary import configured
from llm_scratch.train.validate import LOGGED_METRICS, METRIC_FAMILIES, validate_config
from tests.helpers import CHAR_VERDICT, REPO, char_checkpoint, compose_config, read_metrics

# value kinds: what a hostile user types after key=
BAD_VALUES = {
    "negative": "-1",
    "zero": "0",
    "nan": "nan",
    "inf": "inf",
    "huge-float": "1e300",
    "beyond-64-bits": str(2**70),
    "large-int": str(2**62),
    "string": "abc",
    "empty-string": "''",
    "list": "[1,2]",
    "delete": None,  # ~key
}
BASES = {
    "default": [],
    "verdict_cpu": ["experiment=verdict_cpu"],
    "instruct": ["data=instruct"],
}


def leaf_keys(node: DictConfig, path: str = "") -> list[str]:
    """Every leaf key of ``node`` (a list counts as one leaf), ``hydra`` left out."""
    keys = []
    for key in node:
        full = f"{path}.{key}" if path else str(key)
        if full == "hydra":
            continue
        value = node._get_node(key)
        if isinstance(value, DictConfig) and not value._is_none() and len(value):
            keys += leaf_keys(value, full)
        else:
            keys.append(full)
    return keys


def build_before_training(cfg: DictConfig, group: str) -> None:
    """What the job builds from ``group`` of a valid config before it trains, at the boundary
    (the optimizer's, scheduler's, model's and data's settings: already by the validation)."""
    from llm_scratch.train.callbacks import build_callbacks
    from llm_scratch.train.checkpointing import AtomicCheckpointIO
    from llm_scratch.train.loggers import build_loggers

    if group in ("logger", "", "paths"):
        with configured("logger"):
            build_loggers(cfg)
    if group in ("callbacks", "", "paths"):
        with configured("callbacks"):
            build_callbacks(cfg)
    if group in ("trainer", "", "paths"):
        with configured("trainer"):
            instantiate(cfg.trainer, callbacks=[], logger=[], plugins=[AtomicCheckpointIO()])


def names_key(message: str, key: str) -> bool:
    """Whether a refusal names the key the user typed (or its group and name)."""
    parts = key.split(".")
    return key in message or (parts[-1] in message and parts[0] in message)


def try_value(base: DictConfig, key: str, value: str | None) -> tuple[str, str]:
    """(outcome, message) of setting ``key`` to ``value`` (None: deleting it) on ``base``."""
    cfg = base.copy()
    override = f"~{key}" if value is None else f"{key}={value}"
    try:
        apply_overrides(cfg, [override])
    except (HydraException, OmegaConfBaseException) as error:
        # the entry point prints these as one line (compat.one_line_hydra_errors)
        return "hydra", one_line(f"{error}\n{error.__cause__ or ''}")
    try:
        validate_config(cfg)
    except UserError as error:
        return "refused", str(error)
    except Exception as error:  # noqa: BLE001 - what the test is there to catch
        return "escaped", f"{type(error).__name__}: {error}"
    group = key.split(".")[0] if "." in key else ""
    try:
        build_before_training(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), group)
    except UserError as error:
        return "refused-at-build", str(error)
    except Exception as error:  # noqa: BLE001
        return "escaped", f"{type(error).__name__} while building: {error}"
    return "valid", ""


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, DictConfig]:
    out = tmp_path_factory.mktemp("boundary")
    composed = {name: compose_config(o, out / name / "run") for name, o in BASES.items()}
    # without Hydra's own settings: not the user's values, and copied for every case
    return {
        n: OmegaConf.masked_copy(c, [k for k in c if k != "hydra"]) for n, c in composed.items()
    }


@pytest.mark.parametrize("base_name", list(BASES))
def test_every_key_with_every_kind_of_bad_value_is_valid_or_one_line(bases, base_name, tmp_path):
    base = bases[base_name]
    # each key on the default, and on an experiment where it adds the key or sets another value
    default = bases["default"]
    keys = [
        k
        for k in leaf_keys(base)
        if base is default
        or OmegaConf.select(default, k, default="<none>", throw_on_missing=False)
        != OmegaConf.select(base, k, throw_on_missing=False)
    ]
    assert len(keys) > (60 if base is default else 5), keys
    outcomes: dict[str, int] = {}
    wrong = []
    for key in keys:
        for kind, value in BAD_VALUES.items():
            outcome, message = try_value(base, key, value)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            case = f"{key} {kind}"
            if outcome == "escaped":
                wrong.append(f"{case}: escaped the checks: {message[:300]}")
            elif "\n" in message:
                wrong.append(f"{case}: more than one line: {message!r}")
            elif outcome == "refused" and not names_key(message, key):
                wrong.append(f"{case}: the refusal does not name {key}: {message}")
    assert not wrong, "\n".join(wrong)
    # the sweep saw every outcome (not all refused by one catch-all, nor all accepted)
    assert outcomes.get("refused", 0) > len(keys), outcomes
    assert outcomes.get("valid", 0) > 0, outcomes
    # nothing was written where the run would go: the validation claims nothing
    assert not Path(base.paths.output_dir).exists()


@pytest.mark.parametrize(
    "override,words",
    [
        ("optimizer.lr=nan", ["optimizer.lr=nan", "finite"]),
        ("optimizer.eps=-1", ["optimizer.eps=-1"]),
        ("seed=-1", ["seed=-1", ">= 0"]),
        ("seed=4294967296", ["seed=4294967296", "<= 4294967295"]),
        ("~model", ["model is required", "~model"]),
        ("trainer.check_val_every_n_epoch=0", ["trainer.check_val_every_n_epoch=0"]),
        ("task_name=" + "t" * 300, ["task_name=", "251 bytes"]),
        ("callbacks.model_checkpoint.monitor=nope", ["monitor='nope'", "val/loss"]),
        ("data.samples_per_epoch=1000000000000", ["data.samples_per_epoch", "GB of memory"]),
        ("optimizer.weight_decay=nan", ["optimizer.weight_decay=nan"]),
        ("scheduler.min_lr=nan", ["scheduler.min_lr=nan"]),
        ("callbacks.text_sampler.prompt=''", ["callbacks.text_sampler.prompt=''", "not empty"]),
        ("data.path=/some/file.txt", ["data.path=/some/file.txt", "data=text"]),
        ("+new.key=1", ["'new.key'", "nothing uses it"]),
        ("+paths.mine=/x", ["'paths.mine'", "nothing uses it"]),
        ("trainer.log_every_n_steps=0", ["trainer.log_every_n_steps=0"]),
        ("~callbacks.text_sampler.output_dir", ["callbacks.text_sampler.output_dir", "required"]),
        ("model.n_embd=50", ["n_embd=50", "divisible"]),
        ("model.n_layer=1000000000000", ["model.n_layer=1000000000000", "weights alone"]),
        ("data.num_workers=4611686018427387904", ["data.num_workers", "<= 1024"]),
        ("callbacks.text_sampler.max_new_tokens=10000000", ["max_new_tokens", "<= 1000000"]),
    ],
)
def test_the_issues_cases_are_refused_naming_the_key(bases, override, words):
    cfg = bases["default"].copy()
    apply_overrides(cfg, [override])
    with pytest.raises(UserError) as caught:
        validate_config(cfg)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_a_key_of_ones_own_used_by_an_interpolation_is_accepted(bases, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 200)
    cfg = compose_config(
        [
            *CHAR_VERDICT,
            "data=text",
            f"+paths.corpora={tmp_path}",
            "data.path=${paths.corpora}/c.txt",
        ],
        tmp_path / "run",
    )
    validate_config(cfg)  # +paths.corpora is used: no refusal


def test_the_hand_overrides_agree_with_a_real_composition(bases, tmp_path):
    """apply_overrides sets values as composing with them does (the types, the refusals)."""
    for override in ("data.batch_size=3", "optimizer.lr=1e-3", "trainer.max_epochs=null"):
        applied = bases["default"].copy()
        apply_overrides(applied, [override])
        composed = compose_config([override], Path(bases["default"].paths.output_dir))
        key = override.split("=")[0]
        assert OmegaConf.select(applied, key) == OmegaConf.select(composed, key)
    with pytest.raises(HydraException):
        compose_config(["optimizer.lr=abc"], tmp_path / "run")
    with pytest.raises((HydraException, OmegaConfBaseException)):
        apply_overrides(bases["default"].copy(), ["optimizer.lr=abc"])


def test_every_logged_metric_is_monitorable(tmp_path):
    """LOGGED_METRICS, what a checkpoint may monitor, is what a run writes to metrics.csv."""
    from llm_scratch.train.job import train

    run = tmp_path / "run"
    train(
        compose_config([*CHAR_VERDICT, "trainer.max_steps=2", "trainer.val_check_interval=2"], run)
    )
    columns = {c for c in read_metrics(run)[0] if not c.startswith(METRIC_FAMILIES)}
    assert columns - {"train/mfu"} <= set(LOGGED_METRICS), columns - set(LOGGED_METRICS)
    assert {"val/loss", "train/loss", "step"} <= columns


# ----------------------------------------------------------------------------- the entry point
def run_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    import os
    import sys

    environ = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen(
        [sys.executable, "training/run_experiment.py", *args],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # five processes, started together
def test_each_kind_of_refusal_is_one_line_exit_2_and_leaves_no_directory(tmp_path):
    cases = {
        "range": ["optimizer.lr=nan"],
        "deleted-group": ["~model"],
        "unused-key": ["+new.key=1"],
        "file-name": ["task_name=" + "t" * 300],
        # valid to the checks, refused by Lightning's Trainer: at the boundary, after the claim
        "boundary": [*CHAR_VERDICT, "trainer.precision=bogus"],
    }
    procs = {
        name: run_cli(*args, f"paths.log_dir={tmp_path / name}") for name, args in cases.items()
    }
    traceback = run_cli(
        "optimizer.lr=nan", f"paths.log_dir={tmp_path / 'tb'}", env={"LLM_SCRATCH_TRACEBACK": "1"}
    )
    words = {
        "range": "optimizer.lr=nan",
        "deleted-group": "~model",
        "unused-key": "'new.key'",
        "file-name": "task_name",
        "boundary": "trainer",
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (name, err[-2000:])
        assert "Traceback" not in err, (name, err)
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and words[name] in lines[0], (name, err)
        left = [p for p in (tmp_path / name).rglob("*") if p.is_file()]
        assert left == [], (name, left)
    _, err = traceback.communicate(timeout=300)
    assert traceback.returncode != 0 and "Traceback" in err and "optimizer.lr=nan" in err


# ----------------------------------------------------------------------------- sample.py
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return char_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def test_every_sample_option_with_every_kind_of_bad_value_is_valid_or_one_line(tiny_ckpt, capsys):
    base = [f"ckpt_path={tiny_ckpt}", "prompt=hello", "max_new_tokens=2"]
    outcomes = {0: 0, 2: 0}
    wrong = []
    for option in dataclasses.fields(sample.SampleConfig):
        for kind, value in BAD_VALUES.items():
            # ~key is no key=value: refused as a bad argument
            arg = f"~{option.name}" if value is None else f"{option.name}={value.strip(chr(39))}"
            args = [a for a in base if not a.startswith(option.name + "=")] + [arg]
            if option.name == "prompts_file":
                args = [a for a in args if not a.startswith("prompt=")]
            status = sample.main(args)
            out, err = capsys.readouterr()
            outcomes[status] = outcomes.get(status, 0) + 1
            case = f"{option.name} {kind}"
            if status == 2:
                if not (err.startswith("error: ") and err.count("\n") == 1):
                    wrong.append(f"{case}: not one line: {err!r}")
            elif status != 0:
                wrong.append(f"{case}: exit {status}: {err!r}")
    assert not wrong, "\n".join(wrong)
    assert outcomes[0] > 0 and outcomes[2] > 0, outcomes


@pytest.mark.parametrize(
    "args,words",
    [
        (["temperature=nan"], ["temperature=nan", "finite"]),
        (["seed=" + str(2**70)], ["seed=", "64 bits"]),
        (["top_p=inf"], ["top_p=inf"]),
        (["num_samples=100000000"], ["num_samples=100000000", "<= 65536"]),
    ],
)
def test_sample_values_out_of_range_name_the_option(tiny_ckpt, capsys, args, words):
    assert sample.main([f"ckpt_path={tiny_ckpt}", "prompt=hello", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err


def test_sample_prompt_files_non_utf8_or_nested_too_deep_are_one_line(tiny_ckpt, tmp_path, capsys):
    import torch

    from llm_scratch.data.instruct import ALPACA

    # a checkpoint trained on instructions (it records a prompt template): reads JSON Lines
    checkpoint = torch.load(tiny_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["prompt_template"] = ALPACA.to_dict()
    instruct_ckpt = tmp_path / "instruct.ckpt"
    torch.save(checkpoint, instruct_ckpt)
    binary = tmp_path / "prompt.txt"
    binary.write_bytes(b"hello \xff\xfe world")
    deep = tmp_path / "prompts.jsonl"
    deep.write_text('{"instruction": "a"}\n' + "[" * 200_000 + "]" * 200_000 + "\n")
    cases = [
        (tiny_ckpt, f"prompt_file={binary}", "is not UTF-8 text"),
        (tiny_ckpt, f"prompts_file={binary}", "is not UTF-8 text"),
        (instruct_ckpt, f"prompts_file={deep}", "line 2 is nested too deeply"),
    ]
    for ckpt, arg, words in cases:
        status = sample.main([f"ckpt_path={ckpt}", arg])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and words in err, (arg, err)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_instruction_data_nested_200000_deep_is_one_line(tmp_path, suffix):
    from llm_scratch.data.instruct import load_examples

    path = tmp_path / f"deep{suffix}"
    nested = "[" * 200_000 + "]" * 200_000
    path.write_text(f"[{nested}]" if suffix == ".json" else f"{nested}\n")
    with pytest.raises(UserError, match="nested too deeply") as caught:
        load_examples(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_sample_last_means_last_ckpt_as_in_training_and_best_the_best(tmp_path, monkeypatch):
    run = tmp_path / "logs" / "train" / "runs" / "r1" / "checkpoints"
    run.mkdir(parents=True)
    for name in ("last.ckpt", "best-step000004-val1.5000.ckpt", "best-step000002-val1.2000.ckpt"):
        char_checkpoint(run / name)
    monkeypatch.setenv("LLM_SCRATCH_LOG_DIR", str(tmp_path / "logs"))
    assert sample.checkpoint_path("last").name == "last.ckpt"
    assert sample.checkpoint_path("best").name == "best-step000002-val1.2000.ckpt"
    assert sample.checkpoint_path(str(run.parent)).name == "best-step000002-val1.2000.ckpt"
    monkeypatch.setenv("LLM_SCRATCH_LOG_DIR", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="ckpt_path=best"):
        sample.checkpoint_path("best")


def sweep_config(overrides: list[str]) -> DictConfig:
    """The config Hydra composes for ``-m`` (what its callbacks get before the sweep starts)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from llm_scratch.train.config_store import register_configs
    from tests.helpers import CONFIG_DIR

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        hydra = GlobalHydra.instance().hydra
        return hydra.compose_config("train", overrides, run_mode=RunMode.MULTIRUN)


@pytest.mark.parametrize(
    "overrides,refused",
    [
        (["optimizer.lr=nan,1e-3"], "optimizer.lr=nan"),  # the first job's value
        (["optimizer.lr=1e-3,nan"], None),  # a later job's: that job refuses it
        (["seed=1,2", "trainer.max_epochs=0"], "trainer.max_epochs=0"),
        (["experiment=ablation_lr_cpu"], None),  # the sweeper's params, all valid
        (["experiment=ablation_lr_cpu", "optimizer.eps=-1"], "optimizer.eps=-1"),
        (["model=gpt-nano,gpt-mini", "seed=1"], None),  # a group swept: left to the jobs
    ],
)
def test_a_sweeps_first_job_is_checked_before_the_sweep_directory(overrides, refused, capsys):
    from llm_scratch.train.validate import CheckConfigFirst

    cfg = sweep_config(overrides)
    if refused is None:
        CheckConfigFirst().on_multirun_start(config=cfg)
        return
    with pytest.raises(SystemExit) as caught:
        CheckConfigFirst().on_multirun_start(config=cfg)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and refused in err, err


# ----------------------------------------------------------------------------- the boundary
def test_the_boundary_names_the_group_and_lets_user_errors_and_ctrl_c_through():
    import torch

    from llm_scratch.train.boundary import running

    with pytest.raises(UserError) as caught, configured("trainer"):
        raise ValueError("Precision 'x' is invalid.\nAllowed: 32-true")
    text = str(caught.value)
    assert text.startswith("trainer: Precision 'x' is invalid; Allowed: 32-true")
    assert "ValueError" in text and "LLM_SCRATCH_TRACEBACK=1" in text and "\n" not in text
    assert isinstance(caught.value.__cause__, ValueError)  # the traceback shows the original
    with pytest.raises(UserError, match="^data.batch_size must be"), configured("data"):
        raise UserError("data.batch_size must be a positive integer")
    with pytest.raises(KeyboardInterrupt), configured("data"):
        raise KeyboardInterrupt
    # while running: the group whose code raised it (here torch's optimizer)
    with pytest.raises(UserError, match="^optimizer: Invalid learning rate"), running():
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=-1.0)
