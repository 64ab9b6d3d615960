"""Model folders: a model's weights (state dict only), its config and its fitted transforms.

Every model the project trains (heavy θ0 / θu / SinH, light MeL / Ours) is saved as one folder
(``weights.pt``, ``model.json``, ``transforms.json``) and loaded by `load_model_dir`, which rebuilds
the module from ``model.json`` by its ``kind`` and never unpickles objects.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from longtail.data.transforms import FittedTransforms
from longtail.io import atomic_write_json
from longtail.models.heavy import HeavyConfig, build_model
from longtail.models.light import build_from_info

__all__ = ["MODEL_BUILDERS", "ModelFolderError", "load_model_dir", "save_model_dir"]


def save_model_dir(path: str | Path, model: torch.nn.Module, transforms: FittedTransforms,
                   config: HeavyConfig, meta: dict[str, Any]) -> Path:
    """Save a model as weights (state dict only), its config and its fitted transforms.

    The folder becomes visible only when complete: a new folder is written under a temporary name
    beside ``path`` and renamed onto it; into an existing folder (one that already holds other files
    of the model, such as its genotype pictures) ``model.json`` is removed first and written last,
    so `load_model_dir` never loads a half-written model. A crash leaves no folder, or one without
    ``model.json``, which every loader refuses.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the model from the other readers of a shared volume
    try:
        atomic_write_json(tmp / "transforms.json", transforms.to_dict())
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "weights.pt")
        atomic_write_json(tmp / "model.json", {"kind": "heavy", "config": config.to_dict(),
                                               "schema": transforms.schema.to_dict(), **meta})
        if path.exists():
            (path / "model.json").unlink(missing_ok=True)  # incomplete from here until the new one lands
            for name in ("transforms.json", "weights.pt", "model.json"):
                os.replace(tmp / name, path / name)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _build_heavy(schema, info: dict[str, Any]) -> torch.nn.Module:
    return build_model(schema, HeavyConfig.from_dict(info["config"]))


# How to rebuild the module of each model kind from its model.json: (schema, model.json dict) -> module.
MODEL_BUILDERS = {"heavy": _build_heavy, "light": build_from_info}


class ModelFolderError(RuntimeError):
    """A model folder is incomplete or damaged, or its weights are not those of its ``model.json``."""


def load_model_dir(path: str | Path) -> tuple[torch.nn.Module, FittedTransforms, dict[str, Any]]:
    """Load a saved model folder of any kind (heavy, light) in eval mode.

    The module is rebuilt from ``model.json`` by the builder its ``kind`` names in
    `MODEL_BUILDERS`; weights are loaded with ``weights_only=True`` (never unpickles objects).

    Returns:
        ``(model, transforms, model.json contents)``.

    Raises:
        FileNotFoundError: ``path`` has no ``model.json`` (not a model folder, or one whose save did
            not finish).
        ModelFolderError: a file is damaged, or the weights do not fit the architecture.
        pickle.UnpicklingError: ``weights.pt`` holds pickled objects, not only tensors (refused unrun).
    """
    path = Path(path)
    if not (path / "model.json").exists():
        raise FileNotFoundError(f"{path}: no model.json; not a saved model folder (or its save did not finish)")
    try:
        info = json.loads((path / "model.json").read_text())
        transforms = FittedTransforms.from_dict(json.loads((path / "transforms.json").read_text()))
    except FileNotFoundError as e:
        raise ModelFolderError(f"{path}: {Path(e.filename).name} is missing; the model folder is incomplete: "
                               "save or download it again") from None
    except ValueError as e:
        raise ModelFolderError(f"{path}: a JSON file is damaged ({e}); save or download the model again") from None
    kind = info.get("kind", "heavy")
    if kind not in MODEL_BUILDERS:
        raise ValueError(f"{path}/model.json: kind {kind!r} is not one of {sorted(MODEL_BUILDERS)}; "
                         "was it written by a newer longtail?")
    model = MODEL_BUILDERS[kind](transforms.schema, info)
    try:
        state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFolderError(f"{path}: weights.pt is missing; save or download the model again") from None
    except pickle.UnpicklingError:  # weights_only refused a pickled object: the registry names it as unsafe
        raise
    except Exception as e:  # torch raises several kinds for a damaged file
        raise ModelFolderError(f"{path}/weights.pt: not readable ({str(e).splitlines()[0] if str(e) else e!r}); "
                               "save or download the model again") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelFolderError(f"{path}: weights.pt does not fit the architecture of its model.json "
                               f"({str(e).splitlines()[0]}); the folder mixes two models: save it again") from None
    model.eval()
    return model, transforms, info
