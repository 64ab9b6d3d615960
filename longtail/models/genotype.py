"""Genotypes of the light behavior encoder: one choice per decision of its search space, as data.

A searched encoder is a stack of ``N`` layers over ``N + 1`` *nodes*: node 0 is the original
input projected to width ``H``, node ``l + 1`` is the output of layer ``l`` (0-based). Layer
``l`` chooses

- its **input**: one node among ``0 .. l``;
- its **operation**: one registered name (``longtail.models.ops``);
- its **residual inputs**: an independent on/off bit for each node ``0 .. l``.

Layer output: ``LayerNorm(op(input) + sum of the residual nodes)``, zeroed at padded steps.
The encoder output is an attentive sum of the masked-mean pooled layer outputs (nodes
``1 .. N``), ``(B, H)``. The space of all such choices is ``longtail.nas.space.ArchSpace``.

A genotype is a small JSON document::

    {"hidden_size": 15, "num_heads": 3,
     "layers": [{"op": "conv_3", "input": 0, "residual": []},
                {"op": "lstm", "input": 1, "residual": [0, 1]}, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from longtail.models.ops import list_ops

__all__ = ["Genotype", "LayerGene", "check_width"]


def check_width(hidden_size: int, num_heads: int) -> None:
    if hidden_size < 1 or num_heads < 1:
        raise ValueError("hidden_size and num_heads must be >= 1")
    if hidden_size % num_heads != 0:
        raise ValueError(f"num_heads={num_heads} must divide hidden_size={hidden_size}")


@dataclass(frozen=True)
class LayerGene:
    """The choices of one layer.

    Args:
        op: operation name.
        input: node index of the input (0 = projected original input, ``j`` = layer ``j - 1``).
        residual: node indices added to the operation's output (sorted, distinct).
    """

    op: str
    input: int
    residual: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "residual", tuple(sorted(int(r) for r in self.residual)))


@dataclass(frozen=True)
class Genotype:
    """One architecture of an ``ArchSpace``: one choice per decision.

    Args:
        layers: one gene per layer.
        hidden_size: width ``H``.
        num_heads: heads of self-attention operations.

    Example:
        >>> g = Genotype((LayerGene("conv_3", 0), LayerGene("lstm", 1, (0,))))
        >>> Genotype.from_json(g.to_json()) == g
        True
    """

    layers: tuple[LayerGene, ...]
    hidden_size: int = 15
    num_heads: int = 3

    def __post_init__(self) -> None:
        layers = tuple(g if isinstance(g, LayerGene) else LayerGene(**g) for g in self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ValueError("a genotype needs at least one layer")
        check_width(self.hidden_size, self.num_heads)
        for i, gene in enumerate(layers):
            if gene.op not in list_ops():
                raise ValueError(f"layer {i}: unknown operation {gene.op!r}; registered: {list_ops()}")
            if not 0 <= gene.input <= i:
                raise ValueError(f"layer {i}: input node {gene.input} is not in 0..{i}")
            if len(set(gene.residual)) != len(gene.residual) or any(not 0 <= r <= i for r in gene.residual):
                raise ValueError(f"layer {i}: residual nodes {gene.residual} must be distinct and in 0..{i}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict."""
        return {"hidden_size": self.hidden_size, "num_heads": self.num_heads,
                "layers": [{"op": g.op, "input": g.input, "residual": list(g.residual)} for g in self.layers]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Genotype:
        """Inverse of ``to_dict``."""
        unknown = set(d) - {"hidden_size", "num_heads", "layers"}
        if unknown:
            raise ValueError(f"unknown Genotype keys {sorted(unknown)}")
        layers: Sequence[Mapping[str, Any]] = d["layers"]
        return cls(tuple(LayerGene(str(g["op"]), int(g["input"]), tuple(g.get("residual", ()))) for g in layers),
                   int(d.get("hidden_size", 15)), int(d.get("num_heads", 3)))

    def to_json(self) -> str:
        """The genotype as a JSON document."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        """Inverse of ``to_json``."""
        return cls.from_dict(json.loads(text))
