"""Light strategies MeL and Ours (paper V.A.2) and the pooled pre-training of Ours, on a tiny synthetic table set."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from longtail.config import config_from_dict, config_to_dict, merge
from longtail.data.prepared import DataConfig, prepare
from longtail.data.scenario_rows import ScenarioRows
from longtail.data.splits import TEST, TRAIN, VALID
from longtail.io import safe_name
from longtail.metrics import predict_proba
from longtail.model_folder import load_model_dir, save_model_dir
from longtail.models.flops import count_flops
from longtail.models.heavy import HeavyConfig, build_model
from longtail.nas import ArchSpace, InfeasibleBudgetError, SearchConfig
from longtail.nas import pretrain as pretrain_mod
from longtail.nas.config import (
    DistillConfig,
    LightConfig,
    PretrainConfig,
    RestartConfig,
    RetrainConfig,
    TransferConfig,
)
from longtail.nas.pretrain import pooled_batch, pretrained_supernet, theta0_dir
from longtail.nas.strategies import mel_budget, run_mel, run_ours
from longtail.nas.supernet import arch_parameters, build_supernet_model
from longtail.onboarding import Recipe
from longtail.onboarding.protocol import LightJobConfig, run_light_job
from longtail.train import TrainConfig, fit
from longtail.train_job import train_heavy

pytestmark = pytest.mark.model

TEACHER = HeavyConfig(encoder="lstm", num_layers=4, hidden_size=6, num_heads=2, profile_dims=(8,), head_dims=(8,),
                      dropout=0.0, cat_embedding_dim=3)
TINY_TRAIN = TrainConfig(epochs=1, batch_size=128, device="cpu", seed=0, max_steps=4)
LIGHT = LightConfig(space=ArchSpace(num_layers=3, hidden_size=6, num_heads=2),
                    search=SearchConfig(batch_size=128, max_steps=3, epochs=1), train=TINY_TRAIN,
                    latency_repeats=3, pretrain=PretrainConfig(epochs=0), transfer=TransferConfig(rows=0),
                    retrain=RetrainConfig(epochs=0), restarts=RestartConfig(runs=1))
_ROWS: dict = {}


def rows_of(setup) -> ScenarioRows:
    """The scenario's rows under the teacher's transforms, made once per data set and scenario."""
    data, scen, teacher = setup[:3]
    key = (id(data), scen)
    if key not in _ROWS:
        _ROWS[key] = ScenarioRows.build(data, scen, teacher.transforms, query_frac=0.3, seed=0)
    return _ROWS[key]


def light(**changes) -> LightConfig:
    """LIGHT with nested fields changed: ``light(retrain={"lr_drops": 3}, transfer={"rows": 50})``."""
    return config_from_dict(LightConfig, merge(config_to_dict(LIGHT), changes), "light")


def meh_folder(root, data, scen, teacher, tables) -> None:
    """A finished MeH-like run folder: θ0 in theta0_final, one θu in models/<scenario>, its table set."""
    from longtail.config import save_config
    from longtail.onboarding.protocol import StrategyJobConfig

    save_model_dir(root / "theta0_final", teacher.model, teacher.transforms, TEACHER, {})
    save_model_dir(root / "models" / safe_name(scen), teacher.model, teacher.transforms, TEACHER, {})
    save_config(StrategyJobConfig(data=DataConfig(tables=str(tables))), root / "config.yaml")
    (root / "metrics.json").write_text("{}")


@pytest.fixture(scope="module")
def setup(synthetic_tables):
    data = prepare(DataConfig(tables=str(synthetic_tables.root)))
    scen = data.scenarios[0]
    teacher = train_heavy(data, [scen], TEACHER, TINY_TRAIN)
    return data, scen, teacher


@pytest.fixture(scope="module")
def results(setup, tmp_path_factory):
    data, scen, teacher = setup
    out = tmp_path_factory.mktemp("ours")
    mel = run_mel(teacher.model, rows_of(setup), TEACHER, LIGHT)
    ours = run_ours(teacher.model, rows_of(setup), TEACHER, LIGHT, out=out)
    return mel, ours, out


def test_light_config_round_trips_through_dicts():
    cfg = LightConfig(budget_fraction_of_mel=0.5, search=SearchConfig(max_steps=7))
    assert config_from_dict(LightConfig, config_to_dict(cfg)) == cfg


def test_mel_is_the_teacher_with_three_layers(results):
    mel, _, _ = results
    assert mel.strategy == "MeL" and mel.genotypes is None
    assert mel.budget == mel.flops > 0
    assert mel.info["config"]["num_layers"] == 3 and mel.info["config"]["hidden_size"] == TEACHER.hidden_size


def test_ours_stays_within_the_mel_budget(results):
    mel, ours, _ = results
    assert ours.strategy == "Ours"
    assert ours.budget == mel.flops  # fraction 1.0: the paper's budget is the light model's FLOPs
    assert 0 < ours.flops <= ours.budget
    assert ours.info["within_budget"] and ours.info["search_steps"] == 3
    assert ours.flops == count_flops(ours.model)["total"]


@pytest.mark.parametrize("which", [0, 1])
def test_aucs_and_costs_are_finite(results, which):
    r = results[which]
    assert math.isfinite(r.auc) and 0.0 <= r.auc <= 1.0
    assert math.isfinite(r.latency_ms) and r.latency_ms > 0 and r.seconds > 0


def test_ours_writes_genotypes_pictures_and_a_loadable_model(results, setup):
    data, scen, teacher = setup
    _, ours, out = results
    saved = json.loads((out / "genotypes.json").read_text())
    assert saved["scenario"] == scen and saved["flops"] == ours.flops and saved["budget"] == ours.budget
    assert saved["genotypes"] == ours.genotypes
    for name in ours.genotypes:
        png = out / f"genotype_{safe_name(name)}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, transforms, info = load_model_dir(out)
    assert info["kind"] == "light" and count_flops(model)["total"] == ours.flops
    batch = transforms.transform(data.rows("test", [scen]))
    torch.testing.assert_close(predict_proba(model, batch), predict_proba(ours.model, batch))


def test_light_folders_load_through_the_generic_loader_and_the_registry(results, setup, tmp_path):
    from longtail.model_folder import load_model_dir
    from longtail.registry import open_registry

    data, scen, teacher = setup
    _, ours, out = results
    model, transforms, info = load_model_dir(out)
    batch = transforms.transform(data.rows("test", [scen]))
    expected = predict_proba(ours.model, batch)
    torch.testing.assert_close(predict_proba(model, batch), expected)
    reg = open_registry(str(tmp_path / "registry"))
    v = reg.publish("syn.light", out, kind="light", scenario=scen, metrics={"auc": ours.auc}, lineage={})
    model2, _, info2 = reg.load("syn.light", v.version)
    assert info2["kind"] == "light" and count_flops(model2)["total"] == ours.flops
    torch.testing.assert_close(predict_proba(model2, batch), expected)
    assert sorted(p.name for p in out.glob("genotype_*.png")) == sorted(  # the pictures travel with the model
        f for f in (e.path for e in v.files) if f.startswith("genotype_"))


def test_too_small_budget_raises_before_searching(setup):
    data, scen, teacher = setup
    cfg = dataclasses.replace(LIGHT, budget_fraction_of_mel=1e-4)
    mel_flops, budget = mel_budget(teacher.transforms.schema, TEACHER, cfg)
    with pytest.raises(InfeasibleBudgetError, match="budget_fraction_of_mel") as err:
        run_ours(teacher.model, rows_of((data, scen, teacher)), TEACHER, cfg)
    msg = str(err.value)
    assert scen in msg and f"{budget:,}" in msg and f"{mel_flops:,}" in msg and "smallest architecture" in msg


def test_light_job_reads_a_meh_run_and_tabulates(setup, synthetic_tables, tmp_path):
    data, scen, teacher = setup
    meh_folder(tmp_path / "meh", data, scen, teacher, synthetic_tables.root)
    cfg = LightJobConfig(meh_out=str(tmp_path / "meh"), recipe=Recipe(light=LIGHT), out=str(tmp_path / "light"))
    table = run_light_job(cfg)  # the table set is the MeH run's (its config.yaml)
    assert list(table["scenario"]) == [scen]  # only scenarios with a saved θu
    row = table.iloc[0]
    assert row["flops_ours"] <= row["budget"] == row["flops_mel"] < row["flops_heavy"]
    assert (tmp_path / "light" / safe_name(scen) / "ours" / "genotypes.json").exists()
    with pytest.raises(FileNotFoundError, match="no θu"):
        run_light_job(LightJobConfig(meh_out=str(tmp_path / "meh"), recipe=Recipe(light=LIGHT),
                                     scenarios=(data.scenarios[1],), out=str(tmp_path / "light2")))
    with pytest.raises(FileNotFoundError, match="not a finished MeH run"):
        run_light_job(LightJobConfig(meh_out=str(tmp_path), out=str(tmp_path / "light3")))


def test_light_models_start_their_shared_parts_from_the_teacher(setup):
    from longtail.nas.distill import inherit_shared_parts
    from longtail.nas.strategies import mel_config

    _, _, teacher = setup
    torch.manual_seed(1)
    student = build_model(teacher.transforms.schema, mel_config(TEACHER, LIGHT))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    copied = inherit_shared_parts(student, teacher.model)
    t = teacher.model.state_dict()
    assert any(k.startswith("profile_encoder.") for k in copied) and any(k.startswith("head.") for k in copied)
    for k, v in student.state_dict().items():
        if ".encoder." in k:  # the behavior encoders keep their own initialisation
            assert k not in copied and torch.equal(v, before[k])
        elif k in copied:
            assert torch.equal(v, t[k])


@pytest.mark.parametrize(("rows", "k"), [(491, 20), (5120, 2), (51200, 1), (0, 1)])
def test_small_scenarios_get_at_least_min_steps(rows, k):
    from longtail.nas.strategies import scaled_for_rows

    cfg = LightConfig(train=TrainConfig(epochs=5, batch_size=512, patience=2), search=SearchConfig(epochs=5),
                      min_steps=100)
    train, srch = scaled_for_rows(cfg, rows)
    assert (train.epochs, train.patience, srch.epochs) == (5 * k, 2 * k, 5 * k)
    same = scaled_for_rows(LightConfig(min_steps=0), rows)
    assert same[0].epochs == LightConfig().train.epochs


@pytest.mark.parametrize(("retrain", "rows", "epochs", "patience", "search_epochs"),
                         [(0, 491, 100, 40, 100), (15, 491, 15 * 7, 2 * 7, 100), (15, 51200, 15, 2, 5)])
def test_retraining_of_ours_has_its_own_epochs(retrain, rows, epochs, patience, search_epochs):
    from longtail.nas.strategies import scaled_for_rows

    cfg = LightConfig(train=TrainConfig(epochs=5, batch_size=512, patience=2), search=SearchConfig(epochs=5),
                      min_steps=100, retrain=RetrainConfig(epochs=retrain))
    train, srch = scaled_for_rows(cfg, rows, retrain=True)
    assert (train.epochs, train.patience, srch.epochs) == (epochs, patience, search_epochs)
    assert scaled_for_rows(cfg, rows)[0].epochs == search_epochs  # MeL keeps train.epochs, scaled as the search
    # learning-rate drops belong to the retraining alone
    assert train.lr_drops == cfg.retrain.lr_drops == 2 and scaled_for_rows(cfg, rows)[0].lr_drops == 0


def test_ours_retraining_drops_the_learning_rate_at_plateaus(setup, monkeypatch):
    """retrain.lr_drops reaches the retraining's TrainConfig (and fit), not the search; negative is refused."""
    from longtail.nas import strategies

    data, scen, teacher = setup
    seen = []
    real = strategies.train_light

    def spy(genotypes, schema, config, train, valid, teacher_model, train_cfg, **k):
        seen.append(train_cfg)
        return real(genotypes, schema, config, train, valid, teacher_model, train_cfg, **k)

    monkeypatch.setattr(strategies, "train_light", spy)
    ours = run_ours(teacher.model, rows_of((data, scen, teacher)), TEACHER, light(retrain={"lr_drops": 3}))
    assert [c.lr_drops for c in seen] == [3] and ours.flops <= ours.budget
    with pytest.raises(ValueError, match="light.retrain.lr_drops is -1"):
        light(retrain={"lr_drops": -1})


