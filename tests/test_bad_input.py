"""Bad input, reruns and names, through the real CLI: one row per case.

Each row is a corruption (of a table set, a config, a run folder or a registry path), the command,
the fragment the error must hold (it names the file, column or key, and the fix) and what must be
left as it was: the table set, the run folder, the registry. Every command must exit with status 2
(a one-paragraph error, no traceback) and write nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from longtail.cli import main
from longtail.data.synthetic import SyntheticConfig, build_synthetic

pytestmark = pytest.mark.data

TINY = ["--epochs", "1", "--set", "model.num_layers=1", "--set", "model.hidden_size=8", "--set", "model.profile_dims=8",
        "--set", "model.head_dims=8", "--set", "train.batch_size=128", "--set", "latency_repeats=2"]
TINY_RECIPE = ["--epochs", "1", "--set", "recipe.model.num_layers=1", "--set", "recipe.model.hidden_size=8",
               "--set", "recipe.model.profile_dims=8", "--set", "recipe.model.head_dims=8",
               "--set", "recipe.train.batch_size=128", "--set", "recipe.meta.finetune.epochs=1"]


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (hidden ones too) with its sha256; {} when ``path`` does not exist."""
    if not path.exists():
        return {}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys, fragment: str) -> str:
    """Run the CLI; it must exit 2 with ``fragment`` (a regex) in one error paragraph on stderr."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"exit {rc} for {argv}; stderr: {err}"
    assert re.search(fragment, err, re.S), f"{fragment!r} not in: {err}"
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A small valid table set (3 scenarios)."""
    root = tmp_path_factory.mktemp("base") / "tables"
    build_synthetic(root, SyntheticConfig(n_scenarios=3, max_rows=200, min_rows=60, seed=0))
    return root


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """Another valid table set of the same shape (other rows)."""
    root = tmp_path_factory.mktemp("other") / "tables"
    build_synthetic(root, SyntheticConfig(n_scenarios=3, max_rows=200, min_rows=60, seed=1))
    return root


