"""The features layer (DESIGN.md): the feature factory's glue to Feast.

* `feature_store.definitions`: Feast objects (entities, sources, one feature view per profile
  table and per behavior sequence, named by the spec, versioned feature services) derived from a
  `DatasetSpec` and a table set, so that any dataset a spec describes gets a feature repo;
* `feature_store.store`: open a working copy of ``feature_repo/``, apply, materialize, and the
  point-in-time training frame through ``get_historical_features``.

The core (``longtail``) never imports feast; the pipelines' components and the serving layer
reach Feast through this package.
"""
