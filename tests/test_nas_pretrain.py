"""Pooled pre-training of the light supernet (longtail.nas.pretrain) and Ours started from it."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from longtail.data.splits import TEST, TRAIN, VALID
from longtail.experiment import DataConfig, prepare, safe_name, save_model_dir, train_heavy
from longtail.models.heavy import HeavyConfig, build_model
from longtail.nas import SearchConfig, SearchSpace
from longtail.nas import pretrain as pretrain_mod
from longtail.nas.pretrain import pooled_batch, pretrained_supernet, theta0_dir
from longtail.nas.strategies import LightConfig, run_light_for_scenarios, run_ours
from longtail.nas.supernet import arch_parameters, build_supernet_model
from longtail.train import TrainConfig, fit

pytestmark = pytest.mark.model

TEACHER = HeavyConfig(encoder="lstm", num_layers=4, hidden_size=6, num_heads=2, profile_dims=(8,), head_dims=(8,),
                      dropout=0.0, cat_embedding_dim=3)
TINY_TRAIN = TrainConfig(epochs=1, batch_size=128, device="cpu", seed=0, max_steps=4)
LIGHT = LightConfig(space=SearchSpace(num_layers=3, hidden_size=6, num_heads=2),
                    search=SearchConfig(batch_size=128, max_steps=3, epochs=1), train=TINY_TRAIN,
                    latency_repeats=3, pretrain_epochs=1)


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
    state, path = pretrained_supernet(root / "theta0_final", data, LIGHT, cache, log=lines.append)
    assert path.exists() and path.parent.parent == cache
    assert any("step 3/3" in line for line in lines)  # progress of the search
    facts = json.loads((path.parent / "facts.json").read_text())
    assert facts["n_train"] == len(data.rows(TRAIN)) and facts["steps"] == 3 and facts["budget"] > 0
    fresh = build_supernet_model(meh[2].transforms.schema, TEACHER, LIGHT.space)
    fresh.load_state_dict(state)  # a whole supernet, alphas included
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in arch_parameters(fresh))

    def no_search(*args, **kwargs):
        raise AssertionError("a cached pre-training was searched again")

    monkeypatch.setattr(pretrain_mod, "pretrain_supernet", no_search)
    again, same = pretrained_supernet(root / "theta0_final", data, LIGHT, cache)
    assert same == path and all(torch.equal(again[k], state[k]) for k in state)
    # another setting is another key: it is not served the first one's file
    with pytest.raises(AssertionError, match="searched again"):
        pretrained_supernet(root / "theta0_final", data, dataclasses.replace(LIGHT, delta=0.0), cache)


def test_missing_theta0_or_zero_epochs_name_the_fix(meh, tmp_path):
    data, _, _, root = meh
    with pytest.raises(FileNotFoundError, match="theta0_final.*pretrain_epochs: 0"):
        theta0_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no θ0 model folder.*pretrain_epochs: 0"):
        pretrained_supernet(tmp_path, data, LIGHT, None)
    with pytest.raises(ValueError, match="pretrain_epochs is 0"):
        pretrained_supernet(root / "theta0_final", data, dataclasses.replace(LIGHT, pretrain_epochs=0), None)


def test_ours_from_the_pretrained_supernet_stays_within_budget(meh):
    data, scen, teacher, root = meh
    state, path = pretrained_supernet(root / "theta0_final", data, LIGHT, None)
    assert path is None
    ours = run_ours(teacher.model, teacher.transforms, data, scen, TEACHER, LIGHT, pretrained=state)
    assert ours.info["pretrained"] and 0 < ours.flops <= ours.budget
    assert math.isfinite(ours.auc)
    plain = run_ours(teacher.model, teacher.transforms, data, scen, TEACHER,
                     dataclasses.replace(LIGHT, pretrain_epochs=0))
    assert not plain.info["pretrained"]
    with pytest.raises(ValueError, match="pretrain_epochs is 1 but no pre-trained supernet"):
        run_ours(teacher.model, teacher.transforms, data, scen, TEACHER, LIGHT)


def test_runner_pretrains_once_into_the_job_folder(meh, tmp_path):
    data, scen, _, root = meh
    table = run_light_for_scenarios(root, data, LIGHT, out=tmp_path / "light")
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
