r"""EquiformerV2 (Liao & Wood, 2023), composed from :mod:`so2nn.layers`."""

from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint
from torch import nn

from ..graph import edge_vectors, radius_graph
from ..layers import (
    EdgeDegreeEmbedding,
    EquivariantDropout,
    EquivariantGraphAttention,
    FeedForwardNetwork,
    GraphDropPath,
    RadialBasis,
    normalization_layer,
    replace_scalars,
)
from ..so3 import CoefficientLayout, EdgeRotation
from ._checkpoint import atomic_save, load_model, model_checkpoint
from ._config import EquiformerV2Config
from ._dens import DenoisingEmbedding, DenoisingForceHead
from ._heads import EnergyHead, ForceHead
from ._inputs import AtomicInputs, read_inputs
from ._protocol import TargetStatistics
from ._registry import load_weights, register_importer, register_model
from ._strain import apply_strain, stress_from_strain_gradient
from ._stress_heads import STRESS_HEADS
from .fairchem import is_fairchem_checkpoint, load_fairchem_checkpoint

__all__ = ["EquiformerV2", "TransformerBlock"]


class TransformerBlock(nn.Module):
    r"""One EquiformerV2 block: pre-norm attention and feed-forward, each with a residual.

    .. math::

        x \leftarrow x + \mathrm{DropPath}\bigl(\mathrm{Attention}(\mathrm{Norm}_1(x))\bigr), \qquad
        x \leftarrow x + \mathrm{DropPath}\bigl(\mathrm{FFN}(\mathrm{Norm}_2(x))\bigr)

    Built by :class:`EquiformerV2` from its config (``num_layers`` of them); the forward takes
    the node features ``x [N, (lmax+1)**2, C]``, the invariant edge features, the atomic
    numbers, ``edge_index``, the :class:`~so2nn.so3.EdgeRotation` of the edges, ``batch`` and
    the number of systems (drop-path draws one mask entry per system; without it, it counts them
    from ``batch``, a wait for the device on a GPU), and returns the new node features, same shape.

    Example:
        >>> from so2nn.models import EquiformerV2Config
        >>> config = EquiformerV2Config(lmax=2, mmax=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
        ...                             attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8)
        >>> block = TransformerBlock(config, CoefficientLayout(2, 1), edge_channels_list=[16, 8, 8])
        >>> [type(m).__name__ for m in (block.norm_1, block.ga, block.norm_2, block.ffn)]
        ['SeparableLayerNorm', 'EquivariantGraphAttention', 'SeparableLayerNorm', 'FeedForwardNetwork']
    """

    def __init__(self, config: EquiformerV2Config, layout: CoefficientLayout, edge_channels_list: list[int]) -> None:
        super().__init__()
        c = config
        elements = c.max_num_elements if c.use_atom_edge_embedding else None
        self.norm_1 = normalization_layer(c.norm_type, layout, c.sphere_channels)
        self.ga = EquivariantGraphAttention(
            layout, sphere_channels=c.sphere_channels, hidden_channels=c.attn_hidden_channels, num_heads=c.num_heads,
            attn_alpha_channels=c.attn_alpha_channels, attn_value_channels=c.attn_value_channels,
            output_channels=c.sphere_channels, edge_channels_list=edge_channels_list, max_num_elements=elements,
            activation=c.activation, attn_renorm=c.use_attn_renorm, alpha_drop=c.alpha_drop,
            grid_resolution=c.grid_resolution, recompute=c.recompute_edge_activations, kernels=c.kernels,
        )
        self.norm_2 = normalization_layer(c.norm_type, layout, c.sphere_channels)
        self.ffn = FeedForwardNetwork(
            layout, sphere_channels=c.sphere_channels, hidden_channels=c.ffn_hidden_channels,
            output_channels=c.sphere_channels, activation=c.activation, grid_mlp=c.use_grid_mlp,
            grid_resolution=c.grid_resolution, kernels=c.kernels,
        )
        self.drop_path = GraphDropPath(c.drop_path_rate) if c.drop_path_rate > 0 else None
        self.proj_drop = EquivariantDropout(c.proj_drop) if c.proj_drop > 0 else None

    def _regularise(self, x: torch.Tensor, batch: torch.Tensor, num_systems: int | None) -> torch.Tensor:
        if self.drop_path is not None:
            x = self.drop_path(x, batch, num_systems)
        if self.proj_drop is not None:
            x = self.proj_drop(x)
        return x

    def forward(self, x, edge_features, atomic_numbers, edge_index, rotation, batch,
                num_systems: int | None = None) -> torch.Tensor:
        x = x + self._regularise(self.ga(self.norm_1(x), edge_features, atomic_numbers, edge_index, rotation), batch,
                                 num_systems)
        return x + self._regularise(self.ffn(self.norm_2(x)), batch, num_systems)


