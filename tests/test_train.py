"""Training: learns, deterministic under a seed, resumes an interrupted run exactly, fails loudly."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from longtail.data.prepared import DataConfig, prepare
from longtail.data.splits import TRAIN, VALID
from longtail.metrics import auc, per_scenario_auc, predict_proba
from longtail.model_folder import load_model_dir
from longtail.models.heavy import HeavyConfig
from longtail.train import CKPT, TrainConfig, fit, resolve_device
from longtail.train_job import checkpoint_dir, train_heavy

pytestmark = pytest.mark.model

SMALL = HeavyConfig(encoder="lstm", num_layers=1, hidden_size=8)


@pytest.fixture(scope="module")
def data(synthetic_tables):
    return prepare(DataConfig(tables=str(synthetic_tables.root)))


def _cfg(**kw):
    return TrainConfig(**{"epochs": 3, "batch_size": 128, "seed": 0, "device": "cpu", **kw})


def test_learns_planted_signal(data):
    tr = train_heavy(data, data.scenarios, SMALL, _cfg(epochs=6, patience=6))
    assert tr.result.best_valid_auc > 0.75
    hist = [h["train_loss"] for h in tr.result.history]
    assert hist[-1] < hist[0]


def test_deterministic_under_seed(data):
    a = train_heavy(data, data.scenarios, SMALL, _cfg(epochs=2))
    b = train_heavy(data, data.scenarios, SMALL, _cfg(epochs=2))
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_resume_continues_exactly(data, tmp_path, monkeypatch):
    full = train_heavy(data, data.scenarios, SMALL, _cfg(epochs=3, patience=5))
    # interrupt after the second epoch: the on_epoch hook raises, as a killed process would stop
    from longtail import train_job as experiment

    calls = {"n": 0}
    real_fit = experiment.fit

    def interrupted_fit(*a, **k):
        def hook(rec):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt

        return real_fit(*a, **{**k, "on_epoch": hook})

    monkeypatch.setattr(experiment, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        train_heavy(data, data.scenarios, SMALL, _cfg(epochs=3, patience=5), tmp_path / "m")
    monkeypatch.setattr(experiment, "fit", real_fit)
    resumed = train_heavy(data, data.scenarios, SMALL, _cfg(epochs=3, patience=5), tmp_path / "m")
    assert resumed.result.resumed_from == 2
    assert resumed.result.epochs_run == 3
    for (k, va), (_, vb) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.allclose(va, vb, atol=1e-6), k
    assert resumed.result.best_valid_auc == pytest.approx(full.result.best_valid_auc)


def test_checkpoint_of_other_config_is_refused(data, tmp_path):
    train_heavy(data, data.scenarios, SMALL, _cfg(epochs=1), tmp_path / "m")
    with pytest.raises(RuntimeError, match="another training config"):
        train_heavy(data, data.scenarios, SMALL, _cfg(epochs=1, lr=0.5), tmp_path / "m")


def test_saved_model_reloads_with_same_predictions(data, tmp_path):
    tr = train_heavy(data, ["s00"], SMALL, _cfg(epochs=1), tmp_path / "m")
    model, tf, info = load_model_dir(tmp_path / "m")
    test = tf.transform(data.rows("test", ["s00"]))
    assert info["scenarios"] == ["s00"]
    assert torch.allclose(torch.from_numpy(predict_proba(model, test)),
                          torch.from_numpy(predict_proba(tr.model, test)), atol=1e-6)


def test_nan_loss_fails_loudly(data):
    tf_rows = data.rows(TRAIN)
    from longtail.data.transforms import FittedTransforms
    from longtail.models.heavy import build_model

    tf = FittedTransforms.fit(data.spec, tf_rows)
    model = build_model(tf.schema, SMALL)
    with pytest.raises(FloatingPointError, match="loss became"):
        fit(model, tf.transform(tf_rows), tf.transform(data.rows(VALID)), _cfg(epochs=1),
            loss_fn=lambda m, b: m(b).sum() * float("nan"))


def test_valid_score_picks_the_kept_epoch_and_stops_early(data):
    """A custom score decides which epoch is kept (here: the 2nd of 4, then two worse ones stop it)."""
    from longtail.data.transforms import FittedTransforms
    from longtail.models.heavy import build_model

    tf = FittedTransforms.fit(data.spec, data.rows(TRAIN))
    train, valid = tf.transform(data.rows(TRAIN)), tf.transform(data.rows(VALID))
    scores = iter([0.1, 0.9, 0.5, 0.4, 0.3])
    kept = {}

    def score(model, batch):
        assert batch is valid and not model.training
        value = next(scores)
        if value == 0.9:
            kept["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        return value

    model = build_model(tf.schema, SMALL)
    result = fit(model, train, valid, _cfg(epochs=5, patience=2), valid_score=score)
    assert [h["valid_score"] for h in result.history] == [0.1, 0.9, 0.5, 0.4]
    assert result.best_epoch == 2 and result.epochs_run == 4
    # best_valid_auc stays an AUC: the kept epoch's, not its score
    assert result.best_valid_auc == result.history[1]["valid_auc"] != 0.9
    for k, v in model.state_dict().items():
        assert torch.equal(v, kept["state"][k]), k


def test_lr_drops_go_back_to_the_best_epoch_with_a_smaller_step(data):
    """At a plateau, lr_drops restores the best weights and scales the learning rate instead of stopping."""
    from longtail.data.transforms import FittedTransforms
    from longtail.models.heavy import build_model

    tf = FittedTransforms.fit(data.spec, data.rows(TRAIN))
    train, valid = tf.transform(data.rows(TRAIN)), tf.transform(data.rows(VALID))
    # epochs 3-4 are a plateau after epoch 2: drop 1 goes on from epoch 2's weights; epochs 6-7 stop it
    values = iter([0.1, 0.9, 0.5, 0.4, 0.95, 0.2, 0.1, 0.0])
    seen = {}
    model = build_model(tf.schema, SMALL)
    opt_lrs = []

    def score(m, batch):
        value = next(values)
        seen[len(seen) + 1] = {k: v.clone() for k, v in m.state_dict().items()}
        return value

    real_adam = torch.optim.Adam

    class SpyAdam(real_adam):
        def step(self, *a, **k):
            opt_lrs.append(self.param_groups[0]["lr"])
            return super().step(*a, **k)

    torch.optim.Adam = SpyAdam
    try:
        result = fit(model, train, valid, _cfg(epochs=10, patience=2, lr=1e-3, lr_drops=1, lr_drop_factor=0.25),
                     valid_score=score)
    finally:
        torch.optim.Adam = real_adam
    assert [h["valid_score"] for h in result.history] == [0.1, 0.9, 0.5, 0.4, 0.95, 0.2, 0.1]
    assert [h.get("lr_drop") for h in result.history] == [None, None, None, 1, None, None, None]
    assert result.best_epoch == 5 and result.epochs_run == 7  # the drop's epoch 5 beat epoch 2
    steps = math.ceil(len(train) / 128)
    assert len(opt_lrs) == 7 * steps
    assert opt_lrs[:4 * steps] == [1e-3] * (4 * steps) and opt_lrs[4 * steps:] == pytest.approx([2.5e-4] * (3 * steps))
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[5][k]), k
    # without drops the same scores stop at epoch 4, keeping epoch 2
    values = iter([0.1, 0.9, 0.5, 0.4, 0.95])
    seen.clear()
    plain = fit(build_model(tf.schema, SMALL), train, valid, _cfg(epochs=10, patience=2), valid_score=score)
    assert plain.best_epoch == 2 and plain.epochs_run == 4


def test_lr_drop_settings_are_checked():
    with pytest.raises(ValueError, match="train.lr_drops"):
        TrainConfig(lr_drops=-1)
    with pytest.raises(ValueError, match="train.lr_drop_factor"):
        TrainConfig(lr_drop_factor=1.0)


def test_checkpoint_from_before_lr_drops_resumes(data, tmp_path):
    """A checkpoint whose config predates a TrainConfig field is read with that field at its default."""
    first = train_heavy(data, data.scenarios, SMALL, _cfg(epochs=1), tmp_path / "m")
    ckpt = checkpoint_dir(tmp_path / "m") / CKPT
    saved = torch.load(ckpt, weights_only=True)
    for key in ("lr_drops", "lr_drop_factor"):
        del saved["config"][key]
    torch.save(saved, ckpt)
    again = train_heavy(data, data.scenarios, SMALL, _cfg(epochs=1), tmp_path / "m")
    assert again.result.best_valid_auc == pytest.approx(first.result.best_valid_auc)
    with pytest.raises(RuntimeError, match="another training config"):
        train_heavy(data, data.scenarios, SMALL, _cfg(epochs=1, lr_drops=2), tmp_path / "m")


def test_device_auto_never_requires_cuda():
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.unit
def test_single_class_scenario_reported_not_crashed():
    per = per_scenario_auc(["a", "a", "b", "b"], [0, 1, 1, 1], [0.2, 0.8, 0.5, 0.6])
    row = per.set_index("scenario").loc["b"]
    assert row["note"].startswith("single class") and row["auc"] != row["auc"]
    assert auc([1, 1], [0.1, 0.2]) is None


# ---------------------------------------------------------------------- optimiser and schedule
@pytest.fixture(scope="module")
def tensors(data):
    from longtail.data.transforms import FittedTransforms

    tf = FittedTransforms.fit(data.spec, data.rows(TRAIN))
    return tf, tf.transform(data.rows(TRAIN)), tf.transform(data.rows(VALID))


def _model(tf, seed=0):
    from longtail.models.heavy import build_model

    torch.manual_seed(seed)
    return build_model(tf.schema, SMALL)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.unit
def test_cosine_schedule_warms_up_linearly_then_decays_to_about_zero():
    from longtail.train import lr_at, planned_steps

    cfg = TrainConfig(epochs=10, batch_size=100, lr=1e-2, schedule="cosine", warmup_frac=0.1)
    planned = planned_steps(cfg, 1000)
    assert planned == 100
    lrs = [lr_at(cfg, s, planned) for s in range(planned)]
    assert lrs[0] == pytest.approx(1e-3)  # step 0 of 10 warm-up steps: lr / 10, not 0
    assert lrs[9] == pytest.approx(1e-2) and lrs[10] == pytest.approx(1e-2)  # end of warm-up: the peak
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert 0 < lrs[-1] < 1e-2 * 1e-3  # the end: ~0
    # max_steps shortens the plan; constant with a warm-up stays at the peak afterwards
    assert planned_steps(dataclasses.replace(cfg, max_steps=30), 1000) == 30
    flat = TrainConfig(epochs=10, batch_size=100, lr=1e-2, warmup_frac=0.2)
    assert [lr_at(flat, s, 100) for s in (0, 19, 20, 99)] == pytest.approx([5e-4, 1e-2, 1e-2, 1e-2])
    assert [lr_at(TrainConfig(lr=1e-2, schedule="cosine"), s, 100) for s in (0, 50)] == pytest.approx([1e-2, 5e-3])
    # the linear scaling rule
    assert lr_at(TrainConfig(lr=1e-3, batch_size=1024, lr_scale_batch=256), 0, 10) == pytest.approx(4e-3)


@pytest.mark.unit
def test_onecycle_follows_torch_onecyclelr():
    from longtail.train import lr_at

    cfg = TrainConfig(lr=3e-3, schedule="onecycle", warmup_frac=0.3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=57, pct_start=0.3,
                                                anneal_strategy="cos", cycle_momentum=False)
    expected = []
    for _ in range(57):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [lr_at(cfg, s, 57) for s in range(57)] == pytest.approx(expected, rel=1e-9)


class _Spy:
    """Records the learning rate of every optimiser step of the Adam/AdamW classes fit builds."""

    def __init__(self, monkeypatch):
        self.lrs: list[float] = []
        self.kinds: set[str] = set()
        for name in ("Adam", "AdamW"):
            real = getattr(torch.optim, name)

            class Spied(real):
                def step(self, *a, _name=name, _spy=self, **k):
                    _spy.lrs.append(self.param_groups[0]["lr"])
                    _spy.kinds.add(_name)
                    return super().step(*a, **k)

            monkeypatch.setattr(torch.optim, name, Spied)


def test_fit_sets_the_scheduled_rate_every_step_and_drops_multiply_it(tensors, monkeypatch):
    from longtail.train import lr_at, planned_steps

    tf, train, valid = tensors
    spy = _Spy(monkeypatch)
    cfg = _cfg(epochs=6, patience=2, lr=1e-2, schedule="cosine", warmup_frac=0.2, lr_drops=1, lr_drop_factor=0.5,
               optimizer="adamw")
    values = iter([0.1, 0.9, 0.5, 0.4, 0.3, 0.2])  # plateau after epoch 2: drop at epoch 4, stop at epoch 6
    result = fit(_model(tf), train, valid, cfg, valid_score=lambda m, b: next(values))
    assert spy.kinds == {"AdamW"}
    assert [h.get("lr_drop") for h in result.history] == [None, None, None, 1, None, None]
    steps = math.ceil(len(train) / 128)
    planned = planned_steps(cfg, len(train))
    assert planned == 6 * steps and len(spy.lrs) == 6 * steps
    expected = [lr_at(cfg, s, planned) * (0.5 if s >= 4 * steps else 1.0) for s in range(6 * steps)]
    assert spy.lrs == pytest.approx(expected, rel=1e-12)
    assert result.history[-1]["lr"] == pytest.approx(expected[-1])


def test_adamw_equals_adam_without_weight_decay_and_differs_with_it(tensors):
    tf, train, valid = tensors
    runs = {}
    for opt in ("adam", "adamw"):
        for wd in (0.0, 0.1):
            model = _model(tf)
            fit(model, train, valid, _cfg(epochs=1, optimizer=opt, weight_decay=wd))
            runs[opt, wd] = model
    assert _same_weights(runs["adam", 0.0], runs["adamw", 0.0])
    assert not _same_weights(runs["adam", 0.1], runs["adamw", 0.1])
    assert not _same_weights(runs["adamw", 0.0], runs["adamw", 0.1])


def test_defaults_keep_adam_at_a_constant_rate(tensors, monkeypatch):
    tf, train, valid = tensors
    spy = _Spy(monkeypatch)
    result = fit(_model(tf), train, valid, _cfg(epochs=2, lr=2e-3))
    assert spy.kinds == {"Adam"} and set(spy.lrs) == {2e-3}
    assert "lr" not in result.history[0]  # records as before the schedule existed


@pytest.mark.unit
@pytest.mark.parametrize(("kw", "key"), [
    ({"optimizer": "sgd"}, "train.optimizer is 'sgd'; use adam or adamw"),
    ({"schedule": "linear"}, "train.schedule"),
    ({"warmup_frac": 1.0}, "train.warmup_frac"),
    ({"warmup_frac": -0.1}, "train.warmup_frac"),
    ({"warmup_frac": float("nan")}, "train.warmup_frac"),
    ({"schedule": "onecycle"}, "train.warmup_frac is 0 with train.schedule onecycle"),
    ({"lr_scale_batch": -1}, "train.lr_scale_batch"),
])
def test_bad_optimiser_and_schedule_values_are_refused(kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("(", r"\(")):
        TrainConfig(**kw)


@pytest.mark.unit
def test_new_train_keys_are_set_from_yaml_and_refused_by_name():
    from longtail.config import ConfigError, config_from_dict, load_config
    from longtail.train_job import TrainJobConfig

    cfg = config_from_dict(TrainConfig, {"optimizer": "adamw", "schedule": "cosine", "warmup_frac": "0.05",
                                         "lr_scale_batch": 256}, "train")
    assert (cfg.optimizer, cfg.schedule, cfg.warmup_frac, cfg.lr_scale_batch) == ("adamw", "cosine", 0.05, 256)
    job = load_config(TrainJobConfig, overrides={"train": {"optimizer": "adamw", "schedule": "onecycle",
                                                           "warmup_frac": 0.3}})
    assert job.train.optimizer == "adamw" and job.train.schedule == "onecycle"
    with pytest.raises(ConfigError, match="train.optimizer"):
        load_config(TrainJobConfig, overrides={"train": {"optimizer": "sgd"}})


@pytest.mark.unit
def test_a_train_dict_from_before_the_schedule_reads_as_the_defaults():
    from longtail.config import config_to_dict
    from longtail.train import normalized_train_dict

    old = config_to_dict(TrainConfig(epochs=3))
    for key in ("optimizer", "schedule", "warmup_frac", "lr_scale_batch"):
        del old[key]
    assert normalized_train_dict(old) == config_to_dict(TrainConfig(epochs=3))


def test_checkpoint_from_before_the_schedule_resumes(data, tmp_path):
    first = train_heavy(data, data.scenarios, SMALL, _cfg(epochs=1), tmp_path / "m")
    ckpt = checkpoint_dir(tmp_path / "m") / CKPT
    saved = torch.load(ckpt, weights_only=True)
    for key in ("optimizer", "schedule", "warmup_frac", "lr_scale_batch"):
        del saved["config"][key]
    torch.save(saved, ckpt)
    again = train_heavy(data, data.scenarios, SMALL, _cfg(epochs=1), tmp_path / "m")
    assert again.result.best_valid_auc == pytest.approx(first.result.best_valid_auc)
    with pytest.raises(RuntimeError, match="another training config"):
        train_heavy(data, data.scenarios, SMALL, _cfg(epochs=1, schedule="cosine"), tmp_path / "m")


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_resume_mid_schedule_gives_the_uninterrupted_weights(tensors, tmp_path, schedule):
    tf, train, valid = tensors
    cfg = _cfg(epochs=4, patience=5, lr=5e-3, optimizer="adamw", weight_decay=0.01, schedule=schedule,
               warmup_frac=0.3)
    full = _model(tf)
    full_result = fit(full, train, valid, cfg)

    def stop_after_two(rec):
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_model(tf), train, valid, cfg, checkpoint_dir=tmp_path, on_epoch=stop_after_two)
    resumed = _model(tf)
    result = fit(resumed, train, valid, cfg, checkpoint_dir=tmp_path)
    assert result.resumed_from == 2 and result.epochs_run == 4 and result.steps == full_result.steps
    assert [h["lr"] for h in result.history] == [h["lr"] for h in full_result.history]
    assert _same_weights(full, resumed)