# ---------------------------------------------------------------------- corruptions of a table set
def _edit(name: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = root / f"{name}.parquet"
        change(pd.read_parquet(path)).to_parquet(path, index=False)

    return corrupt


def _set(col: str, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df[col] = value(df[col]) if callable(value) else value
        return df

    return change


def _first_rows(col: str, value, n: int = 3) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df.loc[df.index[:n], col] = value
        return df

    return change


def _truncate(name: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = root / f"{name}.parquet"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return corrupt


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / name).write_text(text)


def _later_steps(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["actions__at"] = [np.asarray(v) + np.timedelta64(400, "D") for v in df["actions__at"]]
    return df


TABLE_CASES = [  # (id, corruption, what the error must name)
    ("events-empty", _edit("events", lambda d: d.iloc[:0]), r"events\.parquet: no rows"),
    ("label-column-missing", _edit("events", lambda d: d.drop(columns=["label"])),
     r"events\.parquet: missing column\(s\) \['label'\]"),
    ("manifest-binary", lambda root: (root / "manifest.json").write_bytes(b"\xff\xfe\x00garbage"),
     r"manifest\.json: not valid JSON"),
    ("profile-column-missing", _edit("profile_daily", lambda d: d.drop(columns=["x1"])),
     r"profile_daily\.parquet: missing column\(s\) \['x1'\]"),
    ("labels-as-strings", _edit("events", _set("label", lambda y: y.map({0: "no", 1: "yes"}))),
     r"label column 'label' holds string values.*0/1"),
    ("labels-not-binary", _edit("events", _first_rows("label", 7)), r"label column 'label' holds \[7\]"),
    ("event-time-tz-naive", _edit("events", _set("event_timestamp", lambda t: t.dt.tz_localize(None))),
     r"events\.parquet: column 'event_timestamp'.*without a time zone.*utc=True"),
    ("event-time-as-text", _edit("events", _set("event_timestamp", lambda t: t.astype(str))),
     r"events\.parquet: column 'event_timestamp'.*holds text, not timestamps"),
    ("event-time-NaT", _edit("events", _first_rows("event_timestamp", pd.NaT, 1)),
     r"events\.parquet: column 'event_timestamp': 1 of \d+ row\(s\) have no event time \(NaT\)"),
    ("snapshot-time-tz-naive", _edit("profile_daily", _set("snapshot_ts", lambda t: t.dt.tz_localize(None))),
     r"profile_daily\.parquet: column 'snapshot_ts'.*without a time zone"),
    ("snapshot-time-NaT", _edit("behavior_market_hourly", _first_rows("snapshot_ts", pd.NaT, 2)),
     r"behavior_market_hourly\.parquet: column 'snapshot_ts': 2 of \d+ row\(s\) have no snapshot time"),
    ("parquet-truncated", _truncate("events"), r"events\.parquet: not a readable parquet file.*rebuild it"),
    ("parquet-0-bytes", _write("profile_daily.parquet", ""),
     r"profile_daily\.parquet: not a readable parquet file \(Parquet file size is 0 bytes\)"),
    ("table-file-missing", lambda root: (root / "behavior_market_hourly.parquet").unlink(),
     r"behavior_market_hourly\.parquet: missing"),
    ("manifest-garbage", _write("manifest.json", "{not json"), r"manifest\.json: not valid JSON.*rebuild it"),
    ("manifest-missing", lambda root: (root / "manifest.json").unlink(),
     r"not a complete table set \(no manifest\.json\).*longtail data import"),
    ("spec-garbage", _write("spec.yaml", "name: [unclosed\n"), r"spec\.yaml: not valid YAML.*rebuild the table set"),
    ("spec-unknown-key", lambda root: (root / "spec.yaml").write_text((root / "spec.yaml").read_text()
                                                                       + "colour: red\n"),
     r"spec\.yaml: spec: unknown key\(s\) \['colour'\]"),
    ("behavior-empty", _edit("behavior_actions_hourly", lambda d: d.iloc[:0]),
     r"behavior_actions_hourly\.parquet: no rows: every event would have an empty 'actions' sequence"),
    ("profile-empty", _edit("profile_daily", lambda d: d.iloc[:0]), r"profile_daily\.parquet: no rows"),
    ("events-duplicated", _edit("events", lambda d: pd.concat([d, d.iloc[:5]])),
     r"events\.parquet: 5 duplicated event\(s\).*keep one row per event"),
    ("numbers-as-strings", _edit("profile_daily", _set("x1", lambda x: x.astype(str))),
     r"numeric feature 'x1' is stored as string \(numbers as text\)"),
    ("sequence-numbers-as-strings", _edit("behavior_actions_hourly",
                                          _set("actions__amount", lambda c: [[str(x) for x in v] for v in c])),
     r"numeric step field 'actions__amount' holds string"),
    ("sequence-not-a-list", _edit("behavior_market_hourly", _set("market__index", 0.5)),
     r"sequence column 'market__index' holds double, not a list"),
    ("key-types-differ", _edit("events", _set("user_id", lambda k: k.astype(str))),
     r"entity key 'user_id' is integer here but string in .*events\.parquet"),
    ("key-missing", _edit("events", _first_rows("region", None, 2)),
     r"column 'region': 2 of \d+ row\(s\) have no value of entity key 'region'"),
    ("scenario-missing", _edit("events", _first_rows("scenario", None, 4)), r"column 'scenario': 4 of \d+ row"),
    ("manifest-not-an-object", _write("manifest.json", "[1, 2]"), r"manifest\.json: expected a JSON object, got list"),
    ("spec-missing", lambda root: (root / "spec.yaml").unlink(), r"spec\.yaml: missing; the table set is damaged"),
    # found in the joined rows (after the checks of the tables)
    ("nan-in-non-nullable-feature", _edit("profile_daily", _first_rows("x1", np.nan)),
     r"column 'x1': \d+ NaN value\(s\) but the feature is not nullable"),
    ("infinite-feature", _edit("profile_daily", _first_rows("x2", np.inf, 2)), r"column 'x2': 2 infinite value\(s\)"),
    ("scenario-one-class", _edit("events", lambda d: d.assign(label=d["label"].where(d["scenario"] != "s02", 0))),
     r"scenario 's02' \(column 'scenario'\) has a single label class"),
    ("sequence-fields-misaligned", _edit("behavior_actions_hourly",
                                         _set("actions__amount", lambda c: [np.asarray(v)[:-1] if len(v) else v
                                                                            for v in c])),
     r"column 'actions__kind': step count differs from the other fields of sequence 'actions'"),
    ("sequence-step-after-event", _edit("behavior_actions_hourly", _later_steps),
     r"column 'actions__at': \d+ step\(s\) are at or after their row's 'event_timestamp' \(leakage\)"),
]

TABLE_COMMANDS = {
    "validate": lambda data, out: ["data", "validate", str(data)],
    "train": lambda data, out: ["train", "--data", str(data), "--out", str(out), *TINY],
    "meta-run": lambda data, out: ["meta", "run", "--data", str(data), "--out", str(out), *TINY_RECIPE],
}


@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize(("corruption", "fragment"), [c[1:] for c in TABLE_CASES], ids=[c[0] for c in TABLE_CASES])
def test_a_bad_table_set_is_a_named_error_and_nothing_is_written(base, tmp_path, capsys, command, corruption,
                                                                fragment):
    data, out = tmp_path / "tables", tmp_path / "run"
    shutil.copytree(base, data)
    corruption(data)
    before = tree(data)
    refused(TABLE_COMMANDS[command](data, out), capsys, fragment)
    assert tree(data) == before, "the table set was changed"
    assert not out.exists(), f"a run folder was written: {tree(out)}"


@pytest.mark.parametrize("case", ["events-empty", "numbers-as-strings", "event-time-tz-naive"])
def test_meta_run_checks_the_tables_first(base, tmp_path, capsys, case):
    corruption, fragment = next(c[1:] for c in TABLE_CASES if c[0] == case)
    data, out = tmp_path / "tables", tmp_path / "meh"
    shutil.copytree(base, data)
    corruption(data)
    refused(TABLE_COMMANDS["meta-run"](data, out), capsys, fragment)
    assert not out.exists()


@pytest.mark.parametrize("case", ["events-empty", "parquet-truncated", "event-time-tz-naive"])
def test_drift_check_checks_both_table_sets_first(base, tmp_path, capsys, case):
    corruption, fragment = next(c[1:] for c in TABLE_CASES if c[0] == case)
    data, out = tmp_path / "tables", tmp_path / "drift"
    shutil.copytree(base, data)
    corruption(data)
    refused(["drift", "check", "--reference", str(base), "--current", str(data), "--out", str(out)], capsys, fragment)
    assert not out.exists()


# ---------------------------------------------------------------------- other commands, other paths
def _file(tmp: Path, name: str, text: str) -> Path:
    (tmp / name).write_text(text)
    return tmp / name


OTHER_CASES = [  # (id, argv from the test's folder and the valid set, fragment)
    ("import-spec-broken-yaml", lambda t, base: ["data", "import", str(_file(t, "s.yaml", "name: [x\n")), "--out",
                                                 str(t / "out")], r"import spec .*s\.yaml: not valid YAML"),
    ("import-spec-missing", lambda t, base: ["data", "import", str(t / "none.yaml"), "--out", str(t / "out")],
     r"none\.yaml: not found"),
    ("synthetic-no-scenarios", lambda t, base: ["data", "build", "synthetic", "--out", str(t / "out"),
                                                "--scenarios", "0"], r"synthetic: scenarios \(0\)"),
    ("synthetic-seed-negative", lambda t, base: ["data", "build", "synthetic", "--out", str(t / "out"),
                                                 "--seed", "-1"], r"synthetic: seed -1: use a seed of 0 or more"),
    ("synthetic-min-above-max", lambda t, base: ["data", "build", "synthetic", "--out", str(t / "out"),
                                                 "--min-rows", "500", "--max-rows", "100"], r"need 2 <= min_rows"),
    ("validate-a-file", lambda t, base: ["data", "validate", str(_file(t, "out", "x"))], r"not a complete table set"),
    ("train-data-empty", lambda t, base: ["train", "--data", "", "--out", str(t / "out")],
     r"data\.tables is empty.*longtail data import"),
    ("evaluate-not-a-run", lambda t, base: ["evaluate", str(base)], r"no config\.yaml or metrics\.json"),
    ("nas-light-no-meh", lambda t, base: ["nas", "light", "--out", str(t / "out")], r"meh_out is empty"),
    ("theta0-choose-bad-data", lambda t, base: ["theta0", "choose", "--data", str(t / "nothing"), "--out",
                                                str(t / "out")], r"not a complete table set"),
    ("drift-registry-typo", lambda t, base: ["drift", "check", "--reference", str(base), "--current", str(base),
                                             "--registry", str(t / "registyr"), "--out", str(t / "out")],
     r"registyr: no such folder; check --registry"),
    ("hpo-bad-data", lambda t, base: ["hpo", "run", "--data", str(t / "nothing"), "--out", str(t / "out")],
     r"not a complete table set"),
]


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in OTHER_CASES], ids=[c[0] for c in OTHER_CASES])
def test_other_commands_name_their_bad_input(base, tmp_path, capsys, argv, fragment):
    before = tree(base)
    argv = argv(tmp_path, base)
    had_out = (tmp_path / "out").exists()
    refused(argv, capsys, fragment)
    assert tree(base) == before and (tmp_path / "out").exists() == had_out


# ---------------------------------------------------------------------- bad settings
def _broken_yaml(tmp: Path) -> list[str]:
    (tmp / "bad.yaml").write_text("train: {epochs: 3\n")
    return ["--config", str(tmp / "bad.yaml")]


def _list_yaml(tmp: Path) -> list[str]:
    (tmp / "list.yaml").write_text("- train\n- model\n")
    return ["--config", str(tmp / "list.yaml")]


CONFIG_CASES = [  # (id, extra arguments (or a function of the test's folder), fragment)
    ("epochs-0", ["--epochs", "0"], r"train\.epochs is 0; use 1 or more"),
    ("epochs-negative", ["--epochs", "-2"], r"train\.epochs is -2; use 1 or more"),
    ("lr-nan", ["--set", "train.lr=.nan"], r"train\.lr is nan; use a positive learning rate"),
    ("lr-negative", ["--set", "train.lr=-0.1"], r"train\.lr is -0\.1"),
    ("batch-size-0", ["--set", "train.batch_size=0"], r"train\.batch_size is 0"),
    ("patience-0", ["--set", "train.patience=0"], r"train\.patience is 0"),
    ("weight-decay-negative", ["--set", "train.weight_decay=-1"], r"train\.weight_decay is -1"),
    ("max-steps-negative", ["--set", "train.max_steps=-5"], r"train\.max_steps is -5"),
    ("not-a-number", ["--set", "train.batch_size=many"], r"train\.batch_size: expected int, got 'many'"),
    ("device-unknown", ["--set", "train.device=tpu"], r"train\.device: 'tpu' is not one of"),
    ("optimizer-unknown", ["--set", "train.optimizer=sgd"], r"train\.optimizer: 'sgd' is not one of \['adam', 'adamw'\]"),
    ("schedule-unknown", ["--set", "train.schedule=step"], r"train\.schedule: 'step' is not one of"),
    ("warmup-frac-1", ["--set", "train.warmup_frac=1"], r"train\.warmup_frac is 1\.0; use a fraction"),
    ("onecycle-without-warmup", ["--set", "train.schedule=onecycle"],
     r"train\.warmup_frac is 0 with train\.schedule onecycle"),
    ("lr-scale-batch-negative", ["--set", "train.lr_scale_batch=-512"], r"train\.lr_scale_batch is -512"),
    ("encoder-unknown", ["--set", "model.encoder=gru"], r"unknown encoder 'gru'; registered encoders: .*lstm"),
    ("heads-do-not-divide", ["--set", "model.encoder=bert", "--set", "model.num_heads=3"],
     r"num_heads=3 does not divide hidden_size=8.*use num_heads in \[1, 2, 4, 8\]"),
    ("dropout-1", ["--set", "model.dropout=1.0"], r"dropout must be in \[0, 1\)"),
    ("test-frac-above-1", ["--set", "data.test_frac=1.5"], r"data\.test_frac is 1\.5; use a share in \(0, 1\)"),
    ("test-frac-0", ["--set", "data.test_frac=0"], r"data\.test_frac is 0"),
    ("valid-frac-1", ["--set", "data.valid_frac=1"], r"data\.valid_frac is 1"),
    ("latency-repeats-0", ["--set", "latency_repeats=0"], r"latency_repeats is 0"),
    ("split-seed-negative", ["--set", "data.split_seed=-1"], r"data\.split_seed is -1; use a seed of 0 or more"),
    ("seed-negative", ["--set", "train.seed=-3"], r"train\.seed is -3; use a seed of 0 or more"),
    ("unknown-key", ["--set", "train.colour=red"], r"unknown key\(s\) \['colour'\]"),
    ("unknown-scenario", ["--set", "data.scenarios=[nope]"], r"data\.scenarios: \['nope'\] not in column 'scenario'"),
    ("config-broken-yaml", _broken_yaml, r"bad\.yaml: not valid YAML"),
    ("config-not-a-mapping", _list_yaml, r"list\.yaml: expected a mapping at the top level"),
    ("config-missing", ["--config", "/nonexistent/train.yaml"], r"/nonexistent/train\.yaml: not found"),
]
if not torch.cuda.is_available():
    CONFIG_CASES.append(("cuda-without-cuda", ["--set", "train.device=cuda"],
                         r"train\.device is cuda but this machine has no CUDA device; use train\.device=auto"))


@pytest.mark.parametrize(("extra", "fragment"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_a_bad_setting_is_refused_before_any_work(base, tmp_path, capsys, extra, fragment):
    out = tmp_path / "run"
    before = tree(base)
    extra = extra(tmp_path) if callable(extra) else extra
    refused(["train", "--data", str(base), "--out", str(out), *TINY, *extra], capsys, fragment)
    assert not out.exists() and tree(base) == before


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--epochs", "0"], r"train\.epochs is 0"),
    (["--set", "recipe.meta.finetune.lr=-1"], r"train\.lr is -1"),
    (["--workers", "0"], r"workers is 0"),
    (["--set", "data.test_frac=1"], r"data\.test_frac is 1"),
    (["--set", "recipe.model.encoder=gru"], r"unknown encoder 'gru'"),
], ids=["theta0-epochs-0", "finetune-lr-negative", "workers-0", "test-frac-1", "encoder-unknown"])
def test_meta_run_checks_its_settings_first(base, tmp_path, capsys, extra, fragment):
    out = tmp_path / "meh"
    refused(["meta", "run", "--data", str(base), "--out", str(out), *TINY_RECIPE, *extra], capsys, fragment)
    assert not out.exists()


# ---------------------------------------------------------------------- reruns of a run folder
@pytest.fixture(scope="module")
def finished(base, tmp_path_factory) -> Path:
    """A finished tiny `longtail train` run on ``base``."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--data", str(base), "--out", str(out), *TINY]) == 0
    return out


def _legacy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    (dest / "run.json").unlink()
    return dest


RERUN_CASES = [  # (id, how the rerun differs, fragment)
    ("split-seed", lambda base, other: ["--data", str(base), "--set", "data.split_seed=1"], r"data\.split_seed 0 -> 1"),
    ("test-frac", lambda base, other: ["--data", str(base), "--set", "data.test_frac=0.3"], r"data\.test_frac 0\.2 -> 0\.3"),
    ("other-data", lambda base, other: ["--data", str(other)],
     r"the table set's events \(events\.parquet\).*changed"),
    ("other-architecture", lambda base, other: ["--data", str(base), "--set", "model.hidden_size=6"],
     r"model\.hidden_size 8 -> 6"),
    ("other-encoder", lambda base, other: ["--data", str(base), "--encoder", "bert", "--set", "model.num_heads=2"],
     r"model\.encoder lstm -> bert"),
    ("other-strategy", lambda base, other: ["--data", str(base), "--strategy", "single"], r"strategy global -> single"),
    ("other-epochs", lambda base, other: ["--data", str(base), "--epochs", "2"], r"train\.epochs 1 -> 2"),
]


@pytest.mark.model
@pytest.mark.parametrize(("differs", "fragment"), [c[1:] for c in RERUN_CASES], ids=[c[0] for c in RERUN_CASES])
def test_a_rerun_on_other_inputs_is_refused_and_the_run_is_untouched(finished, base, other, capsys, differs,
                                                                       fragment):
    before = tree(finished)
    err = refused(["train", "--out", str(finished), *TINY, *differs(base, other)], capsys, fragment)
    assert "pass another --out, or remove" in err
    assert tree(finished) == before


@pytest.mark.model
def test_an_interrupted_run_is_not_continued_on_a_new_split(finished, base, tmp_path, capsys):
    """What a kill mid-epoch leaves (run.json and checkpoints, no metrics.json) resumes only on its own inputs."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "metrics.json").unlink()
    before = tree(run)
    refused(["train", "--data", str(base), "--out", str(run), *TINY, "--set", "data.split_seed=1"], capsys,
            r"data\.split_seed 0 -> 1")
    assert tree(run) == before
    assert main(["train", "--data", str(base), "--out", str(run), *TINY]) == 0  # its own inputs: resumed
    assert "resuming the run" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["mean_auc"] == \
        json.loads((finished / "metrics.json").read_text())["mean_auc"]


@pytest.mark.model
def test_a_rerun_of_the_same_run_resumes_without_training_and_a_moved_set_is_the_same_set(finished, base,
                                                                                          tmp_path, capsys):
    run, moved = tmp_path / "run", tmp_path / "moved"
    shutil.copytree(finished, run)
    shutil.copytree(base, moved)
    weights = tree(run / "models" / "global")["weights.pt"]
    assert main(["train", "--data", str(moved), "--out", str(run), *TINY]) == 0
    assert "resuming the run" in capsys.readouterr().out
    assert tree(run / "models" / "global")["weights.pt"] == weights  # no epoch trained again
    assert json.loads((run / "metrics.json").read_text())["models"]["global"]["epochs_run"] == 1


@pytest.mark.parametrize(("folder", "fragment"), [
    ("legacy", r"already holds files but no run\.json"),
    ("file", r"is a file, not a run folder"),
    ("other-files", r"already holds files but no run\.json"),
])
def test_a_folder_that_is_not_this_run_is_refused(finished, base, tmp_path, capsys, folder, fragment):
    out = tmp_path / "out"
    if folder == "legacy":
        _legacy(finished, out)
    elif folder == "file":
        out.write_text("notes")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("my notes")
    before = tree(out)
    refused(["train", "--data", str(base), "--out", str(out), *TINY], capsys, fragment)
    assert tree(out) == before


@pytest.mark.model
def test_evaluate_refuses_a_table_set_that_changed_since_the_run(finished, base, other, tmp_path, capsys):
    data, run = tmp_path / "tables", tmp_path / "run"
    shutil.copytree(base, data)
    assert main(["train", "--data", str(data), "--out", str(run), *TINY]) == 0
    shutil.rmtree(data)
    shutil.copytree(other, data)  # the same path, other rows
    before = tree(run)
    refused(["evaluate", str(run)], capsys, r"made from other inputs than the table set it names now.*events")
    assert tree(run) == before


# ---------------------------------------------------------------------- meta run and nas light
@pytest.fixture(scope="module")
def meh(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meh") / "meh"
    assert main(["meta", "run", "--data", str(base), "--out", str(out), *TINY_RECIPE]) == 0
    return out


@pytest.mark.model
def test_meta_run_nas_light_and_refresh_refuse_other_inputs(meh, base, other, tmp_path, capsys):
    before = tree(meh)
    refused(["meta", "run", "--data", str(base), "--out", str(meh), *TINY_RECIPE, "--set", "data.split_seed=3"],
            capsys, r"data\.split_seed 0 -> 3")
    refused(["meta", "run", "--data", str(other), "--out", str(meh), *TINY_RECIPE], capsys,
            r"the table set's .*changed")
    light = tmp_path / "light"
    refused(["nas", "light", "--meh-out", str(meh), "--data", str(other), "--out", str(light)], capsys,
            r"the MeH run was made from another table set or split.*TEST rows here")
    refused(["nas", "light", "--meh-out", str(meh), "--out", str(light), "--set", "data.split_seed=2",
             "--set", f"data.tables={base}"], capsys, r"data\.split_seed 0 -> 2")
    refused(["nas", "light", "--meh-out", str(tmp_path / "nothing"), "--out", str(light)], capsys,
            r"not a finished MeH run")
    refused(["meta", "refresh", "--store", str(meh / "theta0"), "--data", str(other)], capsys,
            r"the MeH run was made from another table set or split.*config\.yaml")
    refused(["meta", "refresh", "--store", str(tmp_path / "nostore"), "--data", str(base)], capsys,
            r"nostore: no θ0 store here")
    data = tmp_path / "tables"
    shutil.copytree(base, data)
    next(c[1] for c in TABLE_CASES if c[0] == "numbers-as-strings")(data)
    refused(["meta", "refresh", "--store", str(meh / "theta0"), "--data", str(data)], capsys,
            r"numeric feature 'x1' is stored as string")
    assert tree(meh) == before and not light.exists()


# ---------------------------------------------------------------------- names
def test_scenario_names_map_to_distinct_folders_and_back():
    from longtail.io import safe_name, scenario_of

    names = ["a/b", "a_b", "a.b", "a b", "a__b", "A/B", "-a", ".", "..", "_", "é", "UA", "9E", "s-01"]
    safe = [safe_name(n) for n in names]
    assert len(set(safe)) == len(names)
    assert [scenario_of(s) for s in safe] == names
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in safe)  # a file name and a registry-name part
    assert safe_name("UA") == "UA" and safe_name("a/b") != safe_name("a_b")
    with pytest.raises(ValueError, match="non-empty"):
        safe_name("")


@pytest.mark.model
def test_two_scenarios_whose_names_differ_only_in_punctuation_get_two_models(base, tmp_path, capsys):
    """``a/b`` and ``a_b`` once shared ``models/a_b``: the second resumed the first's checkpoint."""
    from longtail.data.tables import TableSet
    from longtail.model_folder import load_model_dir
    from longtail.registry import open_registry

    data = tmp_path / "tables"
    shutil.copytree(base, data)
    ev = pd.read_parquet(data / "events.parquet")
    ev["scenario"] = ev["scenario"].map({"s00": "a/b", "s01": "a_b", "s02": "a.b"})
    ev.to_parquet(data / "events.parquet", index=False)
    TableSet.load(data)  # still a valid set
    run = tmp_path / "sinh"
    assert main(["train", "--data", str(data), "--out", str(run), "--strategy", "single", *TINY]) == 0
    folders = sorted(p.name for p in (run / "models").iterdir() if not p.name.startswith("."))
    assert folders == ["a_2Eb", "a_2Fb", "a__b"]
    assert {load_model_dir(run / "models" / f)[2]["scenarios"][0] for f in folders} == {"a/b", "a_b", "a.b"}
    reg = tmp_path / "registry"
    assert main(["meta", "run", "--strategy", "sinh", "--data", str(data), "--out", str(tmp_path / "meta"),
                 *TINY_RECIPE, "--set", f"registry={reg}"]) == 0
    names = open_registry(reg).list_models()
    assert names == ["synthetic.a_2Eb.heavy-lstm", "synthetic.a_2Fb.heavy-lstm", "synthetic.a__b.heavy-lstm"]
    assert {open_registry(reg).get(n, 1).scenario for n in names} == {"a/b", "a_b", "a.b"}


# ---------------------------------------------------------------------- model folders and failed runs
def test_a_model_folder_appears_only_when_complete(tmp_path, monkeypatch):
    from tiny import TINY as TINY_MODEL

    from longtail.data.tables import point_in_time_join
    from longtail.data.transforms import FittedTransforms
    from longtail.model_folder import load_model_dir, save_model_dir
    from longtail.models.heavy import build_model

    tables = build_synthetic(tmp_path / "t", SyntheticConfig(n_scenarios=2, max_rows=80, min_rows=40))
    frame = point_in_time_join(tables)
    tf = FittedTransforms.fit(tables.spec, frame)
    model = build_model(tf.schema, TINY_MODEL)
    real_save = torch.save

    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(tmp_path / "models" / "m", model, tf, TINY_MODEL, {})
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == []  # no folder, no leftover
    monkeypatch.setattr(torch, "save", real_save)
    save_model_dir(tmp_path / "models" / "m", model, tf, TINY_MODEL, {})
    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError):  # saving again over it: incomplete (no model.json) until the new one lands
        save_model_dir(tmp_path / "models" / "m", model, tf, TINY_MODEL, {})
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "models" / "m" / "model.json").exists()  # the old one stays whole: nothing was replaced
    assert load_model_dir(tmp_path / "models" / "m")[2]["kind"] == "heavy"


