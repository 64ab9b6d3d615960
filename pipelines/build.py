"""Compile the pipelines to IR YAML, and run them locally with ``kfp.local``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longtail.workflow.config import ClusterConfig, PipelineConfig

PIPELINES = ("bootstrap", "onboard", "retrain")


def make_pipeline(name: str, cluster: ClusterConfig, config: PipelineConfig | None = None):
    """The pipeline ``name`` (bootstrap, onboard, retrain) with ``cluster``'s settings and ``config``'s
    ``parallelism`` (the ParallelFor limit)."""
    if name not in PIPELINES:
        raise ValueError(f"pipeline {name!r}: use one of {list(PIPELINES)}")
    if name == "bootstrap":
        from pipelines.bootstrap import make_bootstrap as make
    elif name == "onboard":
        from pipelines.onboard import make_onboard as make
    else:
        from pipelines.retrain import make_retrain as make
    return make(cluster, (config or PipelineConfig()).parallelism)


def compile_pipeline(name: str, path: str | Path, cluster: ClusterConfig, config: PipelineConfig) -> Path:
    """Compile ``name`` to IR YAML at ``path`` with ``config`` as the default of its ``config`` parameter."""
    from kfp import compiler

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.yaml")
    compiler.Compiler().compile(make_pipeline(name, cluster, config), package_path=str(tmp),
                                pipeline_parameters={"config": config.to_dict()})
    tmp.replace(path)
    return path


def run_local(name: str, config: PipelineConfig, cluster: ClusterConfig | None = None, **arguments: Any) -> Any:
    """Run a pipeline with ``kfp.local`` (SubprocessRunner in the current environment).

    Kubernetes settings (node selectors, Secrets, accelerators) have no effect locally. Outputs of
    the local runs go to ``<workspace>/kfp-local``.

    Returns:
        The pipeline's output (the package summary, JSON).
    """
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(Path(config.workspace).resolve() / "kfp-local"), raise_on_error=True)
    pipeline = make_pipeline(name, cluster or ClusterConfig(), config)
    task = pipeline(config=config.to_dict(), **arguments)
    return task.output
