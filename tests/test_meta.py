"""Meta-learning of θ0: exact Eq. 2 updates, second order, the conservative and staleness rules,
idempotence and concurrency of the θ0 store, meta-train refresh, and MeH helping tiny scenarios."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing

import numpy as np
import pandas as pd
import pytest
import torch

from longtail.config import config_from_dict, config_to_dict
from longtail.data.prepared import DataConfig, PreparedData, prepare
from longtail.data.scenario_rows import ScenarioRows
from longtail.data.splits import TEST
from longtail.data.tensors import Batch
from longtail.meta.finetune import (
    MetaConfig,
    create_theta0_store,
    one_step_meta_gradient,
    refresh_theta0,
    specialise,
)
from longtail.meta.server import Theta0Server
from longtail.meta.update import MetaUpdate, UpdateRule, apply_steps, make_update_id, param_norm
from longtail.models.heavy import HeavyConfig, build_model
from longtail.onboarding import Recipe
from longtail.onboarding.parallel import onboard_many
from longtail.onboarding.protocol import run_meh, run_sinh
from longtail.train import TrainConfig, bce_loss
from longtail.train_job import evaluate_heavy, train_heavy

SMALL = HeavyConfig(encoder="lstm", num_layers=1, hidden_size=8)
FT = TrainConfig(epochs=2, batch_size=64, device="cpu", patience=2)


@pytest.fixture(scope="module")
def data(synthetic_tables):
    return prepare(DataConfig(tables=str(synthetic_tables.root)))


@pytest.fixture(scope="module")
def theta0(data):
    """θ0 on all scenarios' training rows: (model, transforms)."""
    tr = train_heavy(data, data.scenarios, SMALL, TrainConfig(epochs=3, batch_size=128, device="cpu", seed=0))
    return tr.model.eval(), tr.transforms


def _rows(data, scen, transforms, cfg: MetaConfig) -> ScenarioRows:
    return ScenarioRows.build(data, scen, transforms, query_frac=cfg.query_frac, seed=cfg.seed)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(4, generator=g), "steps": torch.tensor(0)}


def _grad(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(4, generator=g)}


# ---------------------------------------------------------------------- config and ids
@pytest.mark.unit
def test_meta_config_validates_and_round_trips():
    cfg = MetaConfig(update=UpdateRule(eta=1e-3), inner="one_step", second_order=True, gamma=0.1)
    assert config_from_dict(MetaConfig, config_to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="one inner SGD step"):
        MetaConfig(second_order=True)
    with pytest.raises(ValueError, match="staleness_decay"):
        UpdateRule(staleness_decay=0.0)
    a, b = make_update_id("Delta Air/Lines", 3), make_update_id("Delta Air_Lines", 3)
    assert a != b and a == make_update_id("Delta Air/Lines", 3) and a.endswith("@v3")
    MetaUpdate(a, "Delta Air/Lines", 3, {})  # a valid id


# ---------------------------------------------------------------------- Eq. 1 / 2
@pytest.mark.unit
def test_first_order_update_is_eta_times_query_gradient_at_theta_u(data, theta0, tmp_path):
    model, transforms = theta0
    scen = data.scenarios[-2]
    cfg = MetaConfig(finetune=FT)
    res = specialise(_state(model), SMALL, _rows(data, scen, transforms, cfg), cfg)
    old = _state(model)
    assert any(not torch.equal(res.theta_u[k], old[k]) for k in old), "fine-tuning did not move θu"

    # independent reference: the mean query BCE of θu, differentiated by autograd
    sets = _rows(data, scen, transforms, cfg)
    theta_u = res.build_model(transforms, SMALL)
    params = dict(theta_u.named_parameters())
    ref = torch.autograd.grad(bce_loss(theta_u(sets.query), sets.query.label), list(params.values()))
    assert set(res.query_gradient) == set(params)
    for (k, _), r in zip(params.items(), ref, strict=True):
        torch.testing.assert_close(res.query_gradient[k], r, rtol=1e-5, atol=1e-7)
    assert param_norm(res.query_gradient) > 0

    eta = 0.05
    rule = UpdateRule(eta=eta, max_update_frac=0)
    store = create_theta0_store(tmp_path / "s", model, transforms, SMALL, rule, data.scenarios)
    rec = store.submit(res.to_update())
    assert (rec["status"], rec["staleness"], rec["scale"], rec["produced"]) == ("applied", 0, 1.0, 1)
    version, new = store.load()
    assert version == 1
    for k in old:
        expected = old[k] - eta * res.query_gradient[k] if k in res.query_gradient else old[k]
        assert torch.equal(new[k], expected), k


