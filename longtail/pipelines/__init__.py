"""The stages of the Kubeflow pipelines (bootstrap, onboard, retrain) as plain functions.

`longtail.pipelines.stages` holds every stage's logic on paths and configs, importable without
kfp; the KFP components in ``components/`` are thin wrappers that call one stage each, and the
pipelines in ``pipelines/`` wire them. `longtail.pipelines.report` renders the per-scenario
tables; `longtail.pipelines.command` is the ``longtail pipelines`` command group.
"""
