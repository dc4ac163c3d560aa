"""Import of checkpoints of the reference implementation (fairchem's EquiformerV2).

Reads the checkpoint format only: no fairchem import. A checkpoint is read once into a
:class:`FairchemCheckpoint` (:func:`read_fairchem_checkpoint`), from which every step of the
import takes what it needs; :func:`load_fairchem_checkpoint` makes so2nn's config and weights of
it, and :meth:`~so2nn.models.EquiformerV2.from_fairchem` (or :func:`~so2nn.models.load_model`,
which recognises the layout) builds the model.

Handles the model config stored in the checkpoint, ``module.`` prefixes from DDP, EMA weights, the
deprecated monolithic class (``equiformer_v2``) and the backbone + heads variant (``backbone.``,
``output_heads.energy.``, ``output_heads.forces.``, ``output_heads.stress.``): head ``name``'s
weights become so2nn's ``heads.<name>.*``. The rank-2 stress head's options
(``rank2_symmetric_head``) become the config's stress fields, and the trainer's
``outputs.stress`` (its decomposition) is checked against the head. The DeNS models
(``equiformer_v2_dens_backbone`` with the ``eqV2_DeNS_*`` heads) load their force and
noise-scale encodings and denoising attention into so2nn's DeNS parts; the DeNS settings that act
only in training are ignored. Energy-only models (``regress_forces: False``, the IS2RE models; or
a backbone + heads model without a ``forces`` head) load as so2nn models with
``regress_forces=False``.

What fairchem's trainer applies at prediction is applied here too, inside the model: the target
normalisers (of the checkpoint, or of its training dataset config), the element references
(``elementrefs``) and OC22's ``energy_lin_ref``, the scalar head's ``reduce``. Nothing that
changes the numbers is skipped: every key of the checkpoint, its config, the model config and the
training dataset config is applied, ignored as training-only
(:data:`~so2nn.models.FAIRCHEM_IGNORED_KEYS`), or raises a ValueError naming it; so do output
heads so2nn does not compute.

The rooms: ``_keys`` (the keys applied and ignored, fairchem's module names), ``_record`` (the
checkpoint read once), ``_config`` (the model config), ``_weights``, ``_heads`` (heads and
outputs), ``_targets`` (normalisers and element references), ``_stress`` (the rank-2 stress
head), ``_loaders``.
"""

from ._config import FairchemModelConfig, config_from_fairchem, read_model_config
from ._keys import FAIRCHEM_IGNORED_KEYS
from ._loaders import load_fairchem_checkpoint
from ._record import FairchemCheckpoint, is_fairchem_checkpoint, read_fairchem_checkpoint
from ._stress import stress_config_from_fairchem
from ._targets import element_references_from_fairchem, normalizers_from_fairchem
from ._weights import state_dict_from_fairchem

__all__ = [
    "FAIRCHEM_IGNORED_KEYS",
    "FairchemCheckpoint",
    "FairchemModelConfig",
    "config_from_fairchem",
    "element_references_from_fairchem",
    "is_fairchem_checkpoint",
    "load_fairchem_checkpoint",
    "normalizers_from_fairchem",
    "read_fairchem_checkpoint",
    "read_model_config",
    "state_dict_from_fairchem",
    "stress_config_from_fairchem",
]
