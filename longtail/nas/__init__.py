"""Budget-limited NAS of the light behavior encoder and distillation (paper section III.D).

``space`` (search space and genotypes as data) -> ``ops`` (operation registry) -> ``supernet``
(GDAS sampling and search) -> ``derive`` (exact most probable architecture within a FLOPs
budget) -> ``light`` (standalone encoder and model from a genotype) ; ``distill`` (Eq. 5 loss,
retraining of the derived model).
"""

from longtail.models.light import (
    LightEncoder,
    build_light_encoder,
    build_light_model,
    genotype_flops,
    inherit_weights,
)
from longtail.models.ops import create_op, list_ops, op_flops, register_op
from longtail.nas.derive import (
    Decision,
    Derivation,
    InfeasibleBudgetError,
    brute_force,
    budget_from_reference,
    derive,
    solve,
)
from longtail.nas.distill import distill_loss, teacher_logits, train_light
from longtail.nas.space import ArchSpace, Genotype, LayerGene
from longtail.nas.supernet import SearchConfig, SuperEncoder, build_supernet_model, search

__all__ = [
    "Decision",
    "Derivation",
    "Genotype",
    "InfeasibleBudgetError",
    "LayerGene",
    "LightEncoder",
    "SearchConfig",
    "ArchSpace",
    "SuperEncoder",
    "brute_force",
    "budget_from_reference",
    "build_light_encoder",
    "build_light_model",
    "build_supernet_model",
    "create_op",
    "derive",
    "distill_loss",
    "genotype_flops",
    "inherit_weights",
    "list_ops",
    "op_flops",
    "register_op",
    "search",
    "solve",
    "teacher_logits",
    "train_light",
]