class EquiformerV2(nn.Module):
    r"""EquiformerV2 for energies and forces of atomistic systems.

    The forward reads like the paper:

    1. edge geometry: vectors, distances (a Gaussian expansion), edge frames;
    2. embedding: the atom type on :math:`l = 0` plus the edge-degree embedding;
    3. ``num_layers`` transformer blocks (equivariant graph attention + feed-forward);
    4. final norm, then the heads: energy (:class:`~so2nn.models.EnergyHead`,
       :math:`\frac{1}{\bar n}\sum_i \mathrm{FFN}(x_i)^{(0)}`, de-normalised) and forces, either
       the :math:`l = 1` output of one more attention (:class:`~so2nn.models.ForceHead`) or
       :math:`-\partial E/\partial r` (``config.direct_forces = False``), with then the stress
       :math:`\sigma = \frac{1}{V}\,\partial E/\partial\varepsilon` of a symmetric strain
       :math:`\varepsilon` of positions and cell, :math:`x \mapsto x(I + \varepsilon)`,
       :math:`A \mapsto A(I + \varepsilon)`, taken at :math:`\varepsilon = 0` in the same
       gradient as the forces.

    The heads are ``model.heads["energy"]``, ``model.heads["forces"]`` (only with direct
    forces) and ``model.heads["stress"]`` (a :class:`~so2nn.models.StressHead` of the kind
    ``config.stress.head`` names, only with one); ``energy_lin_ref`` (per-element reference energies in eV, added after
    de-normalisation, with ``use_energy_lin_ref``: OC22's and fairchem's element references) is
    a model weight, handed to the energy head.

    **DeNS models** (trained with denoising of non-equilibrium structures, Liao et al. 2024: the
    OMat24 ``eqV2_dens`` checkpoints, fairchem's ``equiformer_v2_dens_backbone`` with the
    ``eqV2_DeNS_*`` heads) are this model with one more embedding term. In training, each atom's
    force and the noise scale :math:`\sigma` of a corrupted structure are encoded into the
    features; at prediction both are zero and the encoding is the constant
    (:class:`~so2nn.models.DenoisingEmbedding`)

    .. math::

        x_i^{(0)} = e_{Z_i} + \underbrace{b_F + b_\sigma}_{\text{DeNS}}
                    + \mathrm{EdgeDegree}(i)^{(0)}

    with :math:`e_Z` the atom-type embedding, :math:`b_F` the bias of the force encoding
    (``dens_force_embedding``) and :math:`b_\sigma` that of the noise-scale encoding
    (``dens_sigma_embedding``, the reference's ``use_noise_schedule_sigma_encoding``). The DeNS
    force head (``dens_denoising_head``, :class:`~so2nn.models.DenoisingForceHead`) holds a second,
    position-denoising attention, whose output the reference multiplies by zero at prediction.
    The DeNS energy head is :class:`~so2nn.models.EnergyHead` (same weights, renamed). Training
    with denoising (noisy positions with force inputs) is not implemented: these models predict,
    and fine-tune as plain EquiformerV2 models.

    Args:
        config: :class:`EquiformerV2Config`, or the name of a preset (``"oc20-31M"``, ...).

    Inputs: a torch_geometric ``Data``/``Batch`` with OC20's fields (``pos [N, 3]``,
    ``atomic_numbers [N]``, ``natoms [B]``, ``batch [N]``, ``cell [B, 3, 3]``, ``pbc [B, 3]``),
    or the same as keyword arguments (:data:`~so2nn.models.INPUT_FIELDS`; any other keyword
    raises). A precomputed graph (``edge_index [2, E]`` with row 0 the source and
    ``cell_offsets [E, 3]``) is used as given. A ``Data`` may also carry the targets and
    metadata of :data:`~so2nn.models.TARGET_AND_METADATA_FIELDS` (``energy``, ``forces``,
    ``tags``, ``fixed``, ``sid``, ...), which the model does not read.

    ``validate=False`` (keyword) skips the checks that read the inputs' values (NaN positions,
    overlapping atoms, atomic numbers and ``edge_index`` in range, singular cells; see
    :func:`~so2nn.models.read_inputs`), for callers that built and checked the graph
    themselves: so2nn's calculator, torch-sim model and trainer do. With a precomputed graph
    and ``natoms``, the forward and backward then never wait for the device (no value is read
    back, no shape depends on the data), which is what a CUDA graph and a
    ``torch.compile(model, fullgraph=True, dynamic=True)`` need.

    Returns: ``{"energy": [B], "forces": [N, 3]}`` (eV, eV/Angstrom for OC20-trained weights;
    no ``"forces"`` for an energy-only model, ``config.regress_forces=False``), and
    ``"stress": [B, 3, 3]`` (eV/Angstrom^3, :class:`~so2nn.models.StressHead`, ASE's sign:
    positive is tensile) when ``config.stress.head`` is set. Which stress is exactly rotation
    equivariant: ``stress.head="equivariant"`` (:class:`~so2nn.models.EquivariantStressHead`,
    for any weights); the reference's ``"decomposed"`` and ``"rank2"`` heads only with one
    linear map and zero last bias (the released checkpoints' heads are not: see
    :class:`~so2nn.models.DecomposedStressHead`).
    An atom without neighbours within ``max_radius`` gets zero force and contributes its
    isolated-atom energy. A conservative model (``direct_forces=False``) given a periodic input
    also returns ``"stress" [B, 3, 3]`` (eV/Angstrom^3, ASE's sign: positive is tensile, the
    pressure is :math:`-\operatorname{tr}\sigma/3`; symmetric, finite for any cell). An input
    without a cell (a molecule) has no volume and gets no ``"stress"`` key; in a batch that mixes
    periodic systems with systems without a periodic direction, the latter's rows are NaN.
    Under :func:`torch.no_grad` the outputs carry no graph; in training mode forces and stress
    keep theirs (``create_graph``), so that a loss on them trains the weights.

    Example:
        >>> config = EquiformerV2Config.tiny()
        >>> model = EquiformerV2(config).eval()
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])   # a water molecule
        >>> out = model(pos=pos, atomic_numbers=torch.tensor([8, 1, 1]))
        >>> out["energy"].shape, out["forces"].shape
        (torch.Size([1]), torch.Size([3, 3]))
        >>> list(model.heads)
        ['energy', 'forces']
    """

    config_class = EquiformerV2Config
    #: The config entries that :meth:`with_target_statistics` sets
    #: (:func:`~so2nn.models.target_statistics_fields`).
    target_statistics_fields = ("energy_mean", "energy_std", "forces_std", "forces_mean", "use_energy_lin_ref")

    def __init__(self, config: EquiformerV2Config | str = "oc20-31M") -> None:
        super().__init__()
        if isinstance(config, str):
            from ._config import preset

            config = preset(config)
        c = config
        self.layout = layout = CoefficientLayout(c.lmax, c.mmax)
        self.sphere_embedding = nn.Embedding(c.max_num_elements, c.sphere_channels)
        # The reference hard-codes 600 Gaussians of width 2 steps over [0, max_radius].
        self.distance_expansion = RadialBasis(c.num_distance_basis, c.max_radius, "gaussian", 2.0)
        edge_channels_list = [c.num_distance_basis, c.edge_channels, c.edge_channels]
        elements = c.max_num_elements if c.use_atom_edge_embedding else None
        self.edge_degree_embedding = EdgeDegreeEmbedding(
            layout, channels=c.sphere_channels, edge_channels_list=edge_channels_list, max_num_elements=elements,
            rescale_factor=c.avg_degree, kernels=c.kernels,
        )
        self.blocks = nn.ModuleList(TransformerBlock(c, layout, edge_channels_list) for _ in range(c.num_layers))
        self.norm = normalization_layer(c.norm_type, layout, c.sphere_channels)
        self.denoising_embedding = (DenoisingEmbedding(layout, c.sphere_channels, sigma=c.dens_sigma_embedding)
                                    if c.dens_force_embedding else None)
        # After the norm, energy before forces: the parameter order of the earlier layout
        # (energy_block, force_block), which optimiser states in training checkpoints follow.
        self.heads = nn.ModuleDict({"energy": EnergyHead(
            layout, sphere_channels=c.sphere_channels, hidden_channels=c.ffn_hidden_channels,
            activation=c.activation, grid_mlp=c.use_grid_mlp, grid_resolution=c.grid_resolution,
            avg_num_nodes=c.avg_num_nodes, energy_mean=c.energy_mean, energy_std=c.energy_std, kernels=c.kernels,
            reduce=c.energy_reduce,
        )})
        if c.regress_forces and c.direct_forces:
            self.heads["forces"] = (DenoisingForceHead if c.dens_denoising_head else ForceHead)(
                layout, sphere_channels=c.sphere_channels, hidden_channels=c.attn_hidden_channels,
                num_heads=c.num_heads, attn_alpha_channels=c.attn_alpha_channels,
                attn_value_channels=c.attn_value_channels, edge_channels_list=edge_channels_list,
                max_num_elements=elements, activation=c.activation, attn_renorm=c.use_attn_renorm,
                grid_resolution=c.grid_resolution, recompute=c.recompute_edge_activations, forces_std=c.forces_std,
                kernels=c.kernels, forces_mean=c.forces_mean,
            )
        if c.stress.head is not None:  # after energy and forces (the parameter order of the heads)
            head = STRESS_HEADS[c.stress.head]
            self.heads["stress"] = head(layout, sphere_channels=c.sphere_channels, norm_type=c.norm_type,
                                        **head.options(c.stress))
        self.register_parameter("energy_lin_ref", nn.Parameter(torch.zeros(c.max_num_elements), requires_grad=False)
                                if c.use_energy_lin_ref else None)
        # The config less the target statistics the heads hold: their one home, which `config` reads.
        self._architecture = c.replace(**self._statistics_defaults())

    @property
    def config(self) -> EquiformerV2Config:
        """The model's configuration as it is now. Its target statistics are read from the heads,
        their one home (``energy_mean``, ``energy_std`` from the energy head, ``forces_std``,
        ``forces_mean`` from a direct force head; ``stress.statistics`` is the stress head's
        record): :meth:`with_target_statistics` sets them there."""
        heads = self.heads
        stats = dict(energy_mean=heads["energy"].energy_mean, energy_std=heads["energy"].energy_std)
        if "forces" in heads:
            stats.update(forces_std=heads["forces"].forces_std, forces_mean=heads["forces"].forces_mean)
        return self._architecture.replace(**stats)

    def _statistics_defaults(self) -> dict[str, float]:
        """The config entries of the statistics the heads hold, at their defaults."""
        return dict(energy_mean=0.0, energy_std=1.0, **(dict(forces_std=1.0, forces_mean=0.0)
                                                        if "forces" in self.heads else {}))

    # -- the model protocol (so2nn.models.AtomisticModel) --------------------------------------

    @classmethod
    def from_config(cls, config: EquiformerV2Config) -> EquiformerV2:
        """A model with fresh weights (the same as ``EquiformerV2(config)``)."""
        return cls(config)

    @property
    def output_names(self) -> tuple[str, ...]:
        c = self._architecture
        forces = ("forces",) if c.regress_forces else ()
        # the stress: a stress head's, or (conservative models) the strain derivative of the energy
        stress = ("stress",) if "stress" in self.heads or (c.regress_forces and not c.direct_forces) else ()
        return ("energy", *forces, *stress)

    @property
    def target_statistics(self) -> TargetStatistics:
        c = self.config
        references = None if self.energy_lin_ref is None else tuple(self.energy_lin_ref.tolist())
        return TargetStatistics(c.energy_mean, c.energy_std, c.forces_std, references)

    def with_target_statistics(self, stats: TargetStatistics) -> EquiformerV2:
        """This model (changed in place), de-normalising with ``stats``, set in the heads that
        read them (``forces_mean`` back to zero: ``stats`` scale forces only; a model without a
        force head keeps ``forces_std`` in its config, the scale of its gradient forces' loss);
        element references, when given, become ``energy_lin_ref`` (``use_energy_lin_ref=True``)."""
        c = self._architecture
        changes = {} if "forces" in self.heads else dict(forces_std=stats.forces_std)
        if stats.element_references is not None:
            references = torch.as_tensor(stats.element_references, dtype=torch.float64)
            if references.shape != (c.max_num_elements,):
                raise ValueError(f"element_references must have {c.max_num_elements} entries (one per "
                                 f"atomic number), got {tuple(references.shape)}")
            changes["use_energy_lin_ref"] = True
            if self.energy_lin_ref is None:
                weight = self.sphere_embedding.weight
                self.energy_lin_ref = nn.Parameter(weight.new_zeros(c.max_num_elements), requires_grad=False)
            with torch.no_grad():
                self.energy_lin_ref.copy_(references)
        self._architecture = c.replace(**changes)
        self.heads["energy"].set_statistics(stats.energy_mean, stats.energy_std)
        if "forces" in self.heads:
            self.heads["forces"].set_statistics(stats.forces_std)
        return self

    def build_graph(self, inputs: AtomicInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Radius graph (``max_radius``, ``max_neighbors`` per atom, ``graph_mode``) of the inputs."""
        c = self._architecture
        return radius_graph(
            inputs.pos.detach(), c.max_radius, inputs.cell if inputs.periodic else None,
            inputs.pbc if inputs.periodic else None, inputs.batch, c.max_neighbors, mode=c.graph_mode,
        )

    # -- checkpoints ---------------------------------------------------------------------------

    @classmethod
    def from_fairchem(cls, checkpoint, use_ema: bool = True, *, trust: bool = False,
                      dtype: torch.dtype | None = None, **config_changes) -> EquiformerV2:
        """Build from an official EquiformerV2 checkpoint (path or loaded dict), weight for weight.

        The model config is read from the checkpoint; EMA weights are used when present
        (``use_ema``); ``config_changes`` override inference options (``grid_resolution``,
        ``graph_mode``, ...). Unknown or missing weights raise a ValueError listing them.
        fairchem itself is not needed. The file is read as data only; ``trust=True`` allows a
        full unpickle of a file whose origin you trust. ``dtype`` (e.g. ``torch.float64``) builds
        the model in that dtype before the weights are copied in, so that values the import
        computes in float64 (the element references, OC22's ``std * energy_lin_ref``) keep
        their precision; casting a float32-loaded model afterwards keeps their float32 rounding.

        What fairchem's trainer does around its model at prediction becomes part of this one,
        so that it returns eV and eV/A as the reference does: the target normalisers (the
        checkpoint's ``normalizers``, else those of its training dataset config) become
        ``energy_mean``, ``energy_std``, ``forces_mean``, ``forces_std``; the element references
        (``elementrefs``) and OC22's ``energy_lin_ref`` become ``energy_lin_ref`` (eV); the
        scalar head's ``reduce`` becomes ``energy_reduce``. OC22's total energies need its
        ``energy_lin_ref`` on: the released monolithic OC22 model has ``use_energy_lin_ref``
        set and gets it; ``use_energy_lin_ref=False`` here leaves it out (the energy less its
        linear composition fit), ``True`` adds it where the reference would not (a backbone +
        heads checkpoint, whose heads never add it). Every key of the checkpoint and its
        configs is applied, ignored as training-only (:data:`~so2nn.models.FAIRCHEM_IGNORED_KEYS`)
        or raises a ValueError naming it.
        """
        config, state_dict = load_fairchem_checkpoint(checkpoint, use_ema, trust=trust, **config_changes)
        model = cls(config) if dtype is None else cls(config).to(dtype)
        model.load_reference_state_dict(state_dict)  # after the cast: float64 values stay float64
        return model

    @classmethod
    def from_checkpoint(cls, checkpoint, use_ema: bool = True, *, trust: bool = False,
                        dtype: torch.dtype | None = None, **config_changes) -> EquiformerV2:
        """Build from a checkpoint (path or loaded dict): so2nn's own (:meth:`save`, or a training
        checkpoint of ``examples/train_oc20.py``) or an official fairchem one.

        EMA weights are used when present and ``use_ema``; ``config_changes`` override inference
        options (``grid_resolution``, ``graph_mode``, ...). :func:`~so2nn.models.load_model` does
        the same for a checkpoint of any registered model type. The file is read as data only;
        ``trust=True`` allows a full unpickle of a file whose origin you trust; ``dtype`` as for
        :meth:`from_fairchem`.
        """
        model = load_model(checkpoint, use_ema, trust=trust, dtype=dtype, **config_changes)
        if not isinstance(model, cls):
            raise ValueError(f"the checkpoint holds a {type(model).__name__}, not an {cls.__name__}: "
                             "load it with so2nn.models.load_model")
        return model

    def save(self, path) -> None:
        """Write type, config and weights to ``path`` atomically (read back with :meth:`from_checkpoint`)."""
        atomic_save(model_checkpoint(self), path)

    def load_reference_state_dict(self, state_dict: dict) -> None:
        """Load mapped reference weights; raise a ValueError naming unknown/missing keys or bad shapes."""
        load_weights(self, state_dict)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self._architecture
        return f"lmax={c.lmax}, mmax={c.mmax}, num_layers={c.num_layers}, sphere_channels={c.sphere_channels}"

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, data=None, *, validate: bool = True, **fields) -> dict[str, torch.Tensor]:
        c = self._architecture
        inputs = read_inputs(data, fields, c, validate)
        if inputs.edge_index is None:
            inputs.edge_index, inputs.cell_offsets = self.build_graph(inputs)
        numbers, edge_index, batch = inputs.atomic_numbers, inputs.edge_index, inputs.batch
        pos, cell = inputs.pos, inputs.cell if inputs.periodic else None
        gradient_forces = c.regress_forces and not c.direct_forces
        # Gradient forces (and stress) need a graph even under torch.no_grad(); direct forces never do.
        with torch.enable_grad() if gradient_forces else contextlib.nullcontext():
            strain, r = None, pos
            if gradient_forces:
                if not pos.requires_grad:
                    pos = r = pos.detach().requires_grad_(True)
                if cell is not None:  # a zero symmetric strain of positions and cell: dE/d(strain) = V stress
                    # Under torch.compile the two ways of making this leaf fail in opposite modes:
                    # made with requires_grad=True it gets no gradient at inference, made with
                    # requires_grad_() its stress cannot be returned with a graph in training.
                    strain = (pos.new_zeros(inputs.num_systems, 3, 3, requires_grad=True) if self.training
                              else pos.new_zeros(inputs.num_systems, 3, 3).requires_grad_(True))
                    r, cell = apply_strain(pos, cell, strain, batch)
            # 1. edge geometry
            vec = edge_vectors(r, edge_index, inputs.cell_offsets if cell is not None else None, cell, batch)
            distance = vec.norm(dim=1)
            if validate:
                self._check_distances(distance, edge_index)
            rotation = EdgeRotation(self.layout, vec, validate)
            edge_features = self.distance_expansion(distance)
            # 2. embedding: atom type on l = 0, plus the edge-degree embedding
            x = self.edge_degree_embedding(edge_features, numbers, edge_index, rotation, pos.shape[0])
            scalars = x[:, 0] + self.sphere_embedding(numbers)
            if self.denoising_embedding is not None:  # DeNS: the encoding of "no noise", a constant
                scalars = scalars + self.denoising_embedding()
            x = replace_scalars(x, scalars)
            # 3. transformer blocks
            for block in self.blocks:
                x = self._block(block, x, edge_features, numbers, edge_index, rotation, batch, inputs.num_systems)
            # 4. norm and heads
            x = self.norm(x)
            energy = self.heads["energy"](x, batch, inputs.num_systems, numbers, self.energy_lin_ref)
            if gradient_forces:  # ---- conservative forces F = -dE/dr and stress (1/V) dE/d(strain) ----
                grads = torch.autograd.grad(energy.sum(), (pos,) if strain is None else (pos, strain),
                                            create_graph=self.training, allow_unused=True,
                                            materialize_grads=True)  # no edges: E does not depend on r
                keep = (lambda t: t) if self.training else torch.Tensor.detach
                out = {"energy": keep(energy), "forces": -grads[0]}
                if strain is not None:
                    out["stress"] = keep(stress_from_strain_gradient(grads[1], inputs.cell, inputs.pbc))
                return out
        out = {"energy": energy}
        if "forces" in self.heads:
            out["forces"] = self.heads["forces"](x, edge_features, numbers, edge_index, rotation)
        if "stress" in self.heads:
            out["stress"] = self.heads["stress"](x, vec, edge_index, batch, inputs.num_systems)
        return out

    def _check_distances(self, distance: torch.Tensor, edge_index: torch.Tensor) -> None:
        close = distance < self._architecture.min_distance
        if distance.numel() and bool(close.any()):
            e = int(close.nonzero()[0, 0])
            raise ValueError(
                f"atoms {int(edge_index[0, e])} and {int(edge_index[1, e])} are {float(distance[e].detach()):.3g} A "
                f"apart (< min_distance={self._architecture.min_distance}): overlapping atoms"
            )

    def _block(self, block, x, edge_features, numbers, edge_index, rotation, batch, num_systems) -> torch.Tensor:
        if self._architecture.checkpoint_activations and torch.is_grad_enabled():
            # store only the block's input; rerun it in backward (same dropout masks)
            return torch.utils.checkpoint.checkpoint(
                block, x, edge_features, numbers, edge_index, rotation, batch, num_systems, use_reentrant=False
            )
        return block(x, edge_features, numbers, edge_index, rotation, batch, num_systems)


register_model("equiformer_v2", EquiformerV2)
# fairchem's checkpoints hold one model family, EquiformerV2's: load_model reads them with from_fairchem
register_importer("fairchem", is_fairchem_checkpoint, EquiformerV2.from_fairchem)