def test_cli_nas_light_runs_a_meh_folder_and_publishes_ours(setup, synthetic_tables, tmp_path):
    from longtail.cli import main
    from longtail.config import save_config
    from longtail.registry import open_registry

    data, scen, teacher = setup
    meh_folder(tmp_path / "meh", data, scen, teacher, synthetic_tables.root)
    save_config(LightJobConfig(recipe=Recipe(light=LIGHT)), tmp_path / "light.yaml")
    rc = main(["nas", "light", "--meh-out", str(tmp_path / "meh"), "--data", str(synthetic_tables.root),
               "--out", str(tmp_path / "job"), "--registry", str(tmp_path / "reg"),
               "--config", str(tmp_path / "light.yaml"), "--set", "recipe.light.latency_repeats=2"])
    assert rc == 0
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert [r["scenario"] for r in metrics["per_scenario"]] == [scen]
    (pub,) = metrics["published"]
    reg = open_registry(str(tmp_path / "reg"))
    version = reg.get(pub["name"], pub["version"])
    assert version.kind == "light" and version.scenario == scen
    assert version.metrics["flops"] <= version.metrics["budget"]
    model, _, info = reg.load(pub["name"], pub["version"])
    assert info["kind"] == "light" and count_flops(model)["total"] == version.metrics["flops"]