def _double(b: Batch) -> Batch:
    return dataclasses.replace(
        b, profile_num=b.profile_num.double(), label=b.label.double(),
        seq_num={k: v.double() for k, v in b.seq_num.items()})


@pytest.mark.unit
def test_second_order_matches_finite_differences(data, theta0):
    model, transforms = theta0
    sets = _rows(data, data.scenarios[-3], transforms, MetaConfig())
    support, query = _double(sets.support), _double(sets.query)
    m = build_model(transforms.schema, SMALL)
    m.load_state_dict(model.state_dict())
    m = m.double().eval()
    gamma = 0.5
    g2, _, _ = one_step_meta_gradient(m, support, query, gamma, second_order=True)
    g1, _, _ = one_step_meta_gradient(m, support, query, gamma, second_order=False)
    theta = {k: p.detach().clone() for k, p in m.named_parameters()}

    def meta_loss(th: dict[str, torch.Tensor]) -> float:
        # L_q(θ − γ ∇L_s(θ)), with plain autograd on a module copy
        with torch.no_grad():
            for k, p in m.named_parameters():
                p.copy_(th[k])
        loss_s = bce_loss(m(support), support.label)
        grads = torch.autograd.grad(loss_s, list(m.parameters()), allow_unused=True)
        with torch.no_grad():
            for (k, p), g in zip(m.named_parameters(), grads, strict=True):
                p.copy_(th[k] - gamma * g if g is not None else th[k])
            return float(bce_loss(m(query), query.label))

    gen = torch.Generator().manual_seed(0)
    eps = 1e-6  # central differences in float64: truncation O(eps²), rounding O(1e-16 / eps)
    for _ in range(3):
        v = {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in theta.items()}
        fd = (meta_loss({k: theta[k] + eps * v[k] for k in theta})
              - meta_loss({k: theta[k] - eps * v[k] for k in theta})) / (2 * eps)
        so = sum(float((g2[k] * v[k]).sum()) for k in theta)
        fo = sum(float((g1[k] * v[k]).sum()) for k in theta)
        assert so == pytest.approx(fd, rel=1e-6, abs=1e-9)
        assert abs(fo - fd) > 100 * abs(so - fd)  # the Hessian term matters: first order is not the reference


# ---------------------------------------------------------------------- the conservative rule
def _with_huge_shifted_scenario(data: PreparedData, copies: int = 3) -> PreparedData:
    """The largest scenario's rows ``copies`` times, labels flipped: a huge scenario opposite to all."""
    spec = data.spec
    big = data.frame[data.frame[spec.scenario].astype(str) == data.scenarios[0]]
    split = data.split[(data.frame[spec.scenario].astype(str) == data.scenarios[0]).to_numpy()]
    parts, splits = [data.frame], [data.split]
    for _ in range(copies):
        part = big.copy()
        part[spec.scenario] = "huge"
        part[spec.label] = 1 - part[spec.label]
        parts.append(part)
        splits.append(split)
    return PreparedData(spec, pd.concat(parts, ignore_index=True), np.concatenate(splits))


def _mean_auc(model, transforms, data, scenarios) -> float:
    return float(evaluate_heavy(model, transforms, data, scenarios)["auc"].mean())