@pytest.mark.model
def test_a_failed_run_is_marked_failed_and_a_rerun_completes_it(base, tmp_path, monkeypatch):
    from longtail import train_job
    from longtail.config import load_config

    cfg = load_config(train_job.TrainJobConfig, None, {"data": {"tables": str(base)}, "train": {"epochs": 1},
                                                       "model": {"num_layers": 1, "hidden_size": 8},
                                                       "latency_repeats": 2})
    run = tmp_path / "run"

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation died")

    monkeypatch.setattr(train_job, "cost_of", broken)
    with pytest.raises(RuntimeError, match="evaluation died"):
        train_job.run_train(cfg, run, log=lambda _m: None)
    failed = json.loads((run / "failed.json").read_text())
    assert failed["status"] == "failed" and "evaluation died" in failed["error"]
    assert not (run / "metrics.json").exists() and (run / "models" / "global" / "model.json").exists()
    monkeypatch.undo()
    train_job.run_train(cfg, run, log=lambda _m: None)
    assert (run / "metrics.json").exists() and not (run / "failed.json").exists()


@pytest.mark.model
def test_a_checkpoint_of_another_architecture_or_other_rows_is_a_named_error(base, tmp_path):
    import dataclasses

    from longtail.data.prepared import DataConfig, prepare
    from longtail.models.heavy import HeavyConfig
    from longtail.train import CheckpointMismatch, TrainConfig
    from longtail.train_job import BINDING, checkpoint_dir, train_heavy

    data = prepare(DataConfig(tables=str(base)))
    small = HeavyConfig(num_layers=1, hidden_size=8, profile_dims=(8,), head_dims=(8,))
    cfg = TrainConfig(epochs=1, device="cpu")
    train_heavy(data, data.scenarios, small, cfg, tmp_path / "m")
    with pytest.raises(CheckpointMismatch, match=r"other the architecture \(model config\).*remove"):
        train_heavy(data, data.scenarios, dataclasses.replace(small, hidden_size=6), cfg, tmp_path / "m")
    with pytest.raises(CheckpointMismatch, match="the scenarios.*the training rows"):
        train_heavy(data, data.scenarios[:1], small, cfg, tmp_path / "m")
    (checkpoint_dir(tmp_path / "m") / BINDING).unlink()  # a checkpoint from before bindings: shapes are compared
    with pytest.raises(CheckpointMismatch, match=r"another architecture \(\d+ parameter\(s\) differ"):
        train_heavy(data, data.scenarios, dataclasses.replace(small, hidden_size=6), cfg, tmp_path / "m")


