r"""What a model offers so that training, checkpoints and the ASE calculator work with it.

:mod:`so2nn.training`, :mod:`so2nn.calculators` and the checkpoint format (:func:`load_model`)
know models only through :class:`AtomisticModel` and the registry of model types
(:func:`register_model`): any model that offers the protocol and is registered goes through
all three with no code written for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from ._inputs import AtomicInputs

__all__ = ["AtomisticModel", "ModelConfig", "TargetStatistics", "target_statistics_fields"]


@runtime_checkable
class ModelConfig(Protocol):
    """A model's configuration: a frozen dataclass, everything the model's shape depends on.

    Its fields are written to checkpoints as ``to_dict()`` and read back as
    ``ConfigClass(**fields)``, or with the class's optional ``from_dict(fields)`` classmethod
    where it has one (a config whose fields changed layout reads its older checkpoints there;
    unknown keys raise); ``replace`` makes a validated copy (unknown keys raise).
    """

    max_num_elements: int  #: atomic numbers ``0 .. max_num_elements - 1`` have an embedding
    use_pbc: bool  #: inputs with a cell and no ``pbc`` flags are periodic

    def to_dict(self) -> dict[str, Any]: ...

    def replace(self, **changes: Any) -> ModelConfig: ...


@dataclass(frozen=True)
class TargetStatistics:
    r"""The training set's target statistics that a model de-normalises its outputs with.

    The network predicts normalised targets; the model returns
    :math:`E = \sigma_E \hat E + \mu_E + \sum_i \varepsilon_{Z_i}` (eV) and
    :math:`F = \sigma_F \hat F` (direct forces, eV/Angstrom; gradient forces follow the
    energy). A trainer divides its energy and force losses by ``energy_std`` and ``forces_std``,
    so that the loss is that of the normalised targets.

    Attributes:
        energy_mean: :math:`\mu_E` (eV).
        energy_std: :math:`\sigma_E` (eV).
        forces_std: :math:`\sigma_F` (eV/Angstrom): the force RMS of the training set.
        element_references: :math:`\varepsilon_Z` per atomic number (eV; index ``Z``), or None.

    Example:
        >>> TargetStatistics(energy_mean=-3.0, energy_std=2.0).forces_std
        1.0
    """

    energy_mean: float = 0.0
    energy_std: float = 1.0
    forces_std: float = 1.0
    element_references: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (self.energy_std > 0 and self.forces_std > 0):
            raise ValueError(f"energy_std and forces_std must be > 0, got {self.energy_std}, {self.forces_std}")


@runtime_checkable
class AtomisticModel(Protocol):
    r"""The protocol of an so2nn model (a :class:`torch.nn.Module`).

    **Forward contract.** ``model(data=None, **fields)`` takes a torch_geometric
    ``Data``/``Batch`` or keyword arguments named in :data:`~so2nn.models.INPUT_FIELDS`
    (``pos [N, 3]``, ``atomic_numbers [N]``, optional ``natoms [B]``, ``batch [N]``,
    ``cell [B, 3, 3]``, ``pbc [B, 3]``, ``edge_index [2, E]``, ``cell_offsets [E, 3]``), reads
    and checks them with :func:`~so2nn.models.read_inputs` (an unknown field raises a
    ValueError naming it), and returns a dict with one tensor per name in
    :attr:`output_names`: ``"energy" [B]`` (eV) and ``"forces" [N, 3]`` (eV/Angstrom), in
    physical units (an energy-only model has no ``"forces"``; the calculator then offers the
    energy alone, and the trainer, which fits forces, refuses it), and, for a model that lists it,
    ``"stress" [B, 3, 3]`` (eV/Angstrom^3,
    ASE's convention :math:`\sigma = \frac{1}{V}\,\partial E/\partial\varepsilon`, positive =
    tensile) when the input is periodic: an input without a cell has no volume and its dict
    has no ``"stress"`` (rows of systems without a periodic direction in a mixed batch are
    NaN, never zero). A model with gradient forces (and stress) takes its gradient inside
    ``forward``, also under :func:`torch.no_grad` (the calculator evaluates that way), and
    returns tensors with a graph only in training mode. A graph without edges is valid input
    (an isolated atom).

    **Graph.** ``build_graph(inputs)`` returns ``(edge_index [2, E], cell_offsets [E, 3])``
    of :class:`~so2nn.models.AtomicInputs` with the model's own cutoff and neighbour rule;
    given ``edge_index`` / ``cell_offsets`` in the inputs, ``forward`` uses them as they are
    (the calculator builds the graph once per geometry this way).

    **Configuration.** ``config`` is a :class:`ModelConfig`; ``config_class`` is its type
    and ``from_config(config)`` builds a model with fresh weights, so that a checkpoint
    (config + ``state_dict``) rebuilds it. ``config`` describes the model as it is now,
    target statistics included.

    **Target statistics.** ``target_statistics`` gives the :class:`TargetStatistics` the
    outputs are de-normalised with; ``with_target_statistics(stats)`` returns the model that
    uses ``stats`` (the same module, changed in place, or a new one with the same weights),
    with ``config`` updated to match: a trainer gives the model its training set's
    statistics this way before training. The config entries that change with them are
    :func:`target_statistics_fields` of the model: its class attribute
    ``target_statistics_fields`` where it has one (optional, not a protocol member), else the
    config's entries named as :class:`TargetStatistics`' fields. A resume does not compare them
    with the run's, and a fine-tuning run sets them from its energy referencing, not by hand.

    The type is registered with :func:`~so2nn.models.register_model` under a name that
    checkpoints record; see the "Adding a model" section of the architecture page.
    """

    config_class: ClassVar[type]

    @property
    def config(self) -> ModelConfig: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    @property
    def target_statistics(self) -> TargetStatistics: ...

    @classmethod
    def from_config(cls, config: Any) -> AtomisticModel: ...

    def with_target_statistics(self, stats: TargetStatistics) -> AtomisticModel: ...

    def build_graph(self, inputs: AtomicInputs) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(self, data: Any = None, **fields: torch.Tensor) -> dict[str, torch.Tensor]: ...


def target_statistics_fields(model: Any) -> tuple[str, ...]:
    """The config entries of ``model`` (a model or a model type) that its target statistics set.

    A model type declares them as the class attribute ``target_statistics_fields``; without
    one they are its config's fields named as :class:`TargetStatistics`' fields
    (``energy_mean``, ``energy_std``, ``forces_std``, ``element_references``).

    Example:
        >>> from so2nn.models import EquiformerV2
        >>> target_statistics_fields(EquiformerV2)
        ('energy_mean', 'energy_std', 'forces_std', 'forces_mean', 'use_energy_lin_ref')
    """
    declared = getattr(model, "target_statistics_fields", None)
    if declared is not None:
        return tuple(declared)
    config_class = getattr(model, "config_class", None)
    if config_class is None or not dataclasses.is_dataclass(config_class):
        return ()
    names = {field.name for field in dataclasses.fields(config_class)}
    return tuple(field.name for field in dataclasses.fields(TargetStatistics) if field.name in names)
