"""The search space of the light behavior encoder (paper Fig. 6), as data.

Every architecture of the space is a `longtail.models.genotype.Genotype` (see there for the
layer, input and residual choices); the space fixes the number of layers, the width, the heads
of self-attention and the candidate operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from longtail.models.genotype import Genotype, LayerGene, check_width
from longtail.models.ops import list_ops

__all__ = ["ArchSpace", "Genotype", "LayerGene"]


@dataclass(frozen=True)
class ArchSpace:
    """Search space of one behavior encoder.

    Args:
        num_layers: layers ``N`` (3 for the paper's light model).
        hidden_size: width ``H`` of every layer (15 in the paper).
        num_heads: heads of the self-attention operation; must divide ``H``.
        ops: candidate operation names (default: every registered operation).

    Example:
        >>> space = ArchSpace(num_layers=2, ops=("conv_1", "lstm"))
        >>> ArchSpace.from_dict(space.to_dict()) == space
        True
    """

    num_layers: int = 3
    hidden_size: int = 15
    num_heads: int = 3
    ops: tuple[str, ...] = field(default_factory=lambda: tuple(list_ops()))

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if self.num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        check_width(self.hidden_size, self.num_heads)
        if not self.ops or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops must be a non-empty list of distinct names, got {self.ops}")
        unknown = set(self.ops) - set(list_ops())
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; registered: {list_ops()}")

    def size(self) -> int:
        """Number of architectures in the space."""
        total = 1
        for layer in range(self.num_layers):
            total *= len(self.ops) * (layer + 1) * 2 ** (layer + 1)
        return total

    def contains(self, genotype: Genotype) -> bool:
        """Whether every choice of ``genotype`` is a choice of this space."""
        return (len(genotype.layers) == self.num_layers and genotype.hidden_size == self.hidden_size
                and genotype.num_heads == self.num_heads and all(g.op in self.ops for g in genotype.layers))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict."""
        return {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "num_heads": self.num_heads,
                "ops": list(self.ops)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArchSpace:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError``."""
        unknown = set(d) - {"num_layers", "hidden_size", "num_heads", "ops"}
        if unknown:
            raise ValueError(f"unknown ArchSpace keys {sorted(unknown)}")
        return cls(**dict(d))
