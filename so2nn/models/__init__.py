"""Reference models built from :mod:`so2nn.layers`, their output heads, and the model protocol
that training, checkpoints and the calculator rely on."""

from ._checkpoint import atomic_save, load_checkpoint, load_model, model_checkpoint, upgrade_checkpoint
from ._compile import compile_model, configure_compile
from ._compiled import CompiledModel
from ._config import FLAT_STRESS_KEYS, PRESETS, EquiformerV2Config, StressConfig, preset
from ._dens import DenoisingEmbedding, DenoisingForceHead
from ._equiformer_v2 import EquiformerV2, TransformerBlock
from ._evaluation import evaluation_model
from ._heads import EnergyHead, ForceHead
from ._inputs import INPUT_FIELDS, TARGET_AND_METADATA_FIELDS, AtomicInputs, read_inputs
from ._padding import PADDING_ATOMIC_NUMBER, Padding, SizeBuckets, bucket_size, pad_inputs, unpad_outputs
from ._protocol import AtomisticModel, ModelConfig, TargetStatistics, target_statistics_fields
from ._registry import (
    Importer,
    build_model,
    config_from_dict,
    load_weights,
    model_class,
    model_type,
    register_importer,
    register_model,
    registered_importers,
    registered_models,
)
from ._stress_heads import (
    STRESS_BASIS,
    STRESS_HEADS,
    DecomposedStressHead,
    EquivariantStressHead,
    GatedTensorMLP,
    Rank2StressHead,
    StressHead,
    StressStatistics,
)
from .fairchem import FAIRCHEM_IGNORED_KEYS

__all__ = [
    "atomic_save",
    "config_from_dict",
    "load_checkpoint",
    "model_checkpoint",
    "FAIRCHEM_IGNORED_KEYS",
    "FLAT_STRESS_KEYS",
    "INPUT_FIELDS",
    "PADDING_ATOMIC_NUMBER",
    "PRESETS",
    "STRESS_BASIS",
    "STRESS_HEADS",
    "TARGET_AND_METADATA_FIELDS",
    "AtomicInputs",
    "AtomisticModel",
    "DecomposedStressHead",
    "CompiledModel",
    "DenoisingEmbedding",
    "DenoisingForceHead",
    "EnergyHead",
    "EquiformerV2",
    "EquiformerV2Config",
    "EquivariantStressHead",
    "ForceHead",
    "GatedTensorMLP",
    "Importer",
    "ModelConfig",
    "Rank2StressHead",
    "StressConfig",
    "Padding",
    "SizeBuckets",
    "StressHead",
    "StressStatistics",
    "TargetStatistics",
    "TransformerBlock",
    "bucket_size",
    "build_model",
    "compile_model",
    "configure_compile",
    "evaluation_model",
    "load_model",
    "load_weights",
    "model_class",
    "model_type",
    "pad_inputs",
    "preset",
    "read_inputs",
    "register_importer",
    "register_model",
    "registered_importers",
    "registered_models",
    "target_statistics_fields",
    "unpad_outputs",
    "upgrade_checkpoint",
]
