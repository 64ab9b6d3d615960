"""The Kubeflow pipelines: ``bootstrap``, ``onboard`` and ``retrain``.

Each module has a factory ``make_<name>(cluster: ClusterConfig)`` that returns the pipeline with
the cluster settings applied (GPU node-pool placement of training tasks, S3 Secret, retries,
caching, the ParallelFor limit); `compile_pipeline` writes its IR YAML and `run_local` runs it with
``kfp.local`` (SubprocessRunner, the current environment).
"""

from pipelines.build import PIPELINES, compile_pipeline, make_pipeline, run_local

__all__ = ["PIPELINES", "compile_pipeline", "make_pipeline", "run_local"]