@pytest.mark.model
def test_huge_shifted_scenario_cannot_dominate_theta0(data, theta0, tmp_path):
    model, transforms = theta0
    shifted = _with_huge_shifted_scenario(data)
    assert len(shifted.rows("train", ["huge"])) > 2 * len(data.rows("train", data.scenarios[1:]))
    rho, eta = 0.01, 50.0  # a reckless η: the trust region alone must hold θ0
    cfg = MetaConfig(finetune=dataclasses.replace(FT, epochs=1, batch_size=512))
    res = specialise(_state(model), SMALL, _rows(shifted, "huge", transforms, cfg), cfg)
    store = create_theta0_store(tmp_path / "s", model, transforms, SMALL,
                                UpdateRule(eta=eta, max_update_frac=rho), data.scenarios)
    before = _state(model)
    rec = store.submit(res.to_update())
    _, after = store.load()
    names = list(res.query_gradient)
    moved = param_norm({k: after[k] - before[k] for k in names}) / param_norm(before, names)
    assert rec["scale"] < 1 and moved <= rho * (1 + 1e-4), (rec, moved)

    others = data.scenarios
    auc_before = _mean_auc(model, transforms, data, others)
    probe = res.build_model(transforms, SMALL)  # any module of the architecture
    probe.load_state_dict(after)
    auc_after = _mean_auc(probe, transforms, data, others)
    assert auc_after > auc_before - 0.02, (auc_before, auc_after)

    # the same feedback without the trust region does collapse θ0: the bound is what holds
    probe.load_state_dict(apply_steps(before, [(eta, res.query_gradient)]))
    assert _mean_auc(probe, transforms, data, others) < auc_before - 0.1

    # Eq. 3 with the huge scenario among tiny ones: its share of the summed step is bounded alike
    small = specialise(before, SMALL, _rows(data, data.scenarios[-1], transforms, cfg), cfg, base_version=1)
    recs = store.apply_batch([small.to_update(), res.to_update()])
    assert recs[0]["step_norm"] <= rho * recs[0]["theta_norm"] * (1 + 1e-9)
    assert recs[1]["status"] == "duplicate"


# ---------------------------------------------------------------------- idempotence and staleness
@pytest.mark.unit
def test_replayed_update_applies_once(tmp_path):
    store = Theta0Server.create(tmp_path / "s", _tiny_state(), UpdateRule(eta=0.1, max_update_frac=0))
    upd = MetaUpdate("a@v0", "a", 0, _grad(0))
    first = store.submit(upd)
    _, w1 = store.load()
    again = store.submit(upd)
    b = MetaUpdate("b@v1", "b", 1, _grad(1))
    batch = store.apply_batch([upd, b, b])
    ledger = store.ledger()
    assert first["status"] == "applied" and again["status"] == "duplicate" and again["original"] == first
    assert [r["status"] for r in batch] == ["duplicate", "applied", "duplicate"]
    assert [u["id"] for u in ledger["updates"]] == ["a@v0", "b@v1"]
    assert [r["id"] for r in ledger["replays"]] == ["a@v0", "a@v0", "b@v1"]
    assert ledger["current"] == 2
    _, w2 = store.load(2)
    assert torch.equal(w2["w"], w1["w"] - 0.1 * _grad(1)["w"])
    assert store.scenarios_seen() == ["a", "b"]


