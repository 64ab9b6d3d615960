"""Heavy-model NAS and the choice of θ0 between the HPO-tuned and the NAS-found heavy model."""

from __future__ import annotations

import json

import pytest
import torch

from longtail.agnostic import (
    AgnosticJobConfig,
    HPOCandidateConfig,
    choose_theta0,
    initial_scenarios,
    save_chosen,
)
from longtail.data.prepared import DataConfig, prepare
from longtail.hpo.runner import Budget, MedianStopping
from longtail.model_folder import load_model_dir
from longtail.models.flops import count_flops
from longtail.models.heavy import HeavyConfig
from longtail.models.light import SearchedEncoder
from longtail.nas import ArchSpace, InfeasibleBudgetError, SearchConfig
from longtail.nas.heavy import HeavySearchConfig, search_heavy
from longtail.train import TrainConfig
from longtail.train_job import train_heavy

pytestmark = pytest.mark.model

BASE = HeavyConfig(encoder="lstm", num_layers=1, hidden_size=6, num_heads=2, profile_dims=(8,), head_dims=(8,),
                   cat_embedding_dim=3)
TINY_TRAIN = TrainConfig(epochs=1, batch_size=256, max_steps=4, device="cpu")
TINY_NAS = HeavySearchConfig(space=ArchSpace(num_layers=2, hidden_size=6, num_heads=2),
                             search=SearchConfig(batch_size=256, max_steps=3, epochs=1), device="cpu")


@pytest.fixture(scope="module")
def data(synthetic_tables):
    return prepare(DataConfig(tables=str(synthetic_tables.root)))


def test_searched_heavy_config_builds_trains_and_reloads(data, tmp_path):
    scen = initial_scenarios(data, 3, seed=0)
    found = search_heavy(data, scen, BASE, TINY_NAS)
    assert found.config.encoder == "searched" and 1 <= found.info["search_steps"] <= 3
    assert set(found.config.sequence_overrides) == {s.name for s in data.spec.sequences}
    assert found.flops <= found.budget
    trained = train_heavy(data, scen, found.config, TINY_TRAIN, tmp_path / "m")
    encoders = [m.encoder for m in trained.model.behavior_encoders.values()]
    assert all(isinstance(e, SearchedEncoder) for e in encoders)
    assert count_flops(trained.model)["total"] == found.flops  # the derivation's FLOPs are the model's
    model, transforms, info = load_model_dir(tmp_path / "m")  # a plain heavy folder: config names the genotypes
    batch = transforms.transform(data.rows("test", scen))
    model.eval(), trained.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch), trained.model(batch))


def test_a_loose_bound_is_respected(data):
    scen = initial_scenarios(data, 3, seed=0)
    free = search_heavy(data, scen, BASE, TINY_NAS)
    tight = HeavySearchConfig(space=TINY_NAS.space, search=TINY_NAS.search, budget_flops=free.flops - 1,
                              device="cpu")
    try:
        bounded = search_heavy(data, scen, BASE, tight)
    except InfeasibleBudgetError as e:  # the free architecture may already be the cheapest one
        assert "budget" in str(e)
    else:
        assert bounded.flops <= free.flops - 1


def test_choose_theta0_builds_both_scores_them_on_the_same_rows_and_publishes_both(synthetic_tables, data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("hyperparameters:\n  - {name: train.lr, values: [0.01, 0.003]}\n")
    cfg = AgnosticJobConfig(
        data=DataConfig(tables=str(synthetic_tables.root)), n_initial=3, model=BASE, train=TINY_TRAIN,
        hpo=HPOCandidateConfig(space=str(space), algorithm="random", trial={"train.max_steps": 3},
                               budget=Budget(max_trials=2, trial_seconds=300),
                               early_stopping=MedianStopping(enabled=False)),
        nas=TINY_NAS, out=str(tmp_path / "theta0"), registry=str(tmp_path / "registry"))
    lines: list[str] = []
    choice = choose_theta0(cfg, data, log=lines.append)
    assert set(choice.candidates) == {"hpo", "nas"} and choice.scenarios == initial_scenarios(data, 3, 0)
    aucs = {k: v["valid_auc"] for k, v in choice.candidates.items()}
    assert choice.chosen == max(aucs, key=aucs.get)
    assert choice.candidates["hpo"]["hpo_trials"] == 2
    assert choice.candidates["nas"]["config"]["encoder"] == "searched"
    # both candidates were scored on the same validation rows: the rows their folders record
    valid_rows = {json.loads((tmp_path / "theta0" / "candidates" / k / "model.json").read_text())["valid_rows"]
                  for k in aucs}
    assert len(valid_rows) == 1
    saved = json.loads((tmp_path / "theta0" / "choice.json").read_text())
    assert saved["chosen"] == choice.chosen and saved["model_dir"] == choice.model_dir
    from longtail.registry import open_registry

    reg = open_registry(str(tmp_path / "registry"))
    names = {r["name"]: r for r in choice.published}
    assert set(names) == {f"{data.spec.name}.theta0-hpo", f"{data.spec.name}.theta0-nas"}
    for r in choice.published:
        m = reg.get(r["name"], r["version"])
        assert m.kind == "agnostic" and m.metrics["chosen"] == (r["candidate"] == choice.chosen)
        assert m.metrics["valid_auc"] == pytest.approx(aucs[r["candidate"]])
    dest = save_chosen(choice, tmp_path / "theta0_model")
    model, transforms, _ = load_model_dir(dest)
    assert count_flops(model)["total"] == choice.candidates[choice.chosen]["flops"]


def test_bad_candidate_names_are_refused():
    with pytest.raises(ValueError, match="candidates"):
        AgnosticJobConfig(candidates=("hpo", "grid"))


def test_searched_encoder_default_chain_builds():
    from longtail.models.registry import create_encoder

    model = create_encoder("searched", input_size=4, hidden_size=6, num_layers=2, num_heads=2)
    assert model.output_size == 6 and len(model.layers) == 2


def test_cli_theta0_choose_and_nas_heavy(synthetic_tables, tmp_path):
    from longtail.cli import main
    from longtail.config import save_config

    cfg = AgnosticJobConfig(n_initial=3, model=BASE, train=TINY_TRAIN, nas=TINY_NAS, candidates=("nas",))
    save_config(cfg, tmp_path / "job.yaml")
    rc = main(["nas", "heavy", "--data", str(synthetic_tables.root), "--out", str(tmp_path / "job"),
               "--config", str(tmp_path / "job.yaml")])
    assert rc == 0
    choice = json.loads((tmp_path / "job" / "choice.json").read_text())
    assert choice["chosen"] == "nas" and choice["candidates"]["nas"]["config"]["encoder"] == "searched"
    assert main(["theta0", "choose", "--data", str(synthetic_tables.root), "--out", str(tmp_path / "bad"),
                 "--config", str(tmp_path / "job.yaml"), "--set", "candidates=grid"]) == 2
