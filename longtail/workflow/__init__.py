"""The stages of the Kubeflow pipelines (bootstrap, onboard, retrain) as plain functions.

`longtail.workflow.stages` holds every stage's logic on paths and configs, importable without
kfp or feast (the feature store is passed in where a stage needs one); the KFP components in
``components/`` are thin wrappers that call one stage each, and the pipelines in ``pipelines/``
wire them. `longtail.workflow.report` renders the per-scenario tables and
`longtail.workflow.artifacts` the components' metrics and reports.
"""
