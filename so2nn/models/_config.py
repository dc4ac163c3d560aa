"""Configuration of EquiformerV2 and the presets of the released models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .._checks import check_layout
from ..graph import GRAPH_MODES
from ._stress_heads import STRESS_HEADS, StressStatistics

__all__ = ["FLAT_STRESS_KEYS", "PRESETS", "EquiformerV2Config", "StressConfig", "preset"]

# The reference implementation's defaults, which the released OC20 models were trained with.
AVG_NUM_NODES = 77.81317
AVG_DEGREE = 23.395238876342773


@dataclass(frozen=True)
class StressConfig:
    r"""The direct stress head of an :class:`EquiformerV2Config` (its ``stress`` entry): its kind,
    its options and the statistics it de-normalises with.

    Attributes:
        head: ``None`` (no stress output), ``"decomposed"`` (a
            :class:`~so2nn.models.DecomposedStressHead`, isotropic :math:`l = 0` and anisotropic
            :math:`l = 2` parts, OMat24's), ``"rank2"`` (:class:`~so2nn.models.Rank2StressHead`,
            the plain rank-2 block) or ``"equivariant"``
            (:class:`~so2nn.models.EquivariantStressHead`, so2nn's decomposed head whose
            anisotropic part is exactly equivariant for any weights: the choice for models
            trained with so2nn; the reference's two forms are not equivariant). Needs
            ``direct_forces``.
        edge_level_mlp: the head's MLPs act on each edge, before the mean over edges.
        num_mlp_layers: linear maps in each of the head's MLPs.
        source_target_embedding: the head reads source and target features of each edge.
        extensive: the head sums over the atoms of a system instead of averaging.
        avg_num_nodes: divides that sum for the decomposed heads (the reference head's own
            ``avg_num_nodes``, not the energy's; the plain rank-2 block does not divide).
        statistics: the :class:`~so2nn.models.StressStatistics` (eV/Angstrom^3) the head reads:
            of the isotropic and anisotropic parts (the decomposed heads only) and of the whole
            tensor; a non-zero anisotropic or whole-tensor mean is added to every component, as
            fairchem's trainer does (not rotation equivariant: the reference's heads warn,
            ``head="equivariant"`` raises).

    A dict is accepted for ``statistics`` (as a checkpoint stores it), and
    :meth:`EquiformerV2Config.from_dict` and :meth:`EquiformerV2Config.replace` read the flat
    ``stress_*`` entries of older configs (:data:`FLAT_STRESS_KEYS`).

    Example:
        >>> StressConfig(head="equivariant", extensive=True).replace(num_mlp_layers=3).num_mlp_layers
        3
    """

    head: str | None = None
    edge_level_mlp: bool = False
    num_mlp_layers: int = 2
    source_target_embedding: bool = False
    extensive: bool = False
    avg_num_nodes: float = 1.0
    statistics: StressStatistics = field(default_factory=StressStatistics)

    def __post_init__(self) -> None:
        if isinstance(self.statistics, dict):
            object.__setattr__(self, "statistics", _from_fields(StressStatistics, self.statistics, "stress statistics"))
        if not isinstance(self.statistics, StressStatistics):
            raise TypeError(f"stress.statistics must be a StressStatistics, got {self.statistics!r}")
        if self.head is not None and self.head not in STRESS_HEADS:
            raise ValueError(f"stress.head must be None, {', '.join(repr(k) for k in STRESS_HEADS)}, got {self.head!r}")
        for name in ("edge_level_mlp", "source_target_embedding", "extensive"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"stress.{name} must be a bool, got {getattr(self, name)!r}")
        layers = self.num_mlp_layers
        if not (isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1):
            raise ValueError(f"stress.num_mlp_layers must be an int >= 1, got {layers!r}")
        if isinstance(self.avg_num_nodes, bool) or not (isinstance(self.avg_num_nodes, (int, float))
                                                         and self.avg_num_nodes > 0):
            raise ValueError(f"stress.avg_num_nodes must be a number > 0, got {self.avg_num_nodes!r}")
        object.__setattr__(self, "avg_num_nodes", float(self.avg_num_nodes))
        if self.head is None:
            changed = self.statistics.changed(tuple(f.name for f in fields(StressStatistics)))
            if changed:
                raise ValueError(f"stress statistics {changed} are set but the model has no stress head "
                                 "(stress.head=None)")
        else:
            STRESS_HEADS[self.head].check_statistics(self.statistics)

    def replace(self, **changes) -> StressConfig:
        """A copy with ``changes`` applied (validated; unknown keys raise)."""
        return _from_fields(StressConfig, {**_shallow(self), **changes}, "stress config")


#: The flat entries of configs written before the stress head's options were grouped into
#: :class:`StressConfig`, and where each is now (``stress_head`` -> ``stress.head``,
#: ``stress_isotropic_mean`` -> ``stress.statistics.isotropic_mean``, ...).
FLAT_STRESS_KEYS: dict[str, str] = {
    "stress_head": "head", "stress_edge_level_mlp": "edge_level_mlp", "stress_num_mlp_layers": "num_mlp_layers",
    "stress_source_target_embedding": "source_target_embedding", "stress_extensive": "extensive",
    "stress_avg_num_nodes": "avg_num_nodes",
    **{f"stress_{name}": f"statistics.{name}" for name in ("isotropic_mean", "isotropic_std", "anisotropic_mean",
                                                           "anisotropic_std", "mean", "std")},
}


def _shallow(config) -> dict:
    return {f.name: getattr(config, f.name) for f in fields(config)}


def _from_fields(cls, values: dict, where: str):
    """``cls(**values)``; a key ``cls`` does not have raises a ValueError naming it."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"the {where} has keys {unknown} that {cls.__name__} does not know"
                         + (f" (its keys: {names})" if len(names) <= 12 else ""))
    return cls(**values)


