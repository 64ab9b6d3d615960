"""The heavy model of the paper's Fig. 2: profile encoder ∥ behavior encoders -> prediction head.

```
profile_num, profile_cat ──► profile_encoder (embeddings ∥ numerics -> MLP) ──────────┐
seq_num[s], seq_cat[s], seq_mask[s] ──► behavior_encoders[s] (step embeddings -> encoder) ─┤ concat
                                                                                      └─► head (MLP) -> logit
```

The behavior encoder of each sequence comes from the registry (``HeavyConfig.encoder``), or is
passed in already built (``encoders=``), which is how a searched (NAS) encoder is plugged into
the same profile encoder and head. With ``num_layers=3`` the same class is the paper's
pre-defined light model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from longtail.data.tensors import PAD_INDEX, Batch, InputSchema, SequenceSchema
from longtail.models.dropout import Dropout
from longtail.models.fused import zero_padding
from longtail.models.numeric import PiecewiseLinearEmbedding
from longtail.models.registry import create_encoder, encoder_class, encoder_parameters

__all__ = [
    "HeavyConfig",
    "HeavyModel",
    "ProfileEncoder",
    "SequenceEncoder",
    "build_behavior_encoder",
    "build_model",
    "default_embedding_dim",
    "mlp",
    "numeric_embedding",
    "step_input_size",
]

# settings shared by all encoders (each encoder receives those its constructor takes)
SHARED_ENCODER_SETTINGS = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "dropout")
_OVERRIDABLE = frozenset(("encoder", "encoder_kwargs", *SHARED_ENCODER_SETTINGS))
NUMERIC_EMBEDDINGS = ("none", "ple")


def _dims(value: Any) -> tuple[int, ...]:
    # Fig. 3 of the paper writes layer widths as strings: "64, 16"
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    dims = tuple(int(v) for v in value)
    if any(d < 1 for d in dims):
        raise ValueError(f"layer widths must be >= 1, got {dims}")
    return dims


def _check_encoder(where: str, settings: Mapping[str, Any]) -> None:
    """The encoder a config names is registered, and its attention heads divide its width."""
    name = settings["encoder"]
    encoder_class(name)  # UnknownEncoderError (a ValueError) lists the registered names
    takes = encoder_parameters(name)
    if "num_heads" in takes and "hidden_size" in takes and "genotype" not in takes:
        heads, hidden = int(settings["num_heads"]), int(settings["hidden_size"])
        if hidden % heads:
            divisors = [d for d in range(1, hidden + 1) if hidden % d == 0]
            raise ValueError(f"{where}num_heads={heads} does not divide {where}hidden_size={hidden} (encoder "
                             f"{name!r} splits its width over its heads); use num_heads in {divisors} or another "
                             "hidden_size")


@dataclass(frozen=True)
class HeavyConfig:
    """Architecture of a heavy (or pre-defined light) model.

    Args:
        encoder: registered behavior-encoder name (``"lstm"`` or ``"bert"``, see ``list_encoders()``).
        num_layers: encoder layers (paper: 6 heavy, 3 light).
        hidden_size: encoder width (paper: 15).
        intermediate_size: FFN width of Transformer encoders (paper: 32).
        num_heads: attention heads; must divide ``hidden_size``.
        dropout: dropout in encoders and MLPs.
        profile_dims: widths of the profile MLP (a "64,16" string is accepted).
        head_dims: hidden widths of the prediction MLP before the single logit.
        cat_embedding_dim: one embedding width for every categorical field; ``None`` uses
            ``default_embedding_dim(cardinality, max_cat_embedding_dim)``.
        max_cat_embedding_dim: cap of the default embedding width rule.
        numeric_embedding: how numeric inputs (profile and step numerics) enter the model:
            ``"none"`` as they are; ``"ple"`` through a piecewise-linear embedding over the bin
            edges fitted with the transforms (`longtail.models.numeric`), ``numeric_embedding_dim``
            outputs per numeric input.
        numeric_embedding_dim: output width per numeric input of the ``"ple"`` embedding.
        encoder_kwargs: extra constructor arguments of the encoder, passed as they are.
        sequence_overrides: sequence name -> overrides of ``encoder``, ``encoder_kwargs`` or
            any shared encoder setting for that sequence only.

    Example:
        >>> cfg = HeavyConfig(encoder="bert", num_layers=6, hidden_size=15, intermediate_size=32)
        >>> HeavyConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    encoder: str = "lstm"
    num_layers: int = 6
    hidden_size: int = 15
    intermediate_size: int = 32
    num_heads: int = 3
    dropout: float = 0.1
    profile_dims: tuple[int, ...] = (64, 16)
    head_dims: tuple[int, ...] = (64, 8)
    cat_embedding_dim: int | None = None
    max_cat_embedding_dim: int = 16
    numeric_embedding: str = "none"
    numeric_embedding_dim: int = 8
    encoder_kwargs: Mapping[str, Any] = field(default_factory=dict)
    sequence_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "profile_dims", _dims(self.profile_dims))
        set_(self, "head_dims", _dims(self.head_dims))
        set_(self, "encoder_kwargs", dict(self.encoder_kwargs))
        set_(self, "sequence_overrides", {str(k): dict(v) for k, v in self.sequence_overrides.items()})
        if self.num_layers < 1 or self.hidden_size < 1 or self.intermediate_size < 1 or self.num_heads < 1:
            raise ValueError("num_layers, hidden_size, intermediate_size and num_heads must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.cat_embedding_dim is not None and self.cat_embedding_dim < 1:
            raise ValueError("cat_embedding_dim must be >= 1 or None")
        if self.numeric_embedding not in NUMERIC_EMBEDDINGS:
            raise ValueError(f"numeric_embedding={self.numeric_embedding!r} is not one of {list(NUMERIC_EMBEDDINGS)}")
        if isinstance(self.numeric_embedding_dim, bool) or not isinstance(self.numeric_embedding_dim, int) \
                or self.numeric_embedding_dim < 1:
            raise ValueError(f"numeric_embedding_dim must be an int >= 1, got {self.numeric_embedding_dim!r}")
        for name, overrides in self.sequence_overrides.items():
            unknown = set(overrides) - _OVERRIDABLE
            if unknown:
                raise ValueError(
                    f"sequence_overrides[{name!r}] has unknown keys {sorted(unknown)}; "
                    f"allowed: {sorted(_OVERRIDABLE)}"
                )
        for where, settings in (("", self.__dict__), *((f"sequence_overrides[{n!r}].", {**self.__dict__, **o})
                                                        for n, o in self.sequence_overrides.items())):
            _check_encoder(where, settings)

    def encoder_settings(self, sequence: str) -> tuple[str, dict[str, Any]]:
        """Encoder name and keyword arguments for one sequence (overrides applied).

        Args:
            sequence: sequence name.

        Returns:
            ``(encoder name, kwargs)``; kwargs hold the shared settings the encoder's
            constructor accepts plus ``encoder_kwargs``, without ``input_size``/``max_length``.
        """
        overrides = dict(self.sequence_overrides.get(sequence, {}))
        name = overrides.pop("encoder", self.encoder)
        extra = {**self.encoder_kwargs, **overrides.pop("encoder_kwargs", {})}
        shared = {k: overrides.get(k, getattr(self, k)) for k in SHARED_ENCODER_SETTINGS}
        accepted = encoder_parameters(name)
        kwargs = {k: v for k, v in shared.items() if k in accepted or "**" in accepted}
        return name, {**kwargs, **extra}

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-safe dict (lists, not tuples)."""
        d = asdict(self)
        d["profile_dims"] = list(self.profile_dims)
        d["head_dims"] = list(self.head_dims)
        d["encoder_kwargs"] = dict(self.encoder_kwargs)
        d["sequence_overrides"] = {k: dict(v) for k, v in self.sequence_overrides.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeavyConfig:
        """Inverse of ``to_dict``; missing keys take defaults, unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown HeavyConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))