def test_transfer_set_is_other_scenarios_train_rows_labelled_by_the_teacher(setup):
    from longtail.data.splits import TRAIN
    from longtail.nas.distill import teacher_logits
    from longtail.nas.strategies import transfer_batch

    data, scen, teacher = setup
    others = data.rows(TRAIN)
    others = others[others[data.spec.scenario].astype(str) != scen]
    t = transfer_batch(teacher.model, rows_of(setup), n_rows=50, seed=0)
    assert len(t) == 50
    # only other scenarios' rows; labels are θu's probabilities, not the rows' own outcomes
    own_index = teacher.transforms.scenarios.index(scen) if scen in teacher.transforms.scenarios else -1
    assert (t.scenario != own_index).all()
    assert torch.allclose(t.label, torch.sigmoid(teacher_logits(teacher.model, t)))
    assert ((t.label > 0) & (t.label < 1)).all()
    # the same seed draws the same rows; a larger request is capped at what exists
    again = transfer_batch(teacher.model, rows_of(setup), n_rows=50, seed=0)
    assert torch.equal(again.profile_num, t.profile_num)
    assert len(transfer_batch(teacher.model, rows_of(setup), n_rows=10**9)) == len(others)
    assert transfer_batch(teacher.model, rows_of(setup), n_rows=0) is None


