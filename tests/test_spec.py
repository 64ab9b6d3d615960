"""DatasetSpec: YAML round trip and validation errors that name the column and the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from longtail.data.synthetic import synthetic_spec
from longtail.spec import CategoricalFeature, DatasetSpec, SpecError

pytestmark = pytest.mark.unit


def test_yaml_round_trip(tmp_path):
    spec = synthetic_spec()
    spec.to_yaml(tmp_path / "spec.yaml")
    again = DatasetSpec.from_yaml(tmp_path / "spec.yaml")
    assert again == spec
    assert DatasetSpec.from_yaml(spec.to_yaml()) == spec


def test_unknown_key_is_named():
    d = synthetic_spec().to_dict()
    d["sequences"][0]["max_len"] = 4
    with pytest.raises(SpecError, match=r"sequences\[0\].*unknown key.*max_len"):
        DatasetSpec.from_dict(d)


def test_bad_normalization_is_named():
    d = synthetic_spec().to_dict()
    d["profile_numeric"][0]["normalization"] = "zscore"
    with pytest.raises(SpecError, match=r"profile_numeric\[0\]\.normalization.*zscore"):
        DatasetSpec.from_dict(d)


def test_closed_vocab_needs_vocabulary():
    with pytest.raises(SpecError, match="oov_bucket is false but no vocabulary"):
        DatasetSpec("x", "s", "y", "t", ("id",), profile_categorical=(CategoricalFeature("c", oov_bucket=False),))


def test_valid_frame_passes(synthetic_frame):
    synthetic_spec().validate(synthetic_frame)


def _broken(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.copy()


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda f: f.drop(columns=["x1"]), r"column 'x1': missing"),
        (lambda f: f.assign(x1=f["x1"].astype(str) + "kg"), r"column 'x1': numeric feature holds non-numeric"),
        (lambda f: f.assign(x2=np.where(np.arange(len(f)) == 3, np.nan, f["x2"])),
         r"column 'x2': 1 NaN value\(s\) but the feature is not nullable.*nullable: true"),
        (lambda f: f.assign(event_timestamp=f["event_timestamp"].dt.tz_localize(None)),
         r"column 'event_timestamp': event timestamp must be a tz-aware"),
        (lambda f: f.assign(label=np.where(f["scenario"] == "s05", 1, f["label"])),
         r"scenario 's05'.*single label class"),
        (lambda f: f.assign(label=f["label"] * 2), r"column 'label': label must be binary"),
        (lambda f: f.assign(actions__amount=f["actions__amount"].map(lambda v: list(v) * 3),
                            actions__kind=f["actions__kind"].map(lambda v: list(v) * 3),
                            actions__at=f["actions__at"].map(lambda v: list(v) * 3)),
         r"column 'actions__amount': .* longer than max_length=8"),
        (lambda f: f.assign(actions__amount=f["actions__amount"].map(lambda v: list(v)[:-1] if len(v) else v)),
         r"column 'actions__kind': step count differs"),
    ],
    ids=["missing", "dtype", "nan", "tz", "single-class", "non-binary", "too-long", "misaligned"],
)
def test_validation_errors_name_the_column(synthetic_frame, mutate, pattern):
    with pytest.raises(SpecError, match=pattern):
        synthetic_spec().validate(mutate(_broken(synthetic_frame)))


def test_unknown_category_with_closed_vocabulary(synthetic_frame):
    d = synthetic_spec().to_dict()
    d["sequences"][0]["categorical"][0]["oov_bucket"] = False
    closed = DatasetSpec.from_dict(d)
    closed.validate(synthetic_frame)  # every kind is in the declared vocabulary
    bad = synthetic_frame.copy()
    bad["actions__kind"] = bad["actions__kind"].map(lambda v: ["teleport"] * len(v))
    with pytest.raises(SpecError, match=r"column 'actions__kind': unknown categor.*teleport"):
        closed.validate(bad)


def test_leaked_step_is_reported(synthetic_frame):
    bad = synthetic_frame.copy()
    bad["actions__at"] = pd.Series(list(bad["actions__at"].to_numpy()), index=bad.index, dtype=object)  # editable
    i = int(np.flatnonzero(bad["actions__at"].map(len) > 0)[0])
    steps = list(bad.at[i, "actions__at"])
    steps[-1] = bad.at[i, "event_timestamp"]  # a step exactly at the prediction time leaks
    bad.at[i, "actions__at"] = steps
    with pytest.raises(SpecError, match=r"column 'actions__at': 1 step\(s\) are at or after.*leakage"):
        synthetic_spec().validate(bad)


def test_problems_lists_everything(synthetic_frame):
    bad = synthetic_frame.drop(columns=["x1", "x2"])
    assert len(synthetic_spec().problems(bad)) == 2
