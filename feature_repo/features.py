"""Feature definitions of this repo, for `feast apply` (defines objects only; no side effects).

The objects are derived from the table set named in ``longtail_features.yaml`` (or
``$LONGTAIL_FEATURE_TABLES``) and its ``spec.yaml``: entities, one feature view per profile table
and per behavior sequence, named as the spec names them (sequences as array features), and the
versioned feature service ``<dataset>_v<N>`` that training and serving both use. See
`feature_store.definitions`.
"""

import dataclasses
import os
from pathlib import Path

from feature_store.definitions import build_definitions, load_spec
from feature_store.store import repo_config

_here = Path(__file__).resolve().parent
_cfg = repo_config(_here, os.environ.get("AWS_ENDPOINT_URL") or None)
_tables = os.environ.get("LONGTAIL_FEATURE_TABLES") or _cfg.tables
if "://" not in _tables:
    _tables = str((_here / _tables).resolve())
_cfg = dataclasses.replace(_cfg, tables=_tables)

# feast apply collects module attributes: one per entity, source, view and service
globals().update(build_definitions(load_spec(_cfg), _cfg))