def test_strategies_train_on_the_transfer_set_and_stay_within_budget(setup):
    data, scen, teacher = setup
    cfg = light(transfer={"rows": 200}, mel={"transfer_rows": 200})
    mel = run_mel(teacher.model, rows_of((data, scen, teacher)), TEACHER, cfg)
    ours = run_ours(teacher.model, rows_of((data, scen, teacher)), TEACHER, cfg)
    assert mel.info["n_transfer"] == ours.info["n_transfer"] == 200
    assert 0 < ours.flops <= ours.budget == mel.flops
    assert math.isfinite(mel.auc) and math.isfinite(ours.auc)

def test_ours_can_keep_the_epoch_with_the_best_distillation_loss(setup, monkeypatch):
    """select_on="distill": the kept epoch is scored by Eq. 5 against θu on VALID rows (own and others')."""
    from longtail.data.tensors import Batch
    from longtail.nas import strategies
    from longtail.nas.distill import distill_loss, teacher_logits
    from longtail.nas.strategies import transfer_batch

    data, scen, teacher = setup
    scored, results = [], []
    real = strategies.train_light

    def spy(*a, **k):
        scored.append(k["valid_score"])
        out = real(*a, **k)
        results.append(out[1])
        return out

    monkeypatch.setattr(strategies, "train_light", spy)
    cfg = light(transfer={"rows": 200}, retrain={"select_on": "distill"},
                train=config_to_dict(dataclasses.replace(TINY_TRAIN, epochs=3, max_steps=0, patience=3)))
    ours = run_ours(teacher.model, rows_of((data, scen, teacher)), TEACHER, cfg)
    (score,), (result,) = scored, results
    assert ours.flops <= ours.budget and math.isfinite(ours.auc)
    history = [h["valid_score"] for h in result.history]
    assert len(history) == result.epochs_run > 1 and result.best_epoch == 1 + history.index(max(history))
    # the score is minus Eq. 5 on the scenario's VALID rows and 50 other VALID rows labelled by θu
    own = rows_of(setup).valid
    others = transfer_batch(teacher.model, rows_of(setup), 50, 0, split=VALID)
    assert len(others) == 50 and (others.scenario != own.scenario[0]).all()
    rows = Batch.concat([own, others])
    expected = distill_loss(teacher_logits(ours.model, rows), teacher_logits(teacher.model, rows), rows.label)
    assert score(ours.model, own) == pytest.approx(-float(expected), rel=1e-5)
    run_ours(teacher.model, rows_of((data, scen, teacher)), TEACHER, light(retrain={"select_on": "auc"}))
    assert scored[-1] is None  # fit's own AUC of VALID (the paper)
    with pytest.raises(ValueError, match="light.retrain.select_on: 'loss' is not one of"):
        light(retrain={"select_on": "loss"})


