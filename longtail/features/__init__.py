"""The feature factory's glue to Feast (the features layer of DESIGN.md).

* `longtail.features.definitions`: Feast objects (entities, sources, the ``profile_daily`` and
  ``behavior_<seq>_hourly`` feature views, versioned feature services) derived from a
  `DatasetSpec` and a table set, so that any dataset a spec describes gets a feature repo;
* `longtail.features.store`: open a working copy of ``feature_repo/``, apply, materialize, and the
  point-in-time training frame through ``get_historical_features``.

This package is the only part of ``longtail`` that imports feast, and only inside these modules:
the core (``longtail.data``, ``longtail.experiment``, ...) never imports it.
"""