@pytest.mark.unit
def test_stale_updates_are_rebased_or_dropped_by_the_rule(tmp_path):
    rule = UpdateRule(eta=0.1, max_update_frac=0, staleness_decay=0.5, max_staleness=2)
    store = Theta0Server.create(tmp_path / "s", _tiny_state(), rule)
    _, w0 = store.load()
    store.submit(MetaUpdate("u0", "a", 0, _grad(0)))  # v1
    stale1 = store.submit(MetaUpdate("u1", "b", 0, _grad(1)))  # staleness 1 -> v2
    stale2 = store.submit(MetaUpdate("u2", "c", 0, _grad(2)))  # staleness 2 -> v3
    dropped = store.submit(MetaUpdate("u3", "d", 0, _grad(3)))  # staleness 3 > 2: dropped
    assert (stale1["staleness"], stale1["eta_eff"]) == (1, pytest.approx(0.05))
    assert (stale2["staleness"], stale2["eta_eff"]) == (2, pytest.approx(0.025))
    assert dropped["status"] == "dropped" and dropped["produced"] is None
    assert "max_staleness" in dropped["reason"]
    expect = dict(w0)
    for i, s in enumerate([0, 1, 2]):
        expect = apply_steps(expect, [(0.1 * 0.5**s, _grad(i))])
    version, w = store.load()
    assert version == 3
    for k in w0:
        assert torch.equal(w[k], expect[k]), k
    ledger = store.ledger()
    assert [(u["id"], u["status"]) for u in ledger["updates"]] == [
        ("u0", "applied"), ("u1", "applied"), ("u2", "applied"), ("u3", "dropped")]
    # a non-finite gradient is dropped too, never applied; a base version from the future is an error
    bad = {"w": torch.full((4, 3), float("nan")), "b": torch.zeros(4)}
    assert store.submit(MetaUpdate("nan", "e", 3, bad))["reason"] == "non-finite gradient"
    with pytest.raises(ValueError, match="newer than the current"):
        store.submit(MetaUpdate("future", "f", 9, _grad(0)))
    # Eq. 3: two fresh updates, one summed step, one version
    recs = store.apply_batch([MetaUpdate("x", "x", 3, _grad(5)), MetaUpdate("y", "y", 3, _grad(6))])
    assert {r["produced"] for r in recs} == {4} and store.ledger()["versions"][-1]["kind"] == "batch"
    _, w4 = store.load()
    assert torch.equal(w4["w"], (w["w"] - 0.1 * _grad(5)["w"]) - 0.1 * _grad(6)["w"])


# ---------------------------------------------------------------------- concurrency
def _submitter(root: str, worker: int, n: int, barrier) -> None:
    server = Theta0Server(root)
    barrier.wait()  # every worker starts submitting at the same moment
    for j in range(n):
        base = server.current_version  # the version this worker "computed against"
        server.submit(MetaUpdate(f"w{worker}-{j}", f"s{worker}", base, _grad(worker * 100 + j)))