def test_ours_restarts_keep_the_run_with_the_best_valid_score(setup, monkeypatch):
    """restarts: a small scenario runs Ours several times with shifted seeds and keeps the best VALID score."""
    from longtail.nas import strategies

    data, scen, teacher = setup
    calls = []
    real = strategies.train_light

    def spy(genotypes, schema, config, train, valid, teacher_model, train_cfg, **k):
        out = real(genotypes, schema, config, train, valid, teacher_model, train_cfg, **k)
        calls.append({"seed": train_cfg.seed, "rows": train, "score": k["valid_score"], "model": out[0]})
        return out

    monkeypatch.setattr(strategies, "train_light", spy)
    n_train = len(data.rows(TRAIN, [scen]))
    cfg = light(transfer={"rows": 100}, retrain={"select_on": "distill"}, restarts={"runs": 3, "below_rows": n_train + 1})
    ours = run_ours(teacher.model, rows_of((data, scen, teacher)), TEACHER, cfg)
    assert [c["seed"] for c in calls] == [0, 1, 2]
    own = rows_of(setup).valid
    # one scorer (the same VALID rows) for every run; each run has its own transfer sample, the same own rows
    assert calls[0]["score"] is calls[1]["score"] is calls[2]["score"]
    scores = [c["score"](c["model"], own) for c in calls]
    assert ours.info["restarts"] == 3 and ours.info["restart_scores"] == pytest.approx(scores, rel=1e-6)
    kept = scores.index(max(scores))
    assert ours.info["restart_kept"] == kept and ours.model is calls[kept]["model"]
    first, second = (c["rows"] for c in calls[:2])
    assert torch.equal(first.label[:n_train], second.label[:n_train])
    assert not torch.equal(first.profile_num[n_train:], second.profile_num[n_train:])
    assert ours.flops <= ours.budget and math.isfinite(ours.auc)

    calls.clear()  # a scenario with as many TRAIN rows as the bound runs once
    once = run_ours(teacher.model, rows_of((data, scen, teacher)), TEACHER, dataclasses.replace(
        cfg, restarts=RestartConfig(runs=3, below_rows=n_train)))
    assert len(calls) == 1 and once.info["restarts"] == 1 and once.info["restart_scores"] == []
    with pytest.raises(ValueError, match="light.restarts.runs is 0"):
        light(restarts={"runs": 0})


# ---------------------------------------------------------------------- pooled pre-training (longtail.nas.pretrain)
PRE = dataclasses.replace(LIGHT, pretrain=PretrainConfig(epochs=1))


@pytest.fixture(scope="module")
def meh(synthetic_tables, tmp_path_factory):
    """A MeH-like run folder: θ0 in ``theta0_final`` and one θu in ``models/<scenario>``."""
    data = prepare(DataConfig(tables=str(synthetic_tables.root)))
    scen = data.scenarios[0]
    teacher = train_heavy(data, [scen], TEACHER, TINY_TRAIN)
    root = tmp_path_factory.mktemp("meh")
    save_model_dir(root / "theta0_final", teacher.model, teacher.transforms, TEACHER, {})
    save_model_dir(root / "models" / safe_name(scen), teacher.model, teacher.transforms, TEACHER, {})
    return data, scen, teacher, root


def test_pooled_rows_are_train_rows_of_every_scenario_and_capped(meh):
    data, _, teacher, _ = meh
    tf = teacher.transforms
    everything = pooled_batch(data, tf, TRAIN, 0, seed=0)
    assert len(everything) == len(data.rows(TRAIN)) and len(torch.unique(everything.scenario)) > 1
    some = pooled_batch(data, tf, TRAIN, 50, seed=0)
    assert len(some) == 50 and torch.equal(some.label, pooled_batch(data, tf, TRAIN, 50, seed=0).label)
    assert len(pooled_batch(data, tf, VALID, 0, seed=0)) == len(data.rows(VALID))
    with pytest.raises(ValueError, match="no x rows"):
        pooled_batch(dataclasses.replace(data, split=data.split.copy()), tf, "x", 0, seed=0)
    assert len(data.rows(TEST))  # test rows exist and are never drawn: only the named split is read