# ---------------------------------------------------------------------- the registry
@pytest.mark.parametrize("front", ["http", "grpc"])
def test_serve_refuses_a_registry_that_does_not_exist(tmp_path, capsys, front):
    typo = tmp_path / "registyr"
    refused(["serve", front, "--registry", str(typo)], capsys, r"registyr: no such folder; check --registry")
    assert not typo.exists()


@pytest.mark.parametrize("command", [["list"], ["show", "m", "1"], ["serving", "s00"], ["promote", "s00", "m", "1"],
                                     ["rollback", "s00"], ["gc"]], ids=lambda c: c[0])
def test_registry_commands_refuse_a_registry_that_does_not_exist(tmp_path, capsys, command):
    typo = tmp_path / "registyr"
    refused(["registry", "--registry", str(typo), *command], capsys, r"registyr: no such folder; check --registry")
    assert not typo.exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    refused(["registry", "--registry", str(tmp_path / "notes"), *command], capsys,
            r"holds files but no registry \(no models/ or serving/\)")


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def _model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"w": torch.zeros(3)}, folder / "weights.pt")
    (folder / "model.json").write_text("{}")
    return folder


@pytest.mark.integration
def test_a_publish_killed_midway_leaves_nothing_for_ever(tmp_path, capsys):
    """Its temp file goes at the next publish; its incomplete version with `longtail registry gc`."""
    from longtail.registry import collect_garbage, open_registry
    from longtail.registry.store import temp_owner

    reg_dir = tmp_path / "registry"
    reg = open_registry(reg_dir)
    folder = _model_folder(tmp_path)
    reg.publish("m", folder, kind="agnostic", metrics={}, lineage={})
    # a publisher killed while it wrote a file: it had claimed v2, uploaded part of it, left a temp file
    script = (f"import os, sys, longtail.registry.store as s\n"
              f"from longtail.registry import open_registry\n"
              f"real = s.LocalStore._write_temp\n"
              f"def stuck(self, data):\n"
              f"    path = real(self, data)\n"
              f"    if len(data) > 500: os.kill(os.getpid(), 9)  # the weights, after the claim\n"
              f"    return path\n"
              f"s.LocalStore._write_temp = stuck\n"
              f"open_registry({str(reg_dir)!r}).publish('m', {str(folder)!r}, kind='agnostic', metrics={{}}, "
              f"lineage={{}})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == -9, proc.stderr
    leftovers = [p for p in (reg_dir / ".tmp").iterdir()]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 500
    assert reg.list_versions("m") == [1] and (reg_dir / "models" / "m" / "versions" / "2" / "claim.json").exists()
    # one of another (dead) process, one of a live one (this process: a publish still writing)
    (reg_dir / ".tmp" / f".{temp_owner(_dead_pid())}.abc.tmp").write_bytes(b"x" * 1000)
    (reg_dir / ".tmp" / f".{temp_owner()}.live.tmp").write_bytes(b"y")

    assert main(["registry", "--registry", str(reg_dir), "gc", "--dry-run"]) == 0
    assert "would remove 2 temporary file(s)" in capsys.readouterr().out
    assert len(list((reg_dir / ".tmp").iterdir())) == 3  # a dry run removes nothing
    assert main(["registry", "--registry", str(reg_dir), "gc"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 temporary file(s)" in out and "1 incomplete version(s): m v2" in out
    assert [p.name for p in (reg_dir / ".tmp").iterdir()] == [f".{temp_owner()}.live.tmp"]
    assert not (reg_dir / "models" / "m" / "versions" / "2").exists()
    assert reg.list_versions("m") == [1] and reg.download("m", 1, tmp_path / "dl").is_dir()
    # the next publish also removes what a dead publisher left
    (reg_dir / ".tmp" / f".{temp_owner(_dead_pid())}.def.tmp").write_bytes(b"x" * 10)
    assert reg.publish("m", folder, kind="agnostic", metrics={}, lineage={}).version == 2
    assert [p.name for p in (reg_dir / ".tmp").iterdir()] == [f".{temp_owner()}.live.tmp"]
    assert collect_garbage(reg).incomplete_versions == []


# ---------------------------------------------------------------------- hpo run
@pytest.mark.integration
def test_hpo_run_refuses_a_journal_of_another_table_set_before_it_writes(base, other, tmp_path, capsys):
    out = tmp_path / "hpo"
    args = ["hpo", "run", "--trials", "1", "--out", str(out), "--set", "trial.train.epochs=1",
            "--set", "trial.train.max_steps=1", "--set", "trial.model.num_layers=1",
            "--set", "trial.model.hidden_size=4"]
    assert main([*args, "--data", str(base)]) == 0
    before = tree(out)
    refused([*args, "--data", str(other)], capsys, r"journal\.jsonl was written by another job \(context\.tables\.")
    assert tree(out) == before  # config.yaml too
    refused([*args, "--data", str(base), "--algorithm", "random"], capsys, r"algorithm 'racos' -> 'random'")
    assert tree(out) == before
    refused(["hpo", "run", "--trials", "1", "--out", str(tmp_path / "hpo2"), "--data", str(tmp_path / "nothing")],
            capsys, "not a complete table set")
    assert not (tmp_path / "hpo2").exists()
