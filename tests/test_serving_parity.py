"""Online/offline parity: for the same entity and time, the service (features read from a Feast
online store, transformed with the model's saved transforms) gives the features and the prediction
of the offline evaluation path (point-in-time join, the same transforms, `predict_proba`).

The Feast repo is made here (SQLite online store, file offline store over the table set's
parquet files) and materialized up to the chosen events' time.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from tiny import build_tiny_registry

from longtail.data.synthetic import SyntheticConfig, build_synthetic
from longtail.data.tables import TableSet
from longtail.metrics import predict_proba
from longtail.online.rows import jsonable_row
from serving.launch import ServiceProcess

pytestmark = [pytest.mark.serving, pytest.mark.slow]


def make_feast_repo(tables: TableSet, root: Path) -> None:
    """A Feast repo over a table set: one view per table, feature names = the spec's columns,
    and the versioned feature service ``<dataset>_v1`` the service reads (as in ``feature_repo/``)."""
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Float64, String, UnixTimestamp

    spec = tables.spec
    root.mkdir(parents=True, exist_ok=True)
    (root / "feature_store.yaml").write_text(
        "project: longtail_parity\nregistry: data/registry.db\nprovider: local\n"
        "offline_store: {type: file}\nonline_store: {type: sqlite, path: data/online.db}\n"
        "entity_key_serialization_version: 3\n")
    events = tables.read_events()
    entities = {k: Entity(name=k, join_keys=[k], value_type=ValueType.INT64 if pd.api.types.is_integer_dtype(
        events[k]) else ValueType.STRING) for k in spec.entity_keys}
    ttl = timedelta(days=3650)  # the offline join has no ttl: the newest snapshot at or before the time
    profile = [Field(name=f.name, dtype=Float64) for f in spec.profile_numeric]
    profile += [Field(name=c.name, dtype=String) for c in spec.profile_categorical]
    views = [FeatureView(name="profile_daily", entities=[entities[spec.profile_entity]], ttl=ttl, schema=profile,
                         source=FileSource(name="profile_daily_src", path=str(tables.profile_path),
                                           timestamp_field="snapshot_ts"))]
    for s in spec.sequences:
        fields = [Field(name=s.column(f.name), dtype=Array(Float64)) for f in s.numeric]
        fields += [Field(name=s.column(c.name), dtype=Array(String)) for c in s.categorical]
        if s.timestamp_field:
            fields.append(Field(name=s.column(s.timestamp_field), dtype=Array(UnixTimestamp)))
        views.append(FeatureView(name=f"behavior_{s.name}_hourly", entities=[entities[spec.sequence_entity(s)]],
                                 ttl=ttl, schema=fields,
                                 source=FileSource(name=f"behavior_{s.name}_src", path=str(tables.behavior_path(s)),
                                                   timestamp_field="snapshot_ts")))
    store = FeatureStore(repo_path=str(root))
    store.apply([*entities.values(), *views, FeatureService(name=f"{spec.name}_v1", features=views)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from feast import FeatureStore

    root = tmp_path_factory.mktemp("parity")
    tables = build_synthetic(root / "tables", SyntheticConfig(n_scenarios=3, max_rows=300, min_rows=60, seed=1))
    tiny = build_tiny_registry(tables.root, root / "models")
    make_feast_repo(tables, root / "feature_repo")
    frame = tiny.data.frame
    spec = tiny.data.spec
    # the newest event of the light scenario: its entities' newest snapshots are what the online store holds
    rows = frame[frame[spec.scenario] == tiny.light_scenario].sort_values(spec.event_timestamp)
    event = rows.iloc[-1:]
    t = event[spec.event_timestamp].iloc[0]
    FeatureStore(repo_path=str(root / "feature_repo")).materialize(
        start_date=(frame[spec.event_timestamp].min() - timedelta(days=30)).floor("s").to_pydatetime(),
        end_date=t.floor("us").to_pydatetime())
    svc = ServiceProcess([f"registry={tiny.registry.store.root}", "feature_source=feast",
                          f"feast_repo={root / 'feature_repo'}", "poll_seconds=0"],
                         log_path=root / "service.log").start()
    try:
        yield tiny, event, svc
    finally:
        svc.stop()


def test_online_features_and_prediction_equal_the_offline_path(setup):
    tiny, event, svc = setup
    spec = tiny.data.spec
    entity = {k: (int(v) if isinstance(v, np.integer) else v) for k, v in event[list(spec.entity_keys)].iloc[0].items()}
    ts = event[spec.event_timestamp].iloc[0]
    r = httpx.post(f"{svc.url}/predict", timeout=60, json={
        "scenario": tiny.light_scenario, "entity": entity, "event_timestamp": ts.isoformat(),
        "return_features": True})
    assert r.status_code == 200, r.text
    online = r.json()

    # the offline evaluation path: point-in-time join row -> the served version's transforms -> predict_proba
    model, transforms, _ = tiny.registry.load(online["model_name"], online["model_version"])
    offline_p = float(predict_proba(model, transforms.transform(event, require_label=False))[0])
    offline_features = jsonable_row(spec, event)

    assert online["model_kind"] == "light" and online["fallback"] is False
    assert set(online["features"]) == set(offline_features)
    for col, value in offline_features.items():
        got = online["features"][col]
        if isinstance(value, list) and value and isinstance(value[0], float):
            np.testing.assert_allclose(got, value, rtol=0, atol=1e-12, err_msg=col)
        elif isinstance(value, float):
            assert got == pytest.approx(value, abs=1e-12), col
        else:
            assert got == value, col
    assert online["probability"] == pytest.approx(offline_p, abs=1e-6)


def test_unknown_entity_is_a_4xx_naming_the_key(setup):
    tiny, event, svc = setup
    spec = tiny.data.spec
    entity = {k: (int(v) if isinstance(v, np.integer) else v) for k, v in event[list(spec.entity_keys)].iloc[0].items()}
    entity[spec.profile_entity] = 10**9
    r = httpx.post(f"{svc.url}/predict", timeout=60, json={"scenario": tiny.light_scenario, "entity": entity})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == f"entity.{spec.profile_entity}"


def test_entity_of_the_wrong_type_is_a_4xx(setup):
    tiny, event, svc = setup
    spec = tiny.data.spec
    entity = {k: (int(v) if isinstance(v, np.integer) else v) for k, v in event[list(spec.entity_keys)].iloc[0].items()}
    entity[spec.profile_entity] = "not-a-number"
    r = httpx.post(f"{svc.url}/predict", timeout=60, json={"scenario": tiny.light_scenario, "entity": entity})
    assert 400 <= r.status_code < 500, r.text
    assert "entity" in r.json()["field"]