def _nest_stress(values: dict, base: StressConfig) -> dict:
    """``values`` with its flat ``stress_*`` entries (:data:`FLAT_STRESS_KEYS`) moved into its
    ``stress`` entry, applied to ``base``; both forms at once raise (one would be lost)."""
    flat = {key: values[key] for key in values if key in FLAT_STRESS_KEYS}
    if not flat:
        return values
    if "stress" in values:
        raise ValueError(f"the stress head's options are given twice, as 'stress' and as {sorted(flat)}: "
                         "give one form")
    grouped = {FLAT_STRESS_KEYS[key]: value for key, value in flat.items()}
    statistics = {name.split(".", 1)[1]: value for name, value in grouped.items() if name.startswith("statistics.")}
    options = {name: value for name, value in grouped.items() if not name.startswith("statistics.")}
    if statistics:
        options["statistics"] = _from_fields(StressStatistics, {**_shallow(base.statistics), **statistics},
                                             "stress statistics")
    rest = {key: value for key, value in values.items() if key not in flat}
    return {**rest, "stress": base.replace(**options)}


@dataclass(frozen=True)
class EquiformerV2Config:
    r"""Every hyper-parameter of :class:`~so2nn.models.EquiformerV2`.

    Names follow the reference implementation where they mean the same thing, so a
    released checkpoint's ``model`` section maps onto this one (see
    :meth:`EquiformerV2.from_fairchem`). The defaults are the reference's; the released
    models are :data:`PRESETS`.

    Attributes:
        lmax: largest degree :math:`L` of the node features ``[N, (lmax+1)**2, C]``.
        mmax: largest order :math:`|m|` kept in edge frames (``mmax <= lmax``).
        num_layers: number of transformer blocks.
        sphere_channels: channels :math:`C` of the node features.
        attn_hidden_channels: channels of the messages after the first SO(2) convolution.
        num_heads: attention heads.
        attn_alpha_channels: invariant features per head for the attention logits.
        attn_value_channels: channels of the values per head.
        ffn_hidden_channels: hidden channels of the feed-forward networks.
        norm_type: ``"layer_norm_sh"`` (separable layer norm, the released models'),
            ``"layer_norm"`` or ``"rms_norm_sh"``.
        grid_resolution: resolution of every S2 grid (``None``: the smallest that resolves
            the layout). Not part of the weights: raise it at inference for smaller
            equivariance errors.
        edge_channels: hidden channels of the radial MLPs.
        use_atom_edge_embedding: append source and target atom-type embeddings to the edge
            features.
        num_distance_basis: Gaussians of the distance expansion (600 in the released models).
        activation: ``"separable_s2"`` (EquiformerV2), ``"s2"`` or ``"gate"`` (exactly
            equivariant; the reference's ``use_gate_act`` / ``use_sep_s2_act``).
        use_grid_mlp: the feed-forward nonlinearity is an MLP applied pointwise on the S2 grid.
        use_attn_renorm: attention re-normalisation (a layer norm on the logit features).
        alpha_drop: dropout on the attention weights (training only).
        drop_path_rate: graph drop-path probability of each residual branch (training only).
        proj_drop: equivariant dropout on the branch outputs (training only).
        max_neighbors: neighbours kept per atom (the nearest).
        max_radius: cutoff radius of the graph, in Angstrom.
        max_num_elements: size of the atom-type tables (atomic numbers ``0..max-1``).
        avg_num_nodes: the energy is the sum of per-atom terms divided by this.
        avg_degree: the edge-degree embedding is divided by this.
        use_pbc: periodic boundaries when the input has a cell and no ``pbc`` flags.
        graph_mode: the rule of the neighbour cap (:func:`~so2nn.graph.radius_graph`'s ``mode``):
            ``"tie_stable"`` (whole shells of equal distances at the cut, rotation invariant),
            ``"reference"`` (the reference's strict cut at ``max_neighbors``) or
            ``"reference_nonstrict"`` (the reference's ``enforce_max_neighbors_strictly: False``:
            every neighbour with :math:`d^2 \le d_{(k+1)}^2 + 0.01` Å²; chosen on import for the
            checkpoints trained with it).
        regress_forces: the model predicts forces (``True``); ``False``: an energy-only model (the
            reference's ``regress_forces: False``, e.g. its IS2RE models): no force head, no
            ``"forces"`` output.
        direct_forces: forces from a force head (``True``) or :math:`-\partial E/\partial r`
            (``False``: a conservative model, which also returns the stress
            :math:`\frac{1}{V}\,\partial E/\partial\varepsilon` of periodic inputs).
        use_energy_lin_ref: add per-element reference energies (the model weight
            ``energy_lin_ref``, eV, added after de-normalisation). OC22's total energies need
            it on: its released model predicts the energy minus a linear fit of the
            composition; :meth:`EquiformerV2.from_fairchem` turns it on wherever the reference
            adds references (OC22's ``energy_lin_ref``, fairchem's ``elementrefs``).
        min_distance: atoms closer than this (Angstrom) are rejected as overlapping.
        energy_mean: the training set's mean energy (eV): the model returns
            ``energy = raw * energy_std + energy_mean``, so a loaded model returns eV.
        energy_std: the training set's energy standard deviation (eV).
        forces_std: the training set's force scale (eV/Angstrom): direct forces are
            ``raw * forces_std + forces_mean``.
        forces_mean: a constant vector component added to every direct force (eV/Angstrom).
            Zero for every model trained with so2nn; non-zero only where a fairchem checkpoint
            stores a force normaliser with a mean (reproduced for parity: a constant added to
            every component is not rotation equivariant, and loading such a checkpoint warns).
            Gradient forces (``direct_forces=False``) need it zero.
        energy_reduce: how the per-atom energies become the system's: ``"sum"`` (the sum
            divided by ``avg_num_nodes``, an extensive energy; the released OC20 models) or
            ``"mean"`` (divided by the system's atom count: a per-atom energy, fairchem's scalar
            head with ``reduce: mean``).
        stress: the direct stress head (a :class:`StressConfig`: ``stress.head`` is ``None``, no
            stress output, by default; ``"decomposed"``, ``"rank2"`` or ``"equivariant"``), its
            options and its statistics. A dict is accepted (as a checkpoint stores it); configs
            with the older flat ``stress_*`` entries load through :meth:`from_dict`, and
            :meth:`replace` takes those entries too.
        checkpoint_activations: recompute each block's activations in backward instead of
            storing them (memory for large systems; same numbers, about 1/3 more compute).
        recompute_edge_activations: in training with direct forces, recompute the cheap
            per-edge parts of each attention block (radial MLP hidden layers, attention logits,
            edge activation and weighted values) in backward instead of storing them: 2.5x
            fewer stored activations for about 10% more time per step on the 31M model
            (``False`` for small models, where the bookkeeping costs more than it saves).
        kernels: ``"auto"`` (the fast kernels of :mod:`so2nn.kernels` wherever
            :func:`~so2nn.kernels.use_fused` allows them) or ``"reference"`` (every layer as its
            plain equation). Same numbers; not part of the weights.
        dens_force_embedding: the DeNS model's force encoding (Liao et al., 2024, the
            OMat24 ``eqV2_dens`` checkpoints): a :class:`~so2nn.models.DenoisingEmbedding`
            whose weights are the checkpoint's ``force_embedding``. At prediction its force input
            is zero and only its bias adds to every atom's scalars (see
            :class:`~so2nn.models.EquiformerV2`).
        dens_sigma_embedding: the DeNS noise-level encoding (the reference's
            ``use_noise_schedule_sigma_encoding``; weights ``noise_schedule_sigma_embedding``): at
            prediction the noise level is 0 and its bias adds to every atom's scalars.
        dens_denoising_head: the force head also holds DeNS's position-denoising attention
            (``heads.forces.denoising_pos_block``, a :class:`~so2nn.models.DenoisingForceHead`),
            whose output the reference multiplies by zero at prediction: kept for its weights.

    Example:
        >>> config = EquiformerV2Config(lmax=4, mmax=2, num_layers=8)
        >>> config.replace(grid_resolution=48).grid_resolution
        48
    """

    lmax: int = 6
    mmax: int = 2
    num_layers: int = 12
    sphere_channels: int = 128
    attn_hidden_channels: int = 64
    num_heads: int = 8
    attn_alpha_channels: int = 64
    attn_value_channels: int = 16
    ffn_hidden_channels: int = 128
    norm_type: str = "layer_norm_sh"
    grid_resolution: int | None = 18
    edge_channels: int = 128
    use_atom_edge_embedding: bool = True
    num_distance_basis: int = 600
    activation: str = "separable_s2"  # "separable_s2" | "s2" | "gate" (the reference's use_gate_act / use_sep_s2_act)
    use_grid_mlp: bool = True
    use_attn_renorm: bool = True
    alpha_drop: float = 0.1
    drop_path_rate: float = 0.05
    proj_drop: float = 0.0
    max_neighbors: int = 20
    max_radius: float = 12.0
    max_num_elements: int = 90
    avg_num_nodes: float = AVG_NUM_NODES
    avg_degree: float = AVG_DEGREE
    use_pbc: bool = True
    graph_mode: str = "tie_stable"  # "tie_stable" | "reference" (strict cut) | "reference_nonstrict"
    regress_forces: bool = True  # False: an energy-only model (no force head, no "forces" output)
    direct_forces: bool = True  # False: forces = -dE/dpos through autograd
    use_energy_lin_ref: bool = False
    min_distance: float = 0.1  # atoms closer than this (Angstrom) are rejected as overlapping
    # Output normalisation (training-set statistics): the network predicts normalised targets,
    # and the model returns energy = raw * energy_std + energy_mean, direct forces
    # = raw * forces_std + forces_mean (gradient forces follow the de-normalised energy).
    # fairchem keeps these in its trainer; so2nn keeps them with the weights, so a loaded model
    # returns eV and eV/A.
    energy_mean: float = 0.0
    energy_std: float = 1.0
    forces_std: float = 1.0
    forces_mean: float = 0.0  # non-zero only for a fairchem checkpoint with one (breaks equivariance)
    energy_reduce: str = "sum"  # "sum": divide the sum by avg_num_nodes; "mean": by the atom count
    # Direct stress (model.heads["stress"]): the head's kind, options and statistics (eV/A^3)
    stress: StressConfig = field(default_factory=StressConfig)
    # Memory for large systems: recompute each transformer block's activations in backward
    # (torch.utils.checkpoint) instead of storing them; same numbers, ~1/3 more compute.
    checkpoint_activations: bool = False
    # Recompute the cheap per-edge activations of each attention block in backward (see above).
    recompute_edge_activations: bool = True
    # "auto" | "reference": which implementation of the layers runs (same numbers)
    kernels: str = "auto"
    # DeNS (denoising non-equilibrium structures) models: the extra embedding terms and the
    # force head's denoising block (see the docstring above and EquiformerV2's)
    dens_force_embedding: bool = False
    dens_sigma_embedding: bool = False
    dens_denoising_head: bool = False

    def __post_init__(self) -> None:
        check_layout(self.lmax, self.mmax)
        for name in ("num_layers", "sphere_channels", "attn_hidden_channels", "num_heads", "attn_alpha_channels",
                     "attn_value_channels", "ffn_hidden_channels", "edge_channels", "num_distance_basis",
                     "max_neighbors", "max_num_elements"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.activation not in ("separable_s2", "s2", "gate"):
            raise ValueError(f"activation must be 'separable_s2', 's2' or 'gate', got {self.activation!r}")
        if self.use_grid_mlp and self.activation == "gate":
            raise ValueError("use_grid_mlp=True needs an S2 activation: set use_grid_mlp=False with activation='gate'")
        if self.kernels not in ("auto", "reference"):
            raise ValueError(f"kernels must be 'auto' or 'reference', got {self.kernels!r}")
        if self.graph_mode not in GRAPH_MODES:
            raise ValueError("graph_mode must be one of 'tie_stable', 'reference', 'reference_nonstrict', "
                             f"got {self.graph_mode!r}")
        if self.norm_type not in ("layer_norm", "layer_norm_sh", "rms_norm_sh"):
            raise ValueError(f"unknown norm_type {self.norm_type!r}")
        if not (self.energy_std > 0 and self.forces_std > 0):
            raise ValueError(f"energy_std and forces_std must be > 0, got {self.energy_std}, {self.forces_std}")
        if self.energy_reduce not in ("sum", "mean"):
            raise ValueError(f"energy_reduce must be 'sum' or 'mean', got {self.energy_reduce!r}")
        if self.forces_mean != 0.0 and not self.direct_forces:
            raise ValueError(f"forces_mean={self.forces_mean} needs direct forces: gradient forces are -dE/dpos, "
                             "with no constant to add")
        if not self.max_radius > 0:
            raise ValueError(f"max_radius must be > 0, got {self.max_radius}")
        if self.dens_sigma_embedding and not self.dens_force_embedding:
            raise ValueError("dens_sigma_embedding=True is part of the DeNS embedding: set dens_force_embedding=True")
        if not isinstance(self.regress_forces, bool):
            raise ValueError(f"regress_forces must be a bool, got {self.regress_forces!r}")
        if self.dens_denoising_head and not (self.direct_forces and self.regress_forces):
            raise ValueError("dens_denoising_head=True needs a force head: set direct_forces=True and "
                             "regress_forces=True")
        self._check_stress()

    def _check_stress(self) -> None:
        if isinstance(self.stress, dict):
            object.__setattr__(self, "stress", _from_fields(StressConfig, self.stress, "stress config"))
        if not isinstance(self.stress, StressConfig):
            raise TypeError(f"stress must be a StressConfig, got {self.stress!r}")
        if self.stress.head is not None and not self.direct_forces:
            raise ValueError("a stress head needs direct_forces=True: a conservative model's stress is the virial, "
                             "not a head")

    def replace(self, **changes) -> EquiformerV2Config:
        """A copy with ``changes`` applied (validated). The flat ``stress_*`` entries of older
        configs (:data:`FLAT_STRESS_KEYS`) change the ``stress`` group."""
        changes = _nest_stress(changes, self.stress)
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The config as plain values (``stress`` a nested dict), as checkpoints store it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EquiformerV2Config:
        """The config of a dict (:meth:`to_dict`'s, or a checkpoint's written by an older so2nn,
        whose stress options are the flat ``stress_*`` entries of :data:`FLAT_STRESS_KEYS`).
        A key the config does not know raises a ValueError naming it.

        Example:
            >>> EquiformerV2Config.from_dict({"lmax": 4, "stress_head": "equivariant"}).stress.head
            'equivariant'
        """
        return _from_fields(cls, _nest_stress(dict(values), StressConfig()), "config")

    @classmethod
    def tiny(cls, **changes) -> EquiformerV2Config:
        """The smallest useful EquiformerV2 (lmax 2, mmax 1, one layer of 8 channels, 5 Angstrom
        cutoff, no dropout): not a released model, but one that runs in milliseconds, shared by
        so2nn's tests and docstring examples. ``changes`` as in :meth:`replace`.

        Example:
            >>> config = EquiformerV2Config.tiny(max_neighbors=12)
            >>> config.lmax, config.mmax, config.num_layers, config.sphere_channels, config.max_neighbors
            (2, 1, 1, 8, 12)
        """
        return cls(lmax=2, mmax=1, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
                   attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
                   num_distance_basis=16, max_radius=5.0, alpha_drop=0.0, drop_path_rate=0.0).replace(**changes)


#: The configurations of the released models, by name: ``"oc20-31M"`` (S2EF All+MD),
#: ``"oc20-83M"`` (S2EF-2M), ``"oc20-153M"`` (S2EF All+MD) and ``"oc22-121M"`` (OC22
#: S2EF-Total, with per-element energy references). Use :func:`preset` for a copy with changes.
PRESETS: dict[str, EquiformerV2Config] = {
    # S2EF All+MD, 31M parameters
    "oc20-31M": EquiformerV2Config(num_layers=8, lmax=4, mmax=2, drop_path_rate=0.1),
    # S2EF 2M, 83M parameters
    "oc20-83M": EquiformerV2Config(num_layers=12, lmax=6, mmax=2, drop_path_rate=0.05),
    # S2EF All+MD, 153M parameters
    "oc20-153M": EquiformerV2Config(num_layers=20, lmax=6, mmax=3, drop_path_rate=0.1),
    # OC22 S2EF-Total, 121M parameters, with per-element energy references
    "oc22-121M": EquiformerV2Config(num_layers=18, lmax=6, mmax=2, drop_path_rate=0.1, use_energy_lin_ref=True),
}


def preset(name: str, **changes) -> EquiformerV2Config:
    """The configuration of a released model (``"oc20-31M"``, ``"oc20-83M"``, ``"oc20-153M"``,
    ``"oc22-121M"``), with optional ``changes`` (e.g. ``grid_resolution=44`` at inference).

    Example:
        >>> config = preset("oc20-31M", grid_resolution=48)
        >>> config.lmax, config.mmax, config.num_layers, config.grid_resolution
        (4, 2, 8, 48)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes)
