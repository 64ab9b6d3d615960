"""A tiny, fully populated registry for the serving tests, the fuzzer and local trials of the service.

It trains (1 epoch, tiny widths) an agnostic heavy model on a table set, a light model (a searched
encoder's genotype) for the largest scenario and publishes them the way the pipelines do:
``agnostic`` promoted at the fallback pointer, ``light-<s>`` promoted for scenario ``s``, and a
``specific-<s2>`` heavy model for a second scenario. Nothing here is used on the serving path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from longtail.data.prepared import DataConfig, PreparedData, prepare
from longtail.data.splits import TRAIN, VALID
from longtail.data.transforms import FittedTransforms
from longtail.model_folder import save_model_dir
from longtail.models.genotype import Genotype, LayerGene
from longtail.models.heavy import HeavyConfig
from longtail.models.light import build_light_model
from longtail.registry import ModelRegistry, lineage, open_registry
from longtail.train import TrainConfig, fit
from longtail.train_job import train_heavy

TINY = HeavyConfig(encoder="lstm", num_layers=1, hidden_size=6, intermediate_size=8, num_heads=2,
                   profile_dims=(8,), head_dims=(8,), dropout=0.0)
TINY_GENOTYPE = Genotype((LayerGene("conv_3", 0), LayerGene("avg_pool_3", 1, (0,))), hidden_size=6, num_heads=2)


@dataclass(frozen=True)
class TinyRegistry:
    """What `build_tiny_registry` made."""

    registry: ModelRegistry
    data: PreparedData
    light_scenario: str
    heavy_scenario: str
    folders: dict[str, Path]


def train_light(data: PreparedData, scenario: str, transforms: FittedTransforms, out: Path,
                config: HeavyConfig = TINY, genotype: Genotype = TINY_GENOTYPE, epochs: int = 1) -> Path:
    """Train a light model (fixed genotype, no search) on one scenario and save its model folder."""
    genotypes = {s.name: genotype for s in transforms.schema.sequences}
    torch.manual_seed(0)
    model = build_light_model(transforms.schema, config, genotypes)
    tr, va = data.rows(TRAIN, [scenario]), data.rows(VALID, [scenario])
    fit(model, transforms.transform(tr), transforms.transform(va) if len(va) else None,
        TrainConfig(epochs=epochs, device="cpu", patience=1))
    save_model_dir(out, model, transforms, config, {
        "kind": "light", "scenario": scenario, "genotypes": {k: g.to_dict() for k, g in genotypes.items()}})
    return out


def build_tiny_registry(tables: str | Path, root: str | Path, *, fallback_pointer: str = "_default",
                        epochs: int = 1) -> TinyRegistry:
    """Train tiny models on a table set and publish/promote them in a new registry under ``root``.

    Args:
        tables: a table-set folder (e.g. a small synthetic set).
        root: a folder for the model folders and the registry (``root/registry``).
        fallback_pointer: where the agnostic model is promoted (the service's cold-start pointer).
        epochs: training epochs of each model.

    Returns:
        The registry and what was published.
    """
    root = Path(root)
    data = prepare(DataConfig(tables=str(tables)))
    scenarios = data.scenarios
    light_s, heavy_s = scenarios[0], scenarios[1]
    train_cfg = TrainConfig(epochs=epochs, device="cpu", patience=1)
    agn = train_heavy(data, scenarios, TINY, train_cfg, root / "models" / "agnostic")
    spec_ = train_heavy(data, [heavy_s], TINY, train_cfg, root / "models" / f"specific-{heavy_s}")
    light_dir = train_light(data, light_s, agn.transforms, root / "models" / f"light-{light_s}", epochs=epochs)
    reg = open_registry(root / "registry")
    a = reg.publish("agnostic", root / "models" / "agnostic", kind="agnostic", metrics={}, lineage=lineage())
    reg.promote(fallback_pointer, *a.ref)
    h = reg.publish(f"specific-{heavy_s}", root / "models" / f"specific-{heavy_s}", kind="specific",
                    scenario=heavy_s, metrics={}, lineage=lineage(theta0=a.ref))
    reg.promote(heavy_s, *h.ref)
    li = reg.publish(f"light-{light_s}", light_dir, kind="light", scenario=light_s, metrics={},
                     lineage=lineage(theta0=a.ref))
    reg.promote(light_s, *li.ref)
    del spec_
    return TinyRegistry(reg, data, light_s, heavy_s, {
        "agnostic": root / "models" / "agnostic", "heavy": root / "models" / f"specific-{heavy_s}",
        "light": light_dir})
