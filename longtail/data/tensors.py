"""The tensor form of a prepared dataset: what every model consumes.

`InputSchema` tells a model the shapes and vocabulary sizes of its inputs (it comes from the
fitted transforms, never from a dataset directly); `Batch` holds the tensors of a set of rows.
Categorical index 0 is padding, 1 is the out-of-vocabulary bucket, known values start at 2.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

PAD_INDEX = 0
OOV_INDEX = 1

Edges = tuple[tuple[float, ...], ...]


def _edges(value, n_columns: int, where: str) -> Edges:
    """Per-column bin edges as tuples of floats: ``()`` (none known) or one tuple per numeric column."""
    edges = tuple(tuple(float(e) for e in col) for col in value)
    if edges and len(edges) != n_columns:
        raise ValueError(f"{where}: {len(edges)} columns of bin edges for {n_columns} numeric inputs; "
                         "give one (possibly empty) list of edges per numeric input, or none at all")
    for col in edges:
        if any(b <= a for a, b in zip(col, col[1:], strict=False)):
            raise ValueError(f"{where}: bin edges {list(col)} are not strictly increasing; refit the transforms")
    return edges


@dataclass(frozen=True)
class SequenceSchema:
    """Shapes of one behavior sequence.

    Args:
        name: sequence name (as in the spec).
        n_numeric: numeric inputs per step (normalised fields, missing flags, derived hours_before).
        cat_cardinalities: embedding table size per categorical step field (padding and OOV included).
        max_length: padded length T.
        numeric_edges: bin edges of each numeric input (in the order of ``seq_num``'s last axis; a
            missing flag has none), or ``()`` when the transforms were fitted before edges existed.
    """

    name: str
    n_numeric: int
    cat_cardinalities: tuple[int, ...]
    max_length: int
    numeric_edges: Edges = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "numeric_edges",
                           _edges(self.numeric_edges, self.n_numeric, f"sequence {self.name!r} numeric_edges"))


@dataclass(frozen=True)
class InputSchema:
    """Shapes of the model inputs.

    Args:
        n_profile_numeric: numeric profile inputs (normalised values and missing indicators).
        profile_cat_cardinalities: embedding table size per categorical profile feature.
        sequences: one entry per behavior sequence, in spec order.
        profile_numeric_edges: bin edges of each numeric profile input (in the order of
            ``profile_num``'s columns; a missing flag has none), or ``()`` when the transforms were
            fitted before edges existed.
    """

    n_profile_numeric: int
    profile_cat_cardinalities: tuple[int, ...]
    sequences: tuple[SequenceSchema, ...]
    profile_numeric_edges: Edges = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "profile_numeric_edges",
                           _edges(self.profile_numeric_edges, self.n_profile_numeric, "profile_numeric_edges"))

    def to_dict(self) -> dict:
        return {
            "n_profile_numeric": self.n_profile_numeric,
            "profile_cat_cardinalities": list(self.profile_cat_cardinalities),
            "sequences": [
                {"name": s.name, "n_numeric": s.n_numeric, "cat_cardinalities": list(s.cat_cardinalities),
                 "max_length": s.max_length, "numeric_edges": [list(e) for e in s.numeric_edges]}
                for s in self.sequences
            ],
            "profile_numeric_edges": [list(e) for e in self.profile_numeric_edges],
        }

    @classmethod
    def from_dict(cls, d: dict) -> InputSchema:
        """Inverse of ``to_dict``; a dict written before bin edges existed loads with none."""
        return cls(
            n_profile_numeric=int(d["n_profile_numeric"]),
            profile_cat_cardinalities=tuple(int(x) for x in d["profile_cat_cardinalities"]),
            sequences=tuple(
                SequenceSchema(s["name"], int(s["n_numeric"]), tuple(int(x) for x in s["cat_cardinalities"]),
                               int(s["max_length"]), s.get("numeric_edges", ()))
                for s in d["sequences"]
            ),
            profile_numeric_edges=d.get("profile_numeric_edges", ()),
        )


@dataclass
class Batch:
    """Tensors of a set of rows.

    Attributes:
        profile_num: (B, P) float32 normalised numerics and missing indicators.
        profile_cat: (B, C) int64 category indices.
        seq_num: name -> (B, T, Fn) float32 per-step numerics (zeros at padding).
        seq_cat: name -> (B, T, Fc) int64 per-step categories (PAD_INDEX at padding).
        seq_mask: name -> (B, T) bool, True at real steps. A row may have no step at all.
        label: (B,) float32 in {0, 1}.
        scenario: (B,) int64 scenario index (into the transforms' scenario list).
        teacher_logits: (B,) float32 logits of a distillation teacher on these rows, computed once
            for all epochs (`longtail.nas.distill.with_teacher_logits`), or ``None``.
    """

    profile_num: torch.Tensor
    profile_cat: torch.Tensor
    seq_num: dict[str, torch.Tensor]
    seq_cat: dict[str, torch.Tensor]
    seq_mask: dict[str, torch.Tensor]
    label: torch.Tensor
    scenario: torch.Tensor
    teacher_logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def _map(self, fn) -> Batch:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = {k: fn(t) for k, t in v.items()} if isinstance(v, dict) else fn(v)
        return replace(self, **out)

    def index(self, idx: torch.Tensor | slice) -> Batch:
        """Rows ``idx`` of this batch (a tensor of row indices or a slice)."""
        return self._map(lambda t: t[idx])

    def to(self, device: torch.device | str) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        """The rows of ``batches`` one after the other (``teacher_logits`` kept only when every batch has them)."""
        first = batches[0]
        out = {}
        for f in fields(first):
            v = getattr(first, f.name)
            if any(getattr(b, f.name) is None for b in batches):
                out[f.name] = None
            elif isinstance(v, dict):
                out[f.name] = {k: torch.cat([getattr(b, f.name)[k] for b in batches]) for k in v}
            else:
                out[f.name] = torch.cat([getattr(b, f.name) for b in batches])
        return Batch(**out)