def default_embedding_dim(cardinality: int, max_dim: int = 16) -> int:
    """Embedding width for a categorical field: ``min(max_dim, round(1.6 * cardinality ** 0.56))``.

    Args:
        cardinality: table size (padding and OOV included).
        max_dim: cap.

    Returns:
        A width >= 1.
    """
    return max(1, min(max_dim, round(1.6 * cardinality**0.56)))


def _embedding_dim(cardinality: int, config: HeavyConfig) -> int:
    if config.cat_embedding_dim is not None:
        return config.cat_embedding_dim
    return default_embedding_dim(cardinality, config.max_cat_embedding_dim)


def numeric_embedding(n_numeric: int, edges: Sequence[Sequence[float]], config: HeavyConfig,
                      where: str) -> PiecewiseLinearEmbedding | None:
    """The embedding of ``n_numeric`` numeric inputs that ``config`` asks for (``None``: passed as they are).

    Args:
        n_numeric: numeric inputs.
        edges: their bin edges (the schema's; ``()`` when the transforms have none).
        config: model config (``numeric_embedding``, ``numeric_embedding_dim``).
        where: what the inputs are, for the error message.

    Raises:
        ValueError: ``numeric_embedding="ple"`` and the schema has no bin edges for these inputs.
    """
    if config.numeric_embedding == "none" or n_numeric == 0:
        return None
    if not edges:
        raise ValueError(f"numeric_embedding='ple' needs bin edges of the {where}, and the schema has none: its "
                         "transforms were fitted before bin edges existed; retrain the model (refitting the "
                         "transforms) or use numeric_embedding='none'")
    return PiecewiseLinearEmbedding(edges, config.numeric_embedding_dim)


