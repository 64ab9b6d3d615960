"""Models: behavior-encoder registry, the heavy model of Fig. 2, FLOPs and latency.

Importing the package (any of its modules) registers the built-in encoders (``lstm``, ``bert``,
``flat``, and ``searched``, the light encoder of a genotype).
"""

from longtail.models.encoders import BehaviorEncoder, BertEncoder, FlatEncoder, LSTMEncoder
from longtail.models.flops import count_flops, encoder_flops, linear_flops
from longtail.models.heavy import (
    HeavyConfig,
    HeavyModel,
    ProfileEncoder,
    SequenceEncoder,
    build_behavior_encoder,
    build_model,
    default_embedding_dim,
    step_input_size,
)
from longtail.models.latency import measure_latency
from longtail.models.light import LightEncoder, SearchedEncoder
from longtail.models.numeric import PiecewiseLinearEmbedding
from longtail.models.registry import (
    UnknownEncoderError,
    create_encoder,
    encoder_class,
    list_encoders,
    register_encoder,
)

__all__ = [
    "BehaviorEncoder",
    "BertEncoder",
    "FlatEncoder",
    "HeavyConfig",
    "HeavyModel",
    "LSTMEncoder",
    "LightEncoder",
    "PiecewiseLinearEmbedding",
    "ProfileEncoder",
    "SearchedEncoder",
    "SequenceEncoder",
    "UnknownEncoderError",
    "build_behavior_encoder",
    "build_model",
    "count_flops",
    "create_encoder",
    "default_embedding_dim",
    "encoder_class",
    "encoder_flops",
    "linear_flops",
    "list_encoders",
    "measure_latency",
    "register_encoder",
    "step_input_size",
]
