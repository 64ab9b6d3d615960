"""Model folders: a model's weights (state dict only), its config and its fitted transforms.

Every model the project trains (heavy θ0 / θu / SinH, light MeL / Ours) is saved as one folder
(``weights.pt``, ``model.json``, ``transforms.json``) and loaded by `load_model_dir`, which rebuilds
the module from ``model.json`` by its ``kind`` and never unpickles objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from longtail.data.transforms import FittedTransforms
from longtail.io import atomic_path, atomic_write_json
from longtail.models.heavy import HeavyConfig, build_model
from longtail.models.light import build_from_info

__all__ = ["MODEL_BUILDERS", "load_model_dir", "save_model_dir"]


def save_model_dir(path: str | Path, model: torch.nn.Module, transforms: FittedTransforms,
                   config: HeavyConfig, meta: dict[str, Any]) -> Path:
    """Save a model as weights (state dict only), its config and its fitted transforms."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / "transforms.json", transforms.to_dict())
    with atomic_path(path / "weights.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    atomic_write_json(path / "model.json", {"kind": "heavy", "config": config.to_dict(),
                                            "schema": transforms.schema.to_dict(), **meta})
    return path


def _build_heavy(schema, info: dict[str, Any]) -> torch.nn.Module:
    return build_model(schema, HeavyConfig.from_dict(info["config"]))


# How to rebuild the module of each model kind from its model.json: (schema, model.json dict) -> module.
MODEL_BUILDERS = {"heavy": _build_heavy, "light": build_from_info}


def load_model_dir(path: str | Path) -> tuple[torch.nn.Module, FittedTransforms, dict[str, Any]]:
    """Load a saved model folder of any kind (heavy, light) in eval mode.

    The module is rebuilt from ``model.json`` by the builder its ``kind`` names in
    `MODEL_BUILDERS`; weights are loaded with ``weights_only=True`` (never unpickles objects).

    Returns:
        ``(model, transforms, model.json contents)``.
    """
    path = Path(path)
    if not (path / "model.json").exists():
        raise FileNotFoundError(f"{path}: no model.json; not a saved model folder")
    info = json.loads((path / "model.json").read_text())
    kind = info.get("kind", "heavy")
    if kind not in MODEL_BUILDERS:
        raise ValueError(f"{path}/model.json: kind {kind!r} is not one of {sorted(MODEL_BUILDERS)}; "
                         "was it written by a newer longtail?")
    transforms = FittedTransforms.from_dict(json.loads((path / "transforms.json").read_text()))
    model = MODEL_BUILDERS[kind](transforms.schema, info)
    model.load_state_dict(torch.load(path / "weights.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, transforms, info