def test_pretraining_is_cached_under_a_key_of_its_settings(meh, tmp_path, monkeypatch):
    data, _, _, root = meh
    cache = tmp_path / "pre"
    lines: list[str] = []
    state, path = pretrained_supernet(root / "theta0_final", data, PRE, cache, log=lines.append)
    assert path.exists() and path.parent.parent == cache
    assert any("step 3/3" in line for line in lines)  # progress of the search
    facts = json.loads((path.parent / "facts.json").read_text())
    assert facts["n_train"] == len(data.rows(TRAIN)) and facts["steps"] == 3 and facts["budget"] > 0
    fresh = build_supernet_model(meh[2].transforms.schema, TEACHER, PRE.space)
    fresh.load_state_dict(state)  # a whole supernet, alphas included
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in arch_parameters(fresh))

    def no_search(*args, **kwargs):
        raise AssertionError("a cached pre-training was searched again")

    monkeypatch.setattr(pretrain_mod, "pretrain_supernet", no_search)
    again, same = pretrained_supernet(root / "theta0_final", data, PRE, cache)
    assert same == path and all(torch.equal(again[k], state[k]) for k in state)
    # another setting is another key: it is not served the first one's file
    with pytest.raises(AssertionError, match="searched again"):
        pretrained_supernet(root / "theta0_final", data, dataclasses.replace(PRE, distill=DistillConfig(delta=0.0)), cache)


def test_missing_theta0_or_zero_epochs_name_the_fix(meh, tmp_path):
    data, _, _, root = meh
    with pytest.raises(FileNotFoundError, match="theta0_final.*pretrain.epochs: 0"):
        theta0_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no θ0 model folder.*pretrain.epochs: 0"):
        pretrained_supernet(tmp_path, data, PRE, None)
    with pytest.raises(ValueError, match="pretrain.epochs is 0"):
        pretrained_supernet(root / "theta0_final", data, dataclasses.replace(PRE, pretrain=PretrainConfig(epochs=0)),
                            None)


def test_ours_from_the_pretrained_supernet_stays_within_budget(meh):
    data, scen, teacher, root = meh
    state, path = pretrained_supernet(root / "theta0_final", data, PRE, None)
    assert path is None
    ours = run_ours(teacher.model, rows_of((data, scen, teacher)), TEACHER, PRE, pretrained=state)
    assert ours.info["pretrained"] and 0 < ours.flops <= ours.budget
    assert math.isfinite(ours.auc)
    plain = run_ours(teacher.model, rows_of((data, scen, teacher)), TEACHER,
                     dataclasses.replace(PRE, pretrain=PretrainConfig(epochs=0)))
    assert not plain.info["pretrained"]
    with pytest.raises(ValueError, match="pretrain.epochs is 1 but no pre-trained supernet"):
        run_ours(teacher.model, rows_of((data, scen, teacher)), TEACHER, PRE)


def test_light_job_pretrains_once_into_the_job_folder(meh, synthetic_tables, tmp_path):
    data, scen, teacher, root = meh
    meh_folder(root, data, scen, teacher, synthetic_tables.root)
    table = run_light_job(LightJobConfig(meh_out=str(root), recipe=Recipe(light=PRE), references=(),
                                         out=str(tmp_path / "light")))
    assert list(table["scenario"]) == [scen] and (table["flops_ours"] <= table["budget"]).all()
    (file,) = (tmp_path / "light" / "pretrain").glob("*/supernet.pt")
    assert json.loads((file.parent / "facts.json").read_text())["theta0"] == str(root / "theta0_final")


def test_fit_keeps_the_starting_weights_when_no_epoch_beats_them(meh):
    data, scen, teacher, _ = meh
    tf = teacher.transforms
    train, valid = tf.transform(data.rows(TRAIN, [scen])), tf.transform(data.rows(VALID, [scen]))
    model = build_model(tf.schema, TEACHER)
    model.load_state_dict(teacher.model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, train, valid, dataclasses.replace(TINY_TRAIN, lr=0.0, epochs=2), score_initial=True)
    # lr 0: no epoch is better than the start, which is kept and recorded as epoch 0
    assert result.best_epoch == 0 and result.history[0]["epoch"] == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    plain = fit(model, train, valid, dataclasses.replace(TINY_TRAIN, lr=0.0, epochs=2))
    assert plain.best_epoch == 1
