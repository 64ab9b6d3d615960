"""Training: learns, deterministic under a seed, resumes an interrupted run exactly, fails loudly."""

from __future__ import annotations

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
