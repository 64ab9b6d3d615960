"""`DatasetSpec`: the declarative description of a long-tail dataset.

The spec is the only thing the later stages (transforms, models, meta-learning, NAS, serving)
may know about a dataset. It round-trips through YAML and validates dataframes with errors that
name the column, what is wrong, and how to fix it.

Example:
    >>> spec = TableSet.load("data/flights").spec     # or ImportSpec.from_yaml(...).dataset_spec()
    >>> spec.validate(df)           # raises SpecError naming the bad column
    >>> spec.to_yaml("spec.yaml")

A prepared dataframe (one row per labelled event, the output of the point-in-time join) has:
    * the scenario column, the binary label, the event timestamp and the entity keys;
    * one column per profile feature, and per profile table with a ``timestamp_field`` its as-of
      column ``{profile}__{timestamp_field}`` (naive UTC; NaT when the event found no row);
    * per behavior sequence ``s`` and per step field ``f``, a list column ``s__f`` holding that
      field for each step, oldest first; the list length is the number of steps (<= max_length);
      every field of one sequence has the same length in a row.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

Normalization = Literal["standard", "log_standard", "minmax", "none"]
SEQ_SEP = "__"


class SpecError(ValueError):
    """A spec or a dataframe does not satisfy the spec; the message names the field and the fix."""


@dataclass(frozen=True)
class NumericFeature:
    """A numeric feature.

    Args:
        name: column name.
        normalization: ``standard`` (z-score), ``log_standard`` (sign(x)·log1p(|x|) then z-score,
            for heavy-tailed values such as delays), ``minmax`` or ``none``; fitted on training data.
        nullable: NaN is allowed; it is replaced by the fitted mean and flagged by a missing
            indicator input. When False, a NaN is a validation error.
    """

    name: str
    normalization: Normalization = "standard"
    nullable: bool = False


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical feature, embedded by the models.

    Args:
        name: column name (values are read as strings; missing values become the OOV bucket
            when ``oov_bucket`` is True).
        vocabulary: a closed list of known values. When empty, the vocabulary is fitted on the
            training data (values seen at least ``min_count`` times, at most ``max_size``).
        oov_bucket: unknown values map to one out-of-vocabulary index. When False, an unknown
            value is a validation error (only meaningful with a declared vocabulary).
        max_size: upper bound on a fitted vocabulary.
        min_count: minimum frequency for a value to enter a fitted vocabulary.
    """

    name: str
    vocabulary: tuple[str, ...] = ()
    oov_bucket: bool = True
    max_size: int = 1000
    min_count: int = 1


