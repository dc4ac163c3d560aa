"""Reference models built from :mod:`so2nn.layers`, their output heads, and the model protocol
that training, checkpoints and the calculator rely on."""

from ._checkpoint import upgrade_checkpoint
from ._compiled import CompiledModel
from ._config import PRESETS, EquiformerV2Config, preset
from ._dens import DenoisingEmbedding, DenoisingForceHead
from ._equiformer_v2 import EquiformerV2, TransformerBlock
from ._fairchem import FAIRCHEM_IGNORED_KEYS
from ._heads import STRESS_BASIS, EnergyHead, ForceHead, GatedTensorMLP, StressHead
from ._inputs import INPUT_FIELDS, TARGET_AND_METADATA_FIELDS, AtomicInputs, read_inputs
from ._padding import PADDING_ATOMIC_NUMBER, Padding, SizeBuckets, bucket_size, pad_inputs, unpad_outputs
from ._protocol import AtomisticModel, ModelConfig, TargetStatistics
from ._registry import (
    build_model,
    load_model,
    load_weights,
    model_class,
    model_type,
    register_model,
    registered_models,
)

__all__ = [
    "FAIRCHEM_IGNORED_KEYS",
    "INPUT_FIELDS",
    "PADDING_ATOMIC_NUMBER",
    "PRESETS",
    "STRESS_BASIS",
    "TARGET_AND_METADATA_FIELDS",
    "AtomicInputs",
    "AtomisticModel",
    "CompiledModel",
    "DenoisingEmbedding",
    "DenoisingForceHead",
    "EnergyHead",
    "EquiformerV2",
    "EquiformerV2Config",
    "ForceHead",
    "GatedTensorMLP",
    "ModelConfig",
    "Padding",
    "SizeBuckets",
    "StressHead",
    "TargetStatistics",
    "TransformerBlock",
    "bucket_size",
    "build_model",
    "load_model",
    "load_weights",
    "model_class",
    "model_type",
    "pad_inputs",
    "preset",
    "read_inputs",
    "register_model",
    "registered_models",
    "unpad_outputs",
    "upgrade_checkpoint",
]