def _numeric_width(n_numeric: int, edges: Sequence[Sequence[float]], config: HeavyConfig, where: str) -> int:
    if config.numeric_embedding == "none" or n_numeric == 0:
        return n_numeric
    if not edges:
        numeric_embedding(n_numeric, edges, config, where)  # raises the error
    return n_numeric * config.numeric_embedding_dim  # PiecewiseLinearEmbedding.output_size


def step_input_size(seq: SequenceSchema, config: HeavyConfig) -> int:
    """Width ``D_in`` of one embedded step of ``seq`` (what its behavior encoder receives).

    Args:
        seq: the sequence's schema.
        config: model config (embedding widths, numeric embedding).

    Returns:
        Sum of the step embedding widths plus the width of the step numerics (the numeric inputs
        themselves, or ``numeric_embedding_dim`` per input with ``numeric_embedding="ple"``).
    """
    num = _numeric_width(seq.n_numeric, seq.numeric_edges, config, f"numeric inputs of sequence {seq.name!r}")
    return num + sum(_embedding_dim(c, config) for c in seq.cat_cardinalities)


def mlp(in_size: int, dims: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> ReLU -> Dropout`` per width in ``dims`` (`longtail.models.dropout.Dropout`).

    Args:
        in_size: input width.
        dims: layer widths.
        dropout: dropout probability after each activation.

    Returns:
        The stack (its output width is ``dims[-1]``, or ``in_size`` when ``dims`` is empty).
    """
    layers: list[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(in_size, d), nn.ReLU()]
        if dropout > 0:
            layers.append(Dropout(dropout))
        in_size = d
    return nn.Sequential(*layers)


def build_behavior_encoder(seq: SequenceSchema, config: HeavyConfig) -> nn.Module:
    """The registry encoder that ``config`` names for ``seq`` (overrides applied).

    Args:
        seq: the sequence's schema (gives the step width and ``max_length``).
        config: model config.

    Returns:
        The encoder core, taking ``(B, T, step_input_size(seq, config))`` and a ``(B, T)`` mask.
    """
    name, kwargs = config.encoder_settings(seq.name)
    kwargs["input_size"] = step_input_size(seq, config)
    accepted = encoder_parameters(name)
    if "max_length" in accepted or "**" in accepted:
        kwargs.setdefault("max_length", seq.max_length)
    return create_encoder(name, **kwargs)


class ProfileEncoder(nn.Module):
    """Profile encoding module: categorical embeddings ∥ numerics (or their embedding) -> MLP.

    Args:
        n_numeric: numeric profile inputs ``P``.
        cat_cardinalities: table size per categorical profile feature.
        dims: MLP widths.
        config: model config (embedding widths, numeric embedding, dropout).
        numeric_edges: bin edges of the numeric inputs (``InputSchema.profile_numeric_edges``),
            needed with ``numeric_embedding="ple"``.
    """

    def __init__(self, n_numeric: int, cat_cardinalities: Sequence[int], dims: Sequence[int],
                 config: HeavyConfig, numeric_edges: Sequence[Sequence[float]] = ()):
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(c, _embedding_dim(c, config), padding_idx=PAD_INDEX) for c in cat_cardinalities
        )
        numeric = numeric_embedding(n_numeric, numeric_edges, config, "numeric profile inputs")
        self.numeric = numeric  # None: not a submodule, the state dict of a model without it is unchanged
        self.input_size = (numeric.output_size if numeric is not None else n_numeric) + sum(
            e.embedding_dim for e in self.embeddings)
        if self.input_size < 1:
            raise ValueError("the profile has no input (no numeric and no categorical feature)")
        self.mlp = mlp(self.input_size, dims, config.dropout)
        self.output_size = dims[-1] if dims else self.input_size

    def forward(self, profile_num: torch.Tensor, profile_cat: torch.Tensor) -> torch.Tensor:
        """Args: profile_num (B, P) float, profile_cat (B, C) long. Returns: (B, output_size)."""
        parts = [emb(profile_cat[:, i]) for i, emb in enumerate(self.embeddings)]  # C x (B, E_i)
        if self.numeric is not None:
            profile_num = self.numeric(profile_num)  # (B, P * numeric_embedding_dim)
        return self.mlp(torch.cat([*parts, profile_num], dim=-1))  # (B, P' + sum E_i) -> (B, out)


class SequenceEncoder(nn.Module):
    """Behavior encoding of one sequence: step embeddings ∥ step numerics (or their embedding) -> ``encoder``.

    Args:
        seq: the sequence's schema.
        config: model config (embedding widths, numeric embedding).
        encoder: a behavior encoder taking ``(B, T, step_input_size(seq, config))`` and a mask.
    """

    def __init__(self, seq: SequenceSchema, config: HeavyConfig, encoder: nn.Module):
        super().__init__()
        self.step_embeddings = nn.ModuleList(
            nn.Embedding(c, _embedding_dim(c, config), padding_idx=PAD_INDEX) for c in seq.cat_cardinalities
        )
        numeric = numeric_embedding(seq.n_numeric, seq.numeric_edges, config,
                                    f"numeric inputs of sequence {seq.name!r}")
        self.numeric = numeric  # None: not a submodule, the state dict of a model without it is unchanged
        self.input_size = step_input_size(seq, config)
        self.max_length = seq.max_length
        enc_in = getattr(encoder, "input_size", self.input_size)
        if enc_in != self.input_size:
            raise ValueError(f"encoder of sequence {seq.name!r} takes width {enc_in}, steps have {self.input_size}")
        if not isinstance(getattr(encoder, "output_size", None), int):
            raise TypeError(f"encoder of sequence {seq.name!r} must have an int attribute output_size")
        self.encoder = encoder
        self.output_size: int = encoder.output_size

    def forward(self, seq_num: torch.Tensor, seq_cat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: seq_num (B, T, Fn), seq_cat (B, T, Fc), mask (B, T). Returns: (B, output_size)."""
        parts = [emb(seq_cat[..., i]) for i, emb in enumerate(self.step_embeddings)]  # Fc x (B, T, E_i)
        if self.numeric is not None:
            seq_num = self.numeric(seq_num)  # (B, T, Fn * numeric_embedding_dim)
        x = torch.cat([*parts, seq_num], dim=-1)  # (B, T, D_in)
        x = zero_padding(x, mask)  # encoders mask too; this keeps NAS encoders safe
        return self.encoder(x, mask)  # (B, H)


class HeavyModel(nn.Module):
    """Fig. 2 of the paper: ``head(profile_encoder(profile) ∥ behavior_encoders[s](seq s) ...)``.

    Args:
        schema: input shapes and vocabularies.
        config: architecture; defaults to ``HeavyConfig()`` (6-layer LSTM, hidden 15).
        encoders: optional sequence name -> already built behavior encoder (e.g. a searched one);
            sequences not named get the registry encoder of ``config``.

    Example:
        >>> model = HeavyModel(schema, HeavyConfig(encoder="bert"))  # doctest: +SKIP
        >>> logits = model(batch)  # (B,)  # doctest: +SKIP
    """

    def __init__(self, schema: InputSchema, config: HeavyConfig | None = None,
                 encoders: Mapping[str, nn.Module] | None = None):
        super().__init__()
        config = config or HeavyConfig()
        encoders = dict(encoders or {})
        names = [s.name for s in schema.sequences]
        unknown = set(encoders) - set(names) | set(config.sequence_overrides) - set(names)
        if unknown:
            raise ValueError(f"unknown sequence names {sorted(unknown)}; schema has {names}")
        self.schema = schema
        self.config = config
        self.profile_encoder = ProfileEncoder(
            schema.n_profile_numeric, schema.profile_cat_cardinalities, config.profile_dims, config,
            schema.profile_numeric_edges,
        )
        self.behavior_encoders = nn.ModuleDict()
        for seq in schema.sequences:
            if "." in seq.name or not seq.name:
                raise ValueError(f"sequence name {seq.name!r} cannot name a submodule")
            encoder = encoders.get(seq.name)
            if encoder is None:
                encoder = build_behavior_encoder(seq, config)
            self.behavior_encoders[seq.name] = SequenceEncoder(seq, config, encoder)
        head_in = self.profile_encoder.output_size + sum(e.output_size for e in self.behavior_encoders.values())
        self.head = nn.Sequential(
            mlp(head_in, config.head_dims, config.dropout),
            nn.Linear(config.head_dims[-1] if config.head_dims else head_in, 1),
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits of the positive class.

        Args:
            batch: input tensors (labels are not used).

        Returns:
            (B,) float logits.
        """
        parts = [self.profile_encoder(batch.profile_num, batch.profile_cat)]  # (B, E_p)
        for name, enc in self.behavior_encoders.items():
            parts.append(enc(batch.seq_num[name], batch.seq_cat[name], batch.seq_mask[name]))  # (B, H_s)
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)  # (B,)

    def describe(self) -> dict[str, Any]:
        """Parameter counts and architecture, as a plain (YAML-safe) dict."""

        def n_params(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        sequences = {}
        for name, enc in self.behavior_encoders.items():
            sequences[name] = {
                "encoder": getattr(enc.encoder, "registry_name", type(enc.encoder).__name__),
                "input_size": enc.input_size,
                "output_size": enc.output_size,
                "max_length": enc.max_length,
                "n_parameters": n_params(enc),
            }
        return {
            "n_parameters": n_params(self),
            "n_parameters_by_part": {
                "profile_encoder": n_params(self.profile_encoder),
                **{f"behavior_encoders.{k}": v["n_parameters"] for k, v in sequences.items()},
                "head": n_params(self.head),
            },
            "profile_input_size": self.profile_encoder.input_size,
            "behavior_encoders": sequences,
            "config": self.config.to_dict(),
            "schema": self.schema.to_dict(),
        }


def build_model(schema: InputSchema, config: HeavyConfig | None = None,
                encoders: Mapping[str, nn.Module] | None = None) -> HeavyModel:
    """Build a heavy model, checking the encoder name first (clear error for a typo).

    Args:
        schema: input shapes and vocabularies.
        config: architecture (default ``HeavyConfig()``).
        encoders: optional prebuilt behavior encoders by sequence name.

    Returns:
        The model, in training mode.
    """
    config = config or HeavyConfig()
    encoder_class(config.encoder)
    for overrides in config.sequence_overrides.values():
        if "encoder" in overrides:
            encoder_class(overrides["encoder"])
    return HeavyModel(schema, config, encoders)