@dataclass(frozen=True)
class SequenceSpec:
    """A behavior sequence: an ordered list of recent events per row, oldest first.

    Args:
        name: sequence name; its columns in a prepared dataframe are ``{name}__{field}``.
        numeric: per-step numeric fields.
        categorical: per-step categorical fields.
        max_length: longest allowed sequence; shorter ones are padded.
        padding: ``left`` keeps the newest step at the last position (default), ``right`` pads
            after the last step.
        timestamp_field: optional per-step timestamp field (a list of UTC datetimes: tz-aware, or
            naive datetime64 read as UTC, which is how parquet list columns come back). When set,
            preparation derives a numeric step input ``hours_before`` = event time − step time,
            in hours; a step at or after the event time is a validation error (leakage).
        entity_key: the entity key this sequence's snapshot table is keyed by (one of the spec's
            ``entity_keys``); defaults to the first entity key.
        view: the snapshot table's file stem and Feast feature view (default
            ``behavior_{name}_hourly``, the name of table sets built before views were named).
    """

    name: str
    numeric: tuple[NumericFeature, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()
    max_length: int = 16
    padding: Literal["left", "right"] = "left"
    timestamp_field: str | None = None
    entity_key: str | None = None
    view: str | None = None

    def column(self, field_name: str) -> str:
        return f"{self.name}{SEQ_SEP}{field_name}"

    @property
    def view_name(self) -> str:
        return self.view or f"behavior_{self.name}_hourly"

    @property
    def field_names(self) -> list[str]:
        names = [f.name for f in self.numeric] + [f.name for f in self.categorical]
        if self.timestamp_field:
            names.append(self.timestamp_field)
        return names

    @property
    def columns(self) -> list[str]:
        return [self.column(f) for f in self.field_names]


@dataclass(frozen=True)
class ProfileSpec:
    """A profile table: snapshots of slowly changing attributes of one entity.

    Args:
        name: the table's name (letters, digits, ``_``); its joined as-of column is
            ``{name}__{timestamp_field}``.
        entity_key: the entity key the table is keyed by (one of the spec's ``entity_keys``).
        features: the names of the profile features (of ``profile_numeric`` / ``profile_categorical``)
            this table holds.
        view: the table's file stem and Feast feature view (default ``profile_{name}``).
        timestamp_field: when set, the table holds a column ``{name}__{timestamp_field}`` with the
            time its values were known (naive UTC datetimes, as in list columns); the join carries it
            into each event's row, where a value at or after the event time is a leakage error and a
            missing one (no row found) is a join miss.
        required: every event must find a row of this table known before its event time (a join
            miss is an error); when False, misses are allowed (counted by validation) and the
            table's numeric features must be nullable.
        static: the rows hold facts known at all times (a catalog); the online store then loads
            every row, not only the recent ones.
    """

    name: str
    entity_key: str
    features: tuple[str, ...] = ()
    view: str | None = None
    timestamp_field: str | None = None
    required: bool = True
    static: bool = False

    def column(self, field_name: str) -> str:
        return f"{self.name}{SEQ_SEP}{field_name}"

    @property
    def view_name(self) -> str:
        return self.view or f"profile_{self.name}"

    @property
    def time_column(self) -> str | None:
        """The joined as-of column (``{name}__{timestamp_field}``), or None."""
        return self.column(self.timestamp_field) if self.timestamp_field else None


@dataclass(frozen=True)
class ScenarioRules:
    """Scenario hygiene: the least data a scenario needs to be trained and evaluated.

    Args:
        min_rows: a scenario with fewer events is too small.
        min_per_class: a scenario with fewer events of either label class is too small (1 = both
            classes must be present).
        policy: what `longtail data import` does with a too-small scenario: ``drop`` its events, or
            ``merge`` them into the scenario ``merge_into`` (dropped in turn if still too small).
            Either is reported; `DatasetSpec.scenario_problems` names every scenario below the rules.
        merge_into: the bucket scenario of ``policy: merge`` (a name no real scenario has).
    """

    min_rows: int = 0
    min_per_class: int = 1
    policy: Literal["drop", "merge"] = "drop"
    merge_into: str = ""


LEGACY_PROFILE_VIEW = "profile_daily"


@dataclass(frozen=True)
class DatasetSpec:
    """A long-tail dataset: scenarios, a binary label, profile features and behavior sequences.

    Args:
        name: dataset name.
        scenario: the column naming each row's scenario (one model per value).
        label: binary label column (0/1 or bool).
        event_timestamp: the prediction time of each row (tz-aware UTC).
        entity_keys: join keys of the feature tables; a request to the service names every one.
        profile_numeric / profile_categorical: the profile features (the models' inputs, in order).
        sequences: one or more behavior sequences.
        profiles: the profile tables and the features each holds, each keyed by its own entity key.
            Empty: one table ``profile_daily`` keyed by the first entity key holds every profile
            feature (the layout of table sets built before profile tables were named).
        scenario_rules: the least data a scenario needs (see `ScenarioRules`).
    """

    name: str
    scenario: str
    label: str
    event_timestamp: str
    entity_keys: tuple[str, ...]
    profile_numeric: tuple[NumericFeature, ...] = ()
    profile_categorical: tuple[CategoricalFeature, ...] = ()
    sequences: tuple[SequenceSpec, ...] = ()
    description: str = ""
    profiles: tuple[ProfileSpec, ...] = ()
    scenario_rules: ScenarioRules = ScenarioRules()

    def __post_init__(self) -> None:
        self._check_self()

    # ------------------------------------------------------------------ structure
    def _check_self(self) -> None:
        if not self.sequences and not self.profile_numeric and not self.profile_categorical:
            raise SpecError(f"spec '{self.name}': no features; declare profile features or sequences")
        if not self.entity_keys:
            raise SpecError(f"spec '{self.name}': entity_keys is empty; name at least one join key")
        clash = sorted(set(self.key_columns) & set(self.feature_columns))
        if clash:
            raise SpecError(f"spec '{self.name}': feature(s) {clash} share a name with the scenario, label, timestamp "
                            "or an entity key; rename the feature (e.g. origin -> origin_airport)")
        seen: set[str] = set()
        for col in self.columns:
            if col in seen:
                raise SpecError(f"spec '{self.name}': column '{col}' is declared twice; rename one")
            seen.add(col)
        for s in self.sequences:
            if SEQ_SEP in s.name:
                raise SpecError(f"sequence '{s.name}': names may not contain '{SEQ_SEP}'")
            if s.max_length < 1:
                raise SpecError(f"sequence '{s.name}': max_length must be >= 1, got {s.max_length}")
            if s.entity_key is not None and s.entity_key not in self.entity_keys:
                raise SpecError(f"sequence '{s.name}': entity_key '{s.entity_key}' is not one of entity_keys "
                                f"{list(self.entity_keys)}")
            if not s.numeric and not s.categorical:
                raise SpecError(f"sequence '{s.name}': declare at least one numeric or categorical field")
        for c in self.all_categoricals:
            if not c.oov_bucket and not c.vocabulary:
                raise SpecError(
                    f"categorical '{c.name}': oov_bucket is false but no vocabulary is declared; "
                    "declare the vocabulary or set oov_bucket: true"
                )
        self._check_tables()
        r = self.scenario_rules
        if r.min_rows < 0 or r.min_per_class < 0:
            raise SpecError(f"spec '{self.name}': scenario_rules.min_rows and min_per_class must be >= 0")
        if r.policy not in ("drop", "merge"):
            raise SpecError(f"spec '{self.name}': scenario_rules.policy '{r.policy}' is not one of drop, merge")
        if r.policy == "merge" and not r.merge_into:
            raise SpecError(f"spec '{self.name}': scenario_rules.policy is merge but merge_into is empty; name the "
                            "bucket scenario (e.g. merge_into: other)")

    def _check_tables(self) -> None:
        """Profile tables and views: every profile feature in exactly one table, names usable as files."""
        features = [f.name for f in self.profile_numeric] + [c.name for c in self.profile_categorical]
        numeric = {f.name: f for f in self.profile_numeric}
        closed = {c.name for c in self.profile_categorical if not c.oov_bucket}
        owner: dict[str, str] = {}
        for p in self.profile_tables:
            where = f"spec '{self.name}': profile '{p.name}'"
            if p.entity_key not in self.entity_keys:
                raise SpecError(f"{where}: entity_key '{p.entity_key}' is not one of entity_keys "
                                f"{list(self.entity_keys)}; add it there")
            for f in p.features:
                if f not in features:
                    raise SpecError(f"{where}: feature '{f}' is not declared in profile_numeric or profile_categorical")
                if f in owner:
                    raise SpecError(f"{where}: feature '{f}' is already in profile '{owner[f]}'; a feature lives in "
                                    "one table (rename one of them)")
                owner[f] = p.name
                if not p.required and f in numeric and not numeric[f].nullable:
                    raise SpecError(f"{where}: required is false, so an event may find no row, but its numeric "
                                    f"feature '{f}' is not nullable; set nullable: true or required: true")
                if not p.required and f in closed:
                    raise SpecError(f"{where}: required is false, so an event may find no row, but its categorical "
                                    f"feature '{f}' has oov_bucket: false; set oov_bucket: true or required: true")
        orphans = [f for f in features if f not in owner]
        if orphans:
            raise SpecError(f"spec '{self.name}': profile feature(s) {orphans} are in no profile table; list them "
                            "under a profile's features")
        names = [p.name for p in self.profiles] + [s.name for s in self.sequences]
        views = [p.view_name for p in self.profile_tables] + [s.view_name for s in self.sequences]
        for kind, values in (("table name", names), ("view", views)):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise SpecError(f"spec '{self.name}': {kind}(s) {dup} used twice (profiles and sequences share "
                                "one namespace); rename one")
        for v in views:
            if not v.replace("_", "").isalnum() or v == "events":
                raise SpecError(f"spec '{self.name}': view '{v}' must be letters, digits and '_' (and not "
                                "'events'); it names a parquet file and a Feast feature view")
        for p in self.profiles:
            if SEQ_SEP in p.name:
                raise SpecError(f"profile '{p.name}': names may not contain '{SEQ_SEP}'")

    @property
    def all_categoricals(self) -> list[CategoricalFeature]:
        return list(self.profile_categorical) + [c for s in self.sequences for c in s.categorical]

    @property
    def key_columns(self) -> list[str]:
        cols = [self.scenario, self.label, self.event_timestamp]
        return cols + [k for k in self.entity_keys if k not in cols]

    @property
    def feature_columns(self) -> list[str]:
        cols = [f.name for f in self.profile_numeric] + [f.name for f in self.profile_categorical]
        for s in self.sequences:
            cols += s.columns
        return cols

    @property
    def columns(self) -> list[str]:
        return self.key_columns + [c for c in self.feature_columns if c not in self.key_columns]

    @property
    def profile_tables(self) -> tuple[ProfileSpec, ...]:
        """The profile tables: ``profiles``, or the one legacy table ``profile_daily``."""
        if self.profiles:
            return self.profiles
        features = tuple(f.name for f in self.profile_numeric) + tuple(c.name for c in self.profile_categorical)
        if not features:
            return ()
        return (ProfileSpec(name="profile", entity_key=self.entity_keys[0], features=features,
                            view=LEGACY_PROFILE_VIEW),)

    def profile(self, name: str) -> ProfileSpec:
        for p in self.profile_tables:
            if p.name == name or p.view_name == name:
                return p
        raise SpecError(f"no profile table named '{name}' in spec '{self.name}'; have "
                        f"{[p.name for p in self.profile_tables]}")

    @property
    def profile_entity(self) -> str:
        """The entity key of the first profile table (the first entity key when there is none)."""
        tables = self.profile_tables
        return tables[0].entity_key if tables else self.entity_keys[0]

    @property
    def views(self) -> list[str]:
        """Every snapshot table's view name: the profile tables', then the sequences'."""
        return [p.view_name for p in self.profile_tables] + [s.view_name for s in self.sequences]

    def sequence_entity(self, s: SequenceSpec) -> str:
        return s.entity_key or self.entity_keys[0]

    def sequence(self, name: str) -> SequenceSpec:
        for s in self.sequences:
            if s.name == name:
                return s
        raise SpecError(f"no sequence named '{name}' in spec '{self.name}'; have {[s.name for s in self.sequences]}")

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict[str, Any]:
        def clean(obj: Any) -> Any:
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items()}
            if isinstance(obj, list | tuple):
                return [clean(v) for v in obj]
            return obj

        return clean(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetSpec:
        try:
            return _build(cls, d, "spec")
        except TypeError as e:  # pragma: no cover - _build reports unknown keys itself
            raise SpecError(str(e)) from e

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from longtail.io import atomic_write_text

            atomic_write_text(path, text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> DatasetSpec:
        p = Path(path_or_text)
        is_file = "\n" not in str(path_or_text) and p.exists()
        where = f"spec {p}" if is_file else "spec YAML"
        try:
            data = yaml.safe_load(p.read_text() if is_file else str(path_or_text))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SpecError(f"{where}: not valid YAML ({first}); fix the file or rebuild the table set "
                            "(`longtail data import SPEC.yaml --out DIR` writes it)") from None
        if not isinstance(data, dict):
            raise SpecError(f"{where}: expected a mapping at the top level, got {type(data).__name__}; fix the "
                            "file or rebuild the table set")
        try:
            return cls.from_dict(data)
        except SpecError as e:
            raise SpecError(f"{where}: {e}") from None

    # ------------------------------------------------------------------ validation
    def validate(self, df: pd.DataFrame, *, require_label: bool = True, check_scenarios: bool = True) -> None:
        """Check a prepared dataframe against the spec.

        Raises:
            SpecError: naming the first problem's column, what is wrong and how to fix it.
        """
        problems = self.problems(df, require_label=require_label, check_scenarios=check_scenarios)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise SpecError(problems[0] + more)

    def problems(self, df: pd.DataFrame, *, require_label: bool = True, check_scenarios: bool = True) -> list[str]:
        """All the problems of ``df`` against the spec, each a sentence naming the column."""
        out: list[str] = []
        needed = [c for c in self.columns if require_label or c != self.label]
        missing = [c for c in needed if c not in df.columns]
        for c in missing:
            out.append(f"column '{c}': missing from the dataframe; add it or remove it from spec '{self.name}'")
        if missing:
            return out
        ts = df[self.event_timestamp]
        if not isinstance(ts.dtype, pd.DatetimeTZDtype):
            out.append(
                f"column '{self.event_timestamp}': event timestamp must be a tz-aware datetime, got {ts.dtype}; "
                "convert with pd.to_datetime(..., utc=True)"
            )
        elif ts.isna().any():
            out.append(f"column '{self.event_timestamp}': {int(ts.isna().sum())} missing timestamp(s); drop those rows")
        if df[self.scenario].isna().any():
            out.append(f"column '{self.scenario}': {int(df[self.scenario].isna().sum())} row(s) without a scenario")
        if require_label:
            out += self._label_problems(df, check_scenarios)
        matched: dict[str, np.ndarray] = {}  # profile feature -> rows whose table had a row for the event
        for p in self.profile_tables:
            col = p.time_column
            if col is not None and col in df.columns:
                out += self._profile_time_problems(df, p, col)
                found = df[col].notna().to_numpy()
                matched.update({f: found for f in p.features})
        for f in self.profile_numeric:
            values = df[f.name] if f.name not in matched else df[f.name][matched[f.name]]
            out += _numeric_problems(values, f, f.name)
        for c in self.profile_categorical:
            values = df[c.name] if c.name not in matched else df[c.name][matched[c.name]]
            out += _categorical_problems(values, c, c.name)
        for s in self.sequences:
            out += self._sequence_problems(df, s)
        return out

    def _label_problems(self, df: pd.DataFrame, check_scenarios: bool) -> list[str]:
        y = df[self.label]
        if y.isna().any():
            return [f"column '{self.label}': {int(y.isna().sum())} missing label(s); drop or fill those rows"]
        if y.dtype == bool:
            pass
        elif not pd.api.types.is_numeric_dtype(y.dtype):
            return [f"column '{self.label}': label must be 0/1 or bool, got dtype {y.dtype}"]
        elif not set(np.unique(y.to_numpy())).issubset({0, 1}):
            bad = sorted(set(np.unique(y.to_numpy())) - {0, 1})[:5]
            return [f"column '{self.label}': label must be binary 0/1, found values {bad}"]
        if not check_scenarios:
            return []
        out = []
        classes = df.groupby(self.scenario, observed=True)[self.label].nunique()
        for scen, n in classes.items():
            if n < 2:
                out.append(
                    f"column '{self.label}': scenario '{scen}' (column '{self.scenario}') has a single label class; "
                    "a model cannot be trained or evaluated on it: collect both classes or drop the scenario"
                )
        return out

    def _profile_time_problems(self, df: pd.DataFrame, p: ProfileSpec, col: str) -> list[str]:
        """Join misses and leakage of one profile table, from its joined as-of column."""
        where = f"profile '{p.name}' (view {p.view_name}, key '{p.entity_key}', column '{col}')"
        known = df[col]
        if not (isinstance(known.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(known.dtype)):
            return [f"{where}: the as-of column must hold UTC datetimes, got {known.dtype}"]
        out: list[str] = []
        miss = known.isna().to_numpy()
        if miss.any() and p.required:
            first = df[miss].iloc[0]
            out.append(
                f"{where}: {int(miss.sum())} of {len(df)} event(s) found no row known before their event time "
                f"(a join miss, not a NaN value), e.g. {p.entity_key}={_plain(first[p.entity_key])!r} at "
                f"{first[self.event_timestamp]}; add those rows, make the key's values and type match the events', "
                "or check the table's time column; set required: false for the profile to allow misses")
        ok = ~miss
        if ok.any():
            known_at = _utc_naive(pd.to_datetime(known[ok], utc=True))
            event = _utc_naive(pd.to_datetime(df[self.event_timestamp][ok], utc=True))
            leaked = known_at >= event
            if leaked.any():
                rows = df[ok][leaked]
                first = rows.iloc[0]
                out.append(
                    f"{where}: {int(leaked.sum())} event(s) got a snapshot known at or after their "
                    f"'{self.event_timestamp}' (leakage), e.g. row {rows.index[0]} ({p.entity_key}="
                    f"{_plain(first[p.entity_key])!r}, known {first[col]}, event {first[self.event_timestamp]}); a profile "
                    "snapshot may only hold what was known strictly before the prediction time: stamp it later")
        return out

    def join_misses(self, df: pd.DataFrame) -> dict[str, int]:
        """Per profile table (by name) with an as-of column in ``df``: the events that found no row."""
        return {p.name: int(df[p.time_column].isna().sum()) for p in self.profile_tables
                if p.time_column is not None and p.time_column in df.columns}

    def scenario_problems(self, df: pd.DataFrame) -> list[str]:
        """The scenarios of ``df`` below ``scenario_rules`` (rows, rows of each label class), one sentence each."""
        r = self.scenario_rules
        if self.label not in df.columns or (r.min_rows <= 0 and r.min_per_class <= 0):
            return []
        out = []
        for scen, n, pos in scenario_counts(self, df).itertuples(index=False):
            neg = n - pos
            if n < r.min_rows or min(pos, neg) < r.min_per_class:
                out.append(
                    f"scenario '{scen}' (column '{self.scenario}'): {n} row(s), {pos} positive, {neg} negative; below "
                    f"scenario_rules (min_rows {r.min_rows}, min_per_class {r.min_per_class}): too small to train and "
                    "evaluate. `longtail data import` applies the rules' policy (drop or merge); or lower the rules")
        return out

    def _sequence_problems(self, df: pd.DataFrame, s: SequenceSpec) -> list[str]:
        out: list[str] = []
        lengths: np.ndarray | None = None
        for fname in s.field_names:
            col = s.column(fname)
            values = df[col]
            if len(values) == 0:
                continue
            lists = arrow_lists(values)
            if lists is not None:  # a list per row by its type; a missing one is the only other cell
                cells, bad_name, n_bad = values, "NoneType", lists.null_count
            else:
                cells, bad_name, n_bad = values.to_numpy(), "", 0
                # one pass over the cells' types (a few distinct ones) instead of an isinstance call per cell
                if not all(issubclass(t, list | np.ndarray | tuple) for t in set(map(type, cells))):
                    bad_type = values.map(lambda v: not isinstance(v, list | np.ndarray | tuple)).to_numpy()
                    bad_name, n_bad = type(values[bad_type].iloc[0]).__name__, int(bad_type.sum())
            if n_bad:
                out.append(f"column '{col}': sequence field must hold a list per row, found {bad_name} in {n_bad} "
                           "row(s); store an empty list for no steps")
                continue
            lens = step_counts(cells)
            if lengths is None:
                lengths = lens
                too_long = lens > s.max_length
                if too_long.any():
                    out.append(
                        f"column '{col}': {int(too_long.sum())} row(s) have sequences longer than max_length="
                        f"{s.max_length} (longest {int(lens.max())}); truncate to the newest {s.max_length} steps "
                        f"or raise max_length of sequence '{s.name}'"
                    )
            elif (lens != lengths).any():
                out.append(
                    f"column '{col}': step count differs from the other fields of sequence '{s.name}' "
                    f"in {int((lens != lengths).sum())} row(s); all fields of a sequence must align"
                )
            if fname == s.timestamp_field:
                out += self._leak_problems(df, col, pd.Series(flatten_steps(cells, lens)), lens)
                continue
            spec_field = next((f for f in s.numeric if f.name == fname), None)
            if spec_field is not None:
                out += _numeric_problems(pd.Series(flatten_steps(cells, lens)), spec_field, col)
            else:
                cat = next(c for c in s.categorical if c.name == fname)
                if not cat.oov_bucket:  # an open vocabulary takes any value: its steps need no look
                    out += _categorical_problems(pd.Series(flatten_steps(cells, lens)), cat, col)
        return out

    def _leak_problems(self, df: pd.DataFrame, col: str, flat: pd.Series, lens: np.ndarray) -> list[str]:
        if not lens.sum():
            return []
        steps = pd.to_datetime(flat, utc=True)
        event = pd.to_datetime(df[self.event_timestamp], utc=True)
        leaked = steps.dt.tz_localize(None).to_numpy() >= np.repeat(event.dt.tz_localize(None).to_numpy(), lens)
        if leaked.any():
            return [
                f"column '{col}': {int(leaked.sum())} step(s) are at or after their row's "
                f"'{self.event_timestamp}' (leakage); keep only steps strictly before the prediction time"
            ]
        return []


def scenario_counts(spec: DatasetSpec, df: pd.DataFrame) -> pd.DataFrame:
    """Rows and positives per scenario: columns ``scenario, rows, positives``, largest first."""
    y = pd.to_numeric(df[spec.label], errors="coerce").fillna(0).astype("int64")
    g = y.groupby(df[spec.scenario].astype(str), observed=True)
    out = pd.DataFrame({"rows": g.size(), "positives": g.sum()}).rename_axis("scenario").reset_index()
    return out.sort_values(["rows", "scenario"], ascending=[False, True]).reset_index(drop=True)


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python value it holds (for messages: 2, not np.int64(2))."""
    return v.item() if isinstance(v, np.generic) else v


def _utc_naive(ts: pd.Series) -> np.ndarray:
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")


def arrow_lists(col: Any) -> pa.ChunkedArray | None:
    """The arrow list array behind a sequence column read as arrow lists (``list<...>[pyarrow]``: what
    `longtail.data.tables` reads behavior tables as), or None for any other column (cells as Python objects)."""
    if isinstance(col, pd.Series) and isinstance(col.dtype, pd.ArrowDtype):
        t = col.dtype.pyarrow_dtype
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return col.array.__arrow_array__()
    return None


def step_counts(col: pd.Series | np.ndarray) -> np.ndarray:
    """Steps per row of a sequence list column (or of its cells), as int64 (a missing list: 0 steps in an arrow
    list column; validation reports it)."""
    lists = arrow_lists(col)
    if lists is not None:  # the offsets' differences: no per-row Python
        return pc.list_value_length(lists).fill_null(0).to_numpy().astype(np.int64, copy=False)
    values = col.to_numpy() if isinstance(col, pd.Series) else col
    return np.fromiter(map(len, values), dtype=np.int64, count=len(values))


def flatten_steps(col: pd.Series | np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """All steps of a sequence list column (or its cells), row after row, keeping the native dtype where there is
    one (an arrow list column: its values array, the dtype its cells would have). The rows with steps are picked
    without a Python loop; ``counts``: the column's `step_counts`, when the caller has them already."""
    lists = arrow_lists(col)
    if lists is not None:
        flat = pc.list_flatten(lists)
        return flat.to_numpy() if len(flat) else np.array([], dtype=float)
    values = col.to_numpy() if isinstance(col, pd.Series) else col
    if counts is None:
        counts = step_counts(values)
    parts = values[counts > 0] if len(values) else values
    if not len(parts):
        return np.array([], dtype=float)
    try:
        return np.concatenate(list(parts))  # parquet gives numpy arrays: no per-row conversion needed
    except (ValueError, TypeError):  # mixed element types across rows (e.g. None among numbers)
        return np.concatenate([np.asarray(v, dtype=object) for v in parts])


def _numeric_problems(values: pd.Series, f: NumericFeature, col: str) -> list[str]:
    raw = values
    if not len(values):
        return []
    if raw.dtype == object:
        coerced = pd.to_numeric(raw, errors="coerce")
        nonnum = coerced.isna() & raw.notna()
        if nonnum.any():
            return [f"column '{col}': numeric feature holds non-numeric value {raw[nonnum].iloc[0]!r}; fix the "
                    "data or declare it categorical"]
        values = coerced
    elif not (pd.api.types.is_numeric_dtype(values.dtype) or values.dtype == bool):
        return [f"column '{col}': numeric feature has dtype {values.dtype}; cast it to a number or declare it categorical"]
    arr = values.to_numpy(dtype=float, na_value=np.nan)
    if np.isinf(arr).any():
        return [f"column '{col}': {int(np.isinf(arr).sum())} infinite value(s); replace them or mark them NaN "
                "with nullable: true"]
    if not f.nullable and np.isnan(arr).any():
        return [f"column '{col}': {int(np.isnan(arr).sum())} NaN value(s) but the feature is not nullable; "
                "fill them or set nullable: true in the spec"]
    return []


def _categorical_problems(values: pd.Series, c: CategoricalFeature, col: str) -> list[str]:
    if c.oov_bucket or not len(values):
        return []
    known = set(c.vocabulary)
    vals = values.dropna().astype(str)
    unknown = sorted(set(vals.unique()) - known)
    if values.isna().any():
        unknown = ["<missing>"] + unknown
    if unknown:
        return [f"column '{col}': unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown[:5]} not in the "
                "declared vocabulary and oov_bucket is false; add them to the vocabulary or set oov_bucket: true"]
    return []


# ---------------------------------------------------------------------- dict -> dataclass
_NESTED = {
    "profile_numeric": NumericFeature,
    "profile_categorical": CategoricalFeature,
    "sequences": SequenceSpec,
    "numeric": NumericFeature,
    "categorical": CategoricalFeature,
    "profiles": ProfileSpec,
}
_MAPPINGS = {"scenario_rules": ScenarioRules}


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if k in _NESTED:
            if not isinstance(v, list):
                raise SpecError(f"{where}.{k}: expected a list, got {type(v).__name__}")
            kwargs[k] = tuple(_build(_NESTED[k], item, f"{where}.{k}[{i}]") for i, item in enumerate(v))
        elif k in _MAPPINGS:
            kwargs[k] = _build(_MAPPINGS[k], v, f"{where}.{k}")
        elif k in ("entity_keys", "vocabulary", "features"):
            if not isinstance(v, list | tuple):
                raise SpecError(f"{where}.{k}: expected a list, got {type(v).__name__}")
            kwargs[k] = tuple(str(x) for x in v)
        else:
            kwargs[k] = v
    required = [n for n, f in names.items() if f.default is MISSING and n not in kwargs]
    if required:
        raise SpecError(f"{where}: missing required key(s) {required}")
    for k, v in kwargs.items():
        if k == "normalization" and v not in ("standard", "log_standard", "minmax", "none"):
            raise SpecError(f"{where}.normalization: '{v}' is not one of standard, log_standard, minmax, none")
        if k == "padding" and v not in ("left", "right"):
            raise SpecError(f"{where}.padding: '{v}' is not one of left, right")
        if k in ("max_length", "max_size", "min_count", "min_rows", "min_per_class") and (
                not isinstance(v, int) or isinstance(v, bool)):
            raise SpecError(f"{where}.{k}: expected an integer, got {v!r}")
        if k in ("nullable", "oov_bucket", "required", "static") and not isinstance(v, bool):
            raise SpecError(f"{where}.{k}: expected true or false, got {v!r}")
    return cls(**kwargs)


__all__ = [
    "CategoricalFeature",
    "DatasetSpec",
    "NumericFeature",
    "ProfileSpec",
    "ScenarioRules",
    "SequenceSpec",
    "SpecError",
    "SEQ_SEP",
]
