"""A standalone light behavior encoder (and light model) built from a genotype.

FLOPs per sample of a light encoder at padded length ``T`` (convention of
``longtail.models.flops``):

``2·T·D_in·H`` (projection of the original input, always applied)
``+ sum over layers of op_flops(op, T, H)`` (the input choice and residual adds cost 0:
element-wise) ``+ 2·H·N`` (attention scores of the attentive sum over the ``N`` pooled layer
outputs). The light model adds its profile encoder and head (``linear_flops``), exactly what
``count_flops`` reports for a ``HeavyModel`` carrying these encoders.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from longtail.data.tensors import InputSchema
from longtail.models.encoders import BehaviorEncoder, masked_mean
from longtail.models.fused import LayerNorm, zero_padding
from longtail.models.genotype import Genotype, LayerGene
from longtail.models.heavy import HeavyConfig, HeavyModel, step_input_size
from longtail.models.ops import create_op, op_flops
from longtail.models.registry import register_encoder

__all__ = [
    "AttentiveSum",
    "LightEncoder",
    "SearchedEncoder",
    "build_from_info",
    "build_light_encoder",
    "build_light_model",
    "encoder_fixed_flops",
    "genotype_flops",
    "inherit_weights",
    "searched_config",
]


class AttentiveSum(nn.Module):
    """Attentive sum of layer outputs: masked-mean pool each, score it, softmax over layers.

    Args:
        hidden_size: width ``H``.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, outputs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Args: outputs N x (B, T, H), mask (B, T). Returns: (B, H)."""
        pooled = torch.stack([masked_mean(o, mask) for o in outputs], dim=1)  # (B, N, H)
        weights = torch.softmax(self.score(pooled), dim=1)  # (B, N, 1)
        return (weights * pooled).sum(dim=1)  # (B, H)


def encoder_fixed_flops(input_size: int, seq_len: int, hidden_size: int, num_layers: int) -> int:
    """FLOPs of a searched encoder that do not depend on the genotype.

    Args:
        input_size: step width ``D_in``.
        seq_len: padded length ``T``.
        hidden_size: width ``H``.
        num_layers: ``N``.

    Returns:
        ``2·T·D_in·H + 2·H·N`` (input projection and attentive-sum scores).
    """
    return 2 * seq_len * input_size * hidden_size + 2 * hidden_size * num_layers


def genotype_flops(genotype: Genotype, input_size: int, seq_len: int) -> int:
    """Analytical FLOPs per sample of the encoder a genotype describes.

    Args:
        genotype: the architecture.
        input_size: step width ``D_in``.
        seq_len: padded length ``T``.

    Returns:
        FLOPs per sample.
    """
    H = genotype.hidden_size
    fixed = encoder_fixed_flops(input_size, seq_len, H, len(genotype.layers))
    return fixed + sum(op_flops(g.op, seq_len, H) for g in genotype.layers)


class _LightLayer(nn.Module):
    def __init__(self, op: str, hidden_size: int, num_heads: int):
        super().__init__()
        self.op = create_op(op, hidden_size, num_heads)
        self.norm = LayerNorm(hidden_size)


class LightEncoder(BehaviorEncoder):
    """Behavior encoder of one genotype: ``(B, T, D_in)`` + mask -> ``(B, H)``.

    Module names mirror the supernet's (``proj``, ``layers[l]``, ``readout``) so that weights
    can be inherited from it (``inherit_weights``).

    Args:
        genotype: the architecture.
        input_size: step width ``D_in``.

    Example:
        >>> g = Genotype((LayerGene("conv_3", 0), LayerGene("max_pool_3", 1, (0,))), hidden_size=6)
        >>> LightEncoder(g, 4)(torch.randn(2, 8, 4), torch.ones(2, 8, dtype=torch.bool)).shape  # doctest: +SKIP
        torch.Size([2, 6])
    """

    def __init__(self, genotype: Genotype, input_size: int):
        super().__init__()
        if input_size < 1:
            raise ValueError("input_size must be >= 1")
        H = genotype.hidden_size
        self.genotype = genotype
        self.input_size = input_size
        self.output_size = H
        self.proj = nn.Linear(input_size, H)
        self.layers = nn.ModuleList(_LightLayer(g.op, H, genotype.num_heads) for g in genotype.layers)
        self.readout = AttentiveSum(H)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        nodes = [zero_padding(self.proj(zero_padding(x, mask)), mask)]  # node 0: (B, T, H)
        for gene, layer in zip(self.genotype.layers, self.layers, strict=True):
            out = layer.op(nodes[gene.input], mask)  # (B, T, H)
            for r in gene.residual:
                out = out + nodes[r]
            nodes.append(zero_padding(layer.norm(out), mask))
        return self.readout(nodes[1:], mask)  # (B, H)

    def flops(self, seq_len: int) -> int:
        """See the module docstring: projection + operations + attentive-sum scores."""
        return genotype_flops(self.genotype, self.input_size, seq_len)


@register_encoder("searched")
class SearchedEncoder(LightEncoder):
    """A searched architecture as a registered encoder, so that a ``HeavyConfig`` can name it.

    The NAS-found agnostic heavy model is ``HeavyConfig(encoder="searched")`` with each
    sequence's genotype in ``sequence_overrides[<sequence>]["encoder_kwargs"]["genotype"]``
    (``searched_config``); it is then trained, fine-tuned, stored and served like the pre-defined
    heavy model. Without a genotype, ``num_layers`` ``conv_3`` layers in a chain are built.

    Args:
        input_size: step width ``D_in``.
        genotype: the architecture (``Genotype``, its dict or JSON).
        hidden_size / num_layers / num_heads: shape of the default chain (ignored with a genotype).
    """

    def __init__(self, input_size: int, genotype: Genotype | Mapping | str | None = None, hidden_size: int = 15,
                 num_layers: int = 3, num_heads: int = 3):
        if genotype is None:
            genotype = Genotype(tuple(LayerGene("conv_3", i) for i in range(num_layers)), hidden_size, num_heads)
        elif isinstance(genotype, str):
            genotype = Genotype.from_json(genotype)
        elif not isinstance(genotype, Genotype):
            genotype = Genotype.from_dict(genotype)
        super().__init__(genotype, input_size)


def searched_config(base: HeavyConfig, genotypes: Mapping[str, Genotype]) -> HeavyConfig:
    """The ``HeavyConfig`` of a model whose behavior encoders are the given searched genotypes.

    Args:
        base: profile encoder, head and embedding settings.
        genotypes: sequence name -> genotype.

    Returns:
        ``base`` with ``encoder="searched"`` and one genotype per sequence in ``sequence_overrides``.
    """
    import dataclasses

    return dataclasses.replace(
        base, encoder="searched", encoder_kwargs={},
        sequence_overrides={name: {"encoder_kwargs": {"genotype": g.to_dict()}} for name, g in genotypes.items()})


def build_light_encoder(genotype: Genotype | Mapping | str, input_size: int) -> LightEncoder:
    """Build a standalone encoder from a genotype (object, dict or JSON text).

    Args:
        genotype: the architecture.
        input_size: step width ``D_in`` (``step_input_size(seq, config)``).

    Returns:
        A fresh (randomly initialised) ``LightEncoder``.
    """
    if isinstance(genotype, str):
        genotype = Genotype.from_json(genotype)
    elif isinstance(genotype, Mapping):
        genotype = Genotype.from_dict(genotype)
    return LightEncoder(genotype, input_size)


def build_light_model(schema: InputSchema, config: HeavyConfig, genotypes: Mapping[str, Genotype]) -> HeavyModel:
    """The light model: the heavy model's profile encoder and head, one searched encoder per sequence.

    Args:
        schema: input shapes.
        config: profile/head widths and embeddings (its encoder settings are not used).
        genotypes: sequence name -> genotype (every sequence of the schema).

    Returns:
        A ``HeavyModel`` whose behavior encoders are ``LightEncoder`` s.
    """
    missing = {s.name for s in schema.sequences} - set(genotypes)
    if missing:
        raise ValueError(f"no genotype for sequences {sorted(missing)}")
    encoders = {s.name: build_light_encoder(genotypes[s.name], step_input_size(s, config))
                for s in schema.sequences}
    return HeavyModel(schema, config, encoders)


def inherit_weights(light: nn.Module, supernet: nn.Module) -> None:
    """Copy the supernet's weights of the chosen operations into a light model (in place).

    Works on two ``HeavyModel`` s (light and supernet model) or on two encoders. Parameters of
    the light model are named like the supernet's, with ``layers.<l>.op.`` standing for
    ``layers.<l>.ops.<name>.``; architecture logits are ignored.

    Args:
        light: the light model or encoder (its genotypes tell which operation was chosen).
        supernet: the supernet model or encoder.
    """
    source = supernet.state_dict()
    target = light.state_dict()
    ops_of: dict[str, list[str]] = {}
    for name, module in light.named_modules():
        if isinstance(module, LightEncoder):
            ops_of[name] = [g.op for g in module.genotype.layers]
    for key in target:
        src = key
        for prefix, ops in ops_of.items():
            base = f"{prefix}." if prefix else ""
            for layer, op in enumerate(ops):
                head = f"{base}layers.{layer}.op."
                if key.startswith(head):
                    src = f"{base}layers.{layer}.ops.{op}." + key[len(head):]
        if src not in source or source[src].shape != target[key].shape:
            raise ValueError(f"supernet has no parameter {src!r} of shape {tuple(target[key].shape)}")
        target[key] = source[src].clone()
    light.load_state_dict(target)


def build_from_info(schema: InputSchema, info: Mapping) -> HeavyModel:
    """Rebuild a light model from its folder's ``model.json`` (``config`` and per-sequence ``genotypes``).

    The builder ``longtail.model_folder.load_model_dir`` uses for folders of kind ``light``.
    """
    genotypes = {name: Genotype.from_dict(g) for name, g in info["genotypes"].items()}
    return build_light_model(schema, HeavyConfig.from_dict(info["config"]), genotypes)