@pytest.mark.integration
def test_concurrent_workers_each_update_lands_once(tmp_path):
    rule = UpdateRule(eta=0.1, max_update_frac=0, staleness_decay=0.5, max_staleness=2)
    store = Theta0Server.create(tmp_path / "s", _tiny_state(), rule)
    _, w0 = store.load()
    n_workers, n_each = 4, 10
    # fork, not spawn: separate processes that need not import torch again (they only touch tiny
    # tensors, never a parallel region); onboard_many's spawned pool is tested below
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(n_workers)
    procs = [ctx.Process(target=_submitter, args=(str(store.root), i, n_each, barrier))
             for i in range(n_workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * n_workers

    ledger = store.ledger()
    submitted = {f"w{i}-{j}" for i in range(n_workers) for j in range(n_each)}
    ids = [u["id"] for u in ledger["updates"]]
    assert sorted(ids) == sorted(submitted)  # every update exactly once: none lost, none twice
    applied = [u for u in ledger["updates"] if u["status"] == "applied"]
    assert ledger["current"] == len(applied) == len(ledger["versions"]) - 1
    assert [u["produced"] for u in applied] == list(range(1, len(applied) + 1))
    for u in ledger["updates"]:
        assert u["staleness"] == u["applied_to"] - u["base_version"] >= 0
        assert (u["status"] == "dropped") == (u["staleness"] > rule.max_staleness)

    # replay the ledger in its order from v0: the same weights, version by version
    theta = dict(w0)
    for u in applied:
        worker, j = (int(x) for x in u["id"][1:].split("-"))
        grad = _grad(worker * 100 + j)
        assert torch.equal(store.gradient(u["id"])["w"], grad["w"])
        theta = apply_steps(theta, [(rule.eta * rule.staleness_decay ** u["staleness"], grad)])
        _, stored = store.load(u["produced"])
        assert all(torch.equal(theta[k], stored[k]) for k in theta), u["id"]


@pytest.mark.model
@pytest.mark.integration
def test_onboard_many_async_workers_and_sync_batch(data, theta0, tmp_path):
    model, transforms = theta0
    recipe = Recipe(model=SMALL, meta=MetaConfig(finetune=FT))
    store = create_theta0_store(tmp_path / "s", model, transforms, SMALL, UpdateRule(max_staleness=10),
                                data.scenarios[:3])
    scen = data.scenarios[2:]
    results = [r.specialised for r in onboard_many(store, data, scen, recipe, workers=2, mode="async")]
    ledger = store.ledger()
    assert sorted(r.scenario for r in results) == sorted(scen)
    assert sorted(u["id"] for u in ledger["updates"]) == sorted(r.update_id for r in results)
    assert all(r.record["status"] == "applied" for r in results) and ledger["current"] == len(scen)
    assert all(r.metrics["test_auc"] is not None or r.metrics["n_test"] < 2 for r in results)

    sync = [r.specialised for r in onboard_many(store, data, data.scenarios[:2], recipe, workers=0, mode="sync")]
    assert {r.base_version for r in sync} == {len(scen)}
    assert {r.record["produced"] for r in sync} == {len(scen) + 1}
    assert store.ledger()["versions"][-1]["kind"] == "batch"
    assert set(store.scenarios_seen()) == set(data.scenarios)


# ---------------------------------------------------------------------- meta-train
@pytest.mark.model
def test_meta_train_refresh_is_a_new_version_and_keeps_feedback(data, theta0, tmp_path):
    model, transforms = theta0
    store = create_theta0_store(tmp_path / "s", model, transforms, SMALL, UpdateRule(max_update_frac=0),
                                data.scenarios[:2])
    cfg = MetaConfig(finetune=FT)
    res = specialise(_state(model), SMALL, _rows(data, data.scenarios[-1], transforms, cfg), cfg)
    _, w0 = store.load()
    # a refresh that started from v0 commits after the feedback made v1: the feedback is kept
    refreshed = {k: v + 0.01 for k, v in w0.items()}
    store.submit(res.to_update())
    _, w1 = store.load()
    rec = store.commit_refresh(refreshed, 0, scenarios=["x"])
    _, w2 = store.load()
    assert rec["version"] == 2 and rec["base_version"] == 0
    for k in w0:
        torch.testing.assert_close(w2[k], refreshed[k] + (w1[k] - w0[k]))

    out = refresh_theta0(store, data, TrainConfig(epochs=1, batch_size=256, device="cpu"))
    assert out["version"] == 3 and out["kind"] == "meta_train" and out["train"]["best_valid_auc"] > 0.5
    assert set(out["scenarios"]) == {*data.scenarios[:2], data.scenarios[-1]}  # "x" has no rows here
    assert json.loads((store.root / "versions" / "000003" / "version.json").read_text())["version"] == 3


# ---------------------------------------------------------------------- strategies
@pytest.mark.model
def test_meh_beats_sinh_on_the_smallest_scenarios(data, tmp_path):
    train = TrainConfig(epochs=6, batch_size=64, device="cpu", patience=3, seed=0)
    meta = MetaConfig(finetune=TrainConfig(epochs=3, batch_size=64, device="cpu"), n_initial=4, seed=0)
    smallest = data.scenarios[-3:]
    sinh = run_sinh(data, SMALL, train, scenarios=smallest)
    meh = run_meh(data, Recipe(model=SMALL, train=train, meta=meta), out=tmp_path / "meh")
    t = meh.table.set_index("scenario")
    assert len(meh.info["initial"]) == 4 and sorted(t.index) == sorted(data.scenarios)
    assert list(meh.table["scenario"]) == meh.info["arrival"]  # onboarded in arrival order
    assert list(meh.table["base_version"]) == list(range(len(data.scenarios)))
    assert (meh.table["status"] == "applied").all()
    assert meh.info["final_theta0_version"] == len(data.scenarios)
    assert list(t.loc[smallest, "n_test"]) == [len(data.rows(TEST, [s])) for s in smallest]
    sinh_auc = float(sinh.table.set_index("scenario").loc[smallest, "auc"].mean())
    meh_auc = float(t.loc[smallest, "auc"].mean())
    assert not math.isnan(sinh_auc) and meh_auc >= sinh_auc, (meh_auc, sinh_auc)
    assert meh.timings["per_scenario"] and all(s > 0 for s in meh.timings["per_scenario"].values())
    assert (tmp_path / "meh" / "per_scenario.csv").exists()
    assert json.loads((tmp_path / "meh" / "metrics.json").read_text())["strategy"] == "MeH"
