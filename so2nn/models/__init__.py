"""Reference models built from :mod:`so2nn.layers`, their output heads, and the model protocol
that training, checkpoints and the calculator rely on."""

from ._checkpoint import upgrade_checkpoint
from ._config import PRESETS, EquiformerV2Config, preset
from ._dens import DenoisingEmbedding, DenoisingForceHead
from ._equiformer_v2 import EquiformerV2, TransformerBlock
from ._fairchem import FAIRCHEM_IGNORED_KEYS
from ._heads import STRESS_BASIS, EnergyHead, ForceHead, GatedTensorMLP, StressHead
from ._inputs import INPUT_FIELDS, TARGET_AND_METADATA_FIELDS, AtomicInputs, read_inputs
from ._protocol import AtomisticModel, ModelConfig, TargetStatistics, target_statistics_fields
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
    "PRESETS",
    "STRESS_BASIS",
    "TARGET_AND_METADATA_FIELDS",
    "AtomicInputs",
    "AtomisticModel",
    "DenoisingEmbedding",
    "DenoisingForceHead",
    "EnergyHead",
    "EquiformerV2",
    "EquiformerV2Config",
    "ForceHead",
    "GatedTensorMLP",
    "ModelConfig",
    "StressHead",
    "TargetStatistics",
    "TransformerBlock",
    "build_model",
    "load_model",
    "load_weights",
    "model_class",
    "model_type",
    "preset",
    "read_inputs",
    "register_model",
    "registered_models",
    "target_statistics_fields",
    "upgrade_checkpoint",
]
