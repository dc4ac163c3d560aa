r"""Output heads: the modules that turn node features into the predicted quantities.

A head reads the final node features ``x [N, (lmax+1)**2, C]`` (after the model's last norm)
and returns one output of the model, in the units of its training targets: the energy head
``[B]`` (eV), the direct force head ``[N, 3]`` (eV/Angstrom), the direct stress head
``[B, 3, 3]`` (eV/Angstrom^3). A model keeps its heads in a :class:`torch.nn.ModuleDict` under
the names of its outputs (``model.heads["energy"]``, ``model.heads["forces"]``,
``model.heads["stress"]``), so that a checkpoint's weights of head ``name`` are the keys
``heads.<name>.*``.

Each head holds the target statistics it de-normalises with as plain floats (not weights):
the network predicts normalised targets, the head returns physical units.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..layers import EquivariantGraphAttention, FeedForwardNetwork, normalization_layer
from ..so3 import CoefficientLayout, EdgeRotation, spherical_harmonics

__all__ = ["EnergyHead", "ForceHead", "GatedTensorMLP", "StressHead", "STRESS_BASIS"]


class EnergyHead(nn.Module):
    r"""Energy of each system: an invariant readout per atom, summed, de-normalised, referenced.

    .. math::

        E_b = \sigma_E\,\frac{1}{\bar n_b} \sum_{i \in b} \mathrm{FFN}(x_i)^{(l=0)}
              + \mu_E + \sum_{i \in b} \varepsilon_{Z_i}

    where :math:`\mathrm{FFN}` is a :class:`~so2nn.layers.FeedForwardNetwork` with one output
    channel (only its :math:`l = 0` coefficient, an invariant, is read), :math:`\bar n_b` is
    ``avg_num_nodes`` with ``reduce="sum"`` (the reference divides the sum by the training
    set's mean atom count instead of averaging, so the energy stays extensive) or the atom
    count of system :math:`b` with ``reduce="mean"`` (a per-atom energy, as fairchem's scalar
    head with ``reduce: mean``), :math:`(\mu_E, \sigma_E)` the
    training set's energy mean and standard deviation, and :math:`\varepsilon_Z` optional
    per-element reference energies (OC22's linear references), given to :meth:`forward`.

    Args:
        layout: the node features' layout.
        sphere_channels: channels :math:`C` of the node features.
        hidden_channels: hidden channels of the feed-forward network.
        activation, grid_mlp, grid_resolution, kernels: as for :class:`~so2nn.layers.FeedForwardNetwork`.
        avg_num_nodes: :math:`\bar n` of ``reduce="sum"``.
        energy_mean, energy_std: :math:`\mu_E`, :math:`\sigma_E` (eV).
        reduce: ``"sum"`` or ``"mean"`` (above).

    Its weights are those of ``energy_block`` (the feed-forward network; the reference's name).

    Example:
        >>> head = EnergyHead(CoefficientLayout(2, 1), sphere_channels=8, hidden_channels=8, activation="gate",
        ...                   grid_mlp=False, avg_num_nodes=2.0, energy_mean=-1.0, energy_std=3.0)
        >>> x = torch.randn(5, 9, 8)
        >>> head(x, batch=torch.tensor([0, 0, 0, 1, 1]), num_systems=2).shape
        torch.Size([2])
        >>> raw = head.energy_block(x)[:, 0, 0]                     # per-atom invariants
        >>> expected = torch.stack([raw[:3].sum(), raw[3:].sum()]) / 2.0 * 3.0 - 1.0
        >>> torch.allclose(head(x, torch.tensor([0, 0, 0, 1, 1]), 2), expected)
        True
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        *,
        sphere_channels: int,
        hidden_channels: int,
        activation: str = "separable_s2",
        grid_mlp: bool = True,
        grid_resolution: int | None = 18,
        avg_num_nodes: float = 1.0,
        energy_mean: float = 0.0,
        energy_std: float = 1.0,
        kernels: str = "auto",
        reduce: str = "sum",
    ) -> None:
        super().__init__()
        if not avg_num_nodes > 0:
            raise ValueError(f"avg_num_nodes must be > 0, got {avg_num_nodes}")
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        self.reduce = reduce
        self.layout = layout
        self.energy_block = FeedForwardNetwork(
            layout, sphere_channels=sphere_channels, hidden_channels=hidden_channels, output_channels=1,
            activation=activation, grid_mlp=grid_mlp, grid_resolution=grid_resolution, kernels=kernels,
        )
        self.avg_num_nodes = float(avg_num_nodes)
        self.set_statistics(energy_mean, energy_std)

    def set_statistics(self, energy_mean: float, energy_std: float) -> None:
        """Set :math:`(\\mu_E, \\sigma_E)` (eV)."""
        if not energy_std > 0:
            raise ValueError(f"energy_std must be > 0, got {energy_std}")
        self.energy_mean, self.energy_std = float(energy_mean), float(energy_std)

    def extra_repr(self) -> str:
        return (f"reduce={self.reduce}, avg_num_nodes={self.avg_num_nodes:g}, energy_mean={self.energy_mean:g}, "
                f"energy_std={self.energy_std:g}")

    def forward(
        self,
        x: torch.Tensor,
        batch: torch.Tensor,
        num_systems: int,
        atomic_numbers: torch.Tensor | None = None,
        element_energies: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [N, (lmax+1)**2, C]``, ``batch [N]`` -> energies ``[num_systems]``.

        ``element_energies [max_num_elements]`` (:math:`\\varepsilon_Z`, indexed by
        ``atomic_numbers [N]``) are added when given.
        """
        node_energy = self.energy_block(x)[:, 0, 0]  # l = 0, the only invariant coefficient
        energy = node_energy.new_zeros(num_systems).index_add(0, batch, node_energy)
        if self.reduce == "sum":
            energy = energy / self.avg_num_nodes
        else:  # "mean": the per-atom energy of each system
            energy = energy / torch.bincount(batch, minlength=num_systems).to(energy.dtype)
        if self.energy_std != 1.0 or self.energy_mean != 0.0:
            energy = energy * self.energy_std + self.energy_mean
        if element_energies is not None:
            if atomic_numbers is None:
                raise ValueError("element_energies need the atomic_numbers they are indexed by")
            per_atom = element_energies.to(energy.dtype).index_select(0, atomic_numbers)
            energy = energy.index_add(0, batch, per_atom)
        return energy


class ForceHead(nn.Module):
    r"""Direct forces: the :math:`l = 1` output of one more equivariant graph attention.

    .. math::

        F_i = \sigma_F\,\bigl[\mathrm{Attn}(x; \text{edges})_i\bigr]^{(l=1)} + \mu_F

    where :math:`\mathrm{Attn}` is an :class:`~so2nn.layers.EquivariantGraphAttention` with
    one output channel, :math:`\sigma_F` the training set's force scale and :math:`\mu_F` a
    constant added to every component (zero, except where a fairchem checkpoint's force
    normaliser has a mean: reproduced for parity, it is not rotation equivariant). The three
    :math:`l = 1` coefficients, orders :math:`m = -1, 0, 1`, are the Cartesian components
    :math:`(x, y, z)` of a vector in so2nn's real spherical-harmonic basis (the conventions
    page shows it), so they are read as they are: no change of basis. An :math:`l = 1`
    feature rotates as a vector, so the forces are rotation equivariant by construction (but
    not a gradient: use ``direct_forces=False`` in the model for conservative forces).

    Args:
        layout: the node features' layout.
        forces_std: :math:`\sigma_F` (eV/Angstrom).
        forces_mean: :math:`\mu_F` (eV/Angstrom).

    The other keyword arguments (``sphere_channels``, ``hidden_channels``, ``num_heads``,
    ``attn_alpha_channels``, ``attn_value_channels``, ``edge_channels_list``,
    ``max_num_elements``, ``activation``, ``attn_renorm``, ``grid_resolution``, ``recompute``, ``kernels``)
    are those of :class:`~so2nn.layers.EquivariantGraphAttention`; there is no attention
    dropout (the reference's force block has none).

    Its weights are those of ``force_block`` (the attention; the reference's name).

    Example:
        >>> from so2nn.so3 import EdgeRotation
        >>> layout = CoefficientLayout(2, 1)
        >>> head = ForceHead(layout, sphere_channels=8, hidden_channels=8, num_heads=2, attn_alpha_channels=4,
        ...                  attn_value_channels=4, edge_channels_list=[6, 8, 8], activation="gate",
        ...                  grid_resolution=None, forces_std=0.5)
        >>> pos = torch.randn(3, 3)
        >>> edge_index = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 2]])
        >>> rotation = EdgeRotation(layout, pos[edge_index[0]] - pos[edge_index[1]])
        >>> head(torch.randn(3, 9, 8), torch.randn(4, 6), torch.tensor([1, 6, 8]), edge_index, rotation).shape
        torch.Size([3, 3])
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        *,
        sphere_channels: int,
        hidden_channels: int,
        num_heads: int,
        attn_alpha_channels: int,
        attn_value_channels: int,
        edge_channels_list: list[int],
        max_num_elements: int | None = None,
        activation: str = "separable_s2",
        attn_renorm: bool = True,
        grid_resolution: int | None = 18,
        recompute: bool = True,
        forces_std: float = 1.0,
        kernels: str = "auto",
        forces_mean: float = 0.0,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.force_block = EquivariantGraphAttention(
            layout, sphere_channels=sphere_channels, hidden_channels=hidden_channels, num_heads=num_heads,
            attn_alpha_channels=attn_alpha_channels, attn_value_channels=attn_value_channels, output_channels=1,
            edge_channels_list=edge_channels_list, max_num_elements=max_num_elements, activation=activation,
            attn_renorm=attn_renorm, alpha_drop=0.0, grid_resolution=grid_resolution, recompute=recompute,
            kernels=kernels,
        )
        self.set_statistics(forces_std, forces_mean)

    def set_statistics(self, forces_std: float, forces_mean: float = 0.0) -> None:
        """Set :math:`\\sigma_F` and :math:`\\mu_F` (eV/Angstrom)."""
        if not forces_std > 0:
            raise ValueError(f"forces_std must be > 0, got {forces_std}")
        self.forces_std, self.forces_mean = float(forces_std), float(forces_mean)

    def extra_repr(self) -> str:
        return f"forces_std={self.forces_std:g}" + (f", forces_mean={self.forces_mean:g}" if self.forces_mean else "")

    def forward(
        self,
        x: torch.Tensor,
        edge_features: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        rotation: EdgeRotation,
    ) -> torch.Tensor:
        """``x [N, (lmax+1)**2, C]`` and the graph (as for the attention) -> forces ``[N, 3]``."""
        out = self.force_block(x, edge_features, atomic_numbers, edge_index, rotation)
        forces = out[:, self.layout.degree_slice(1), 0]  # (m = -1, 0, 1) = (x, y, z)
        if self.forces_std != 1.0:
            forces = forces * self.forces_std
        return forces + self.forces_mean if self.forces_mean != 0.0 else forces


def _rank2_basis() -> torch.Tensor:
    # Row 0: the isotropic part I / sqrt(3). Rows 1-5: the symmetric traceless matrices B_m
    # with r^T B_m r = sqrt(2/15) Y_{2,m}(r) (component-normalised Y, so2nn's / e3nn's basis,
    # m = -2..2: xz, xy, 2y^2 - x^2 - z^2, yz, z^2 - x^2). All six are orthonormal for the
    # Frobenius product, so the l = 2 coefficients rotate with the Wigner-D of degree 2 exactly
    # when the matrix rotates as R S R^T. These are the rows 0 and 4-8 of the Clebsch-Gordan
    # change of basis that fairchem's trainer applies (its rows 1-3, the antisymmetric l = 1
    # part, always multiply zero for a symmetric tensor).
    s2, s3, s6 = 2 ** -0.5, 3 ** -0.5, 6 ** -0.5
    return torch.tensor([
        [[s3, 0, 0], [0, s3, 0], [0, 0, s3]],
        [[0, 0, s2], [0, 0, 0], [s2, 0, 0]],
        [[0, s2, 0], [s2, 0, 0], [0, 0, 0]],
        [[-s6, 0, 0], [0, 2 * s6, 0], [0, 0, -s6]],
        [[0, 0, 0], [0, 0, s2], [0, s2, 0]],
        [[-s2, 0, 0], [0, 0, 0], [0, 0, s2]],
    ], dtype=torch.float64)


#: ``[6, 3, 3]``: the isotropic basis matrix :math:`I/\sqrt3` and the five symmetric traceless
#: :math:`B_m` (:math:`m = -2..2`, so2nn's real spherical-harmonic order), orthonormal for the
#: Frobenius product. :class:`StressHead` rebuilds a stress from its parts with them.
STRESS_BASIS = _rank2_basis()


def _mlp(channels: int, num_layers: int) -> nn.Sequential:
    """``num_layers`` linear maps ``C -> C -> ... -> 1`` with SiLU between (the reference's indices)."""
    layers: list[nn.Module] = []
    for _ in range(num_layers - 1):
        layers += [nn.Linear(channels, channels), nn.SiLU()]
    layers.append(nn.Linear(channels, 1))
    return nn.Sequential(*layers)


class GatedTensorMLP(nn.Module):
    r"""An MLP over the channels of degree-2 features that commutes with rotations: linear maps
    without bias applied alike to every order :math:`m`, gated by invariants.

    .. math::

        u^{(k)}_m = \bigl(W_k\, u^{(k-1)}_m\bigr) \odot \mathrm{SiLU}(G_k s + c_k), \quad
        k = 1, \dots, K-1, \qquad
        \mathrm{out}_m = w^\top u^{(K-1)}_m,

    for features :math:`u^{(0)} \in \mathbb{R}^{5 \times C}` (:math:`m = -2..2`) and invariants
    :math:`s \in \mathbb{R}^{C}`. A rotation multiplies :math:`u` by the Wigner-D matrix
    :math:`D^{(2)}(R)` over :math:`m`; every step acts on channels only (:math:`W_k`, :math:`w`) or
    multiplies each channel by an invariant (the gate), so the output rotates with
    :math:`D^{(2)}(R)` exactly, for any weights. A bias on :math:`u` or a SiLU of :math:`u`
    itself (the reference's component-wise MLP) would not.

    Args:
        channels: :math:`C` (of :math:`u` and of :math:`s`).
        num_layers: :math:`K`, the linear maps on :math:`u` (``>= 1``; 1: a bias-free linear readout).

    Weights: ``linears.k`` (:math:`W_{k+1}`, and last :math:`w`, no bias), ``gates.k``
    (:math:`G_{k+1}`, :math:`c_{k+1}`).

    Example:
        >>> mlp = GatedTensorMLP(4, num_layers=2)
        >>> mlp(torch.randn(3, 5, 4), torch.randn(3, 4)).shape
        torch.Size([3, 5])
    """

    def __init__(self, channels: int, num_layers: int = 2) -> None:
        super().__init__()
        if not (isinstance(num_layers, int) and not isinstance(num_layers, bool) and num_layers >= 1):
            raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
        self.linears = nn.ModuleList(nn.Linear(channels, channels, bias=False) for _ in range(num_layers - 1))
        self.linears.append(nn.Linear(channels, 1, bias=False))
        self.gates = nn.ModuleList(nn.Linear(channels, channels) for _ in range(num_layers - 1))

    def forward(self, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``u [..., 5, C]`` (degree 2), invariants ``s [..., C]`` -> ``[..., 5]``."""
        for linear, gate in zip(self.linears, self.gates):
            u = linear(u) * torch.nn.functional.silu(gate(s))[..., None, :]
        return self.linears[-1](u)[..., 0]


def _mean_at(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of ``values`` over the rows with the same ``index`` (0 where there are none)."""
    total = values.new_zeros((size, *values.shape[1:])).index_add(0, index, values)
    ones = torch.ones_like(index, dtype=values.dtype)
    count = torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, index, ones)
    return total / count.clamp(min=1).view(-1, *([1] * (values.dim() - 1)))


class StressHead(nn.Module):
    r"""Direct stress: a rank-2 readout of edge features, the reference's rank-2 head (OMat24's).

    Each edge :math:`e = (j \to i)` with vector :math:`r_e` gets invariant features from the
    node features contracted with the (normalised) spherical harmonics of its direction,

    .. math::

        h_e = \mathrm{LayerNorm}\Bigl(\sum_{l,m} x_{lm}\, w_{lm}(r_e)\Bigr), \qquad
        w(r_e) = \mathrm{Norm}\bigl(|r_e|^l Y_{lm}(\hat r_e)\bigr)_{l \le L},

    with :math:`x = x_i` (the target's features), or :math:`x = x_j \oplus x_i` (source and target
    concatenated along channels, ``source_target_embedding``), and :math:`\mathrm{Norm}` the
    backbone's norm type over one channel (the reference keeps the harmonics' magnitudes
    :math:`|r_e|^l` and normalises them instead). Then, with :math:`\langle\cdot\rangle_i` the mean
    over the edges into :math:`i` and :math:`\langle\cdot\rangle_b` the mean over the atoms of
    system :math:`b` (``extensive``: the sum divided by ``avg_num_nodes``):

    ``decompose=True`` (isotropic :math:`l = 0` plus anisotropic :math:`l = 2` parts)

    .. math::

        \sigma_b = \bigl\langle \mathrm{MLP}_0(\langle h_e\rangle_i) \bigr\rangle_b, \qquad
        a_{b,m} = \bigl\langle \mathrm{MLP}_2(\langle Y_{2m}(\hat r_e)\, h_e \rangle_i) \bigr\rangle_b,

    (``edge_level_mlp``: the MLPs act on each edge before the mean over edges), each part
    de-normalised with its own statistics, and the stress rebuilt in Cartesian form,

    .. math::

        S_b = s_S \Bigl[(s_0 \sigma_b + \mu_0) \frac{I}{\sqrt3}
              + \sum_{m=-2}^{2} (s_2 a_{b,m} + \mu_2) B_m\Bigr] + \mu_S,

    with :math:`B_m` the symmetric traceless basis of :data:`STRESS_BASIS`
    (:math:`r^\top B_m r \propto Y_{2m}(r)`); ``decompose=False`` (the plain rank-2 block)

    .. math::

        S_{b,\alpha\beta} = s_S \bigl\langle \mathrm{MLP}(\langle h_e\, r_{e\alpha} r_{e\beta} \rangle_i)
        \bigr\rangle_b + \mu_S

    (``extensive``: the plain sum, which the reference does not divide by ``avg_num_nodes``).
    The MLPs are ``num_mlp_layers`` linear maps over channels with SiLU between, applied to
    each component (:math:`m`, or :math:`\alpha\beta`) alike.

    ``equivariant=True`` (with ``decompose``; so2nn's own head, for models trained with so2nn, not
    the reference's) replaces :math:`\mathrm{MLP}_2` by a :class:`~so2nn.models.GatedTensorMLP`, linear maps
    without bias over the channels of the degree-2 features, alike for every :math:`m`, gated by
    the invariants of the isotropic path:

    .. math::

        a_{b,m} = \bigl\langle \mathrm{GatedMLP}_2\bigl(\langle Y_{2m}(\hat r_e)\, h_e \rangle_i;\;
        \langle h_e \rangle_i\bigr) \bigr\rangle_b, \qquad
        \mathrm{GatedMLP}_2(u; s)_m = w^\top \Bigl[\mathop{\bigcirc}_{k=1}^{K-1}
        \bigl(u \mapsto (W_k u) \odot \mathrm{SiLU}(G_k s + c_k)\bigr)\Bigr](u)_m

    (``edge_level_mlp``: per edge, gated by :math:`h_e`), with :math:`\mu_2 = \mu_S = 0`
    (required) and :math:`S_b` rebuilt as above.

    Equivariance: :math:`h_e` is invariant, the isotropic part is exactly invariant, and with
    ``equivariant=True`` the anisotropic part rotates with :math:`D^{(2)}(R)`, so
    :math:`S(R\,\cdot) = R S R^\top` exactly, for any weights. The reference's form
    (``equivariant=False``) applies an MLP component by component (its biases, its SiLU), which
    does not commute with rotations: the anisotropic part and the plain block rotate as
    :math:`R S R^\top` only up to an error that training may make small (as in the reference,
    whose numbers this head reproduces; with random weights the error is of the order of the
    stress itself). With ``num_mlp_layers=1`` and zero last bias the reference's form is exact
    too. :math:`S` is symmetric always. A non-zero :math:`\mu_2` or :math:`\mu_S` is added to
    every component, as the reference's trainer adds it, which is not rotation equivariant
    either: the reference's form warns when built so, the equivariant head raises.

    Args:
        layout: the node features' layout (:math:`L` = ``layout.lmax``).
        sphere_channels: channels :math:`C` of the node features.
        norm_type: the normalisation of the harmonics, as the backbone's (``"layer_norm_sh"``, ...).
        decompose: isotropic + anisotropic parts (``True``) or the plain rank-2 block.
        equivariant: the exactly equivariant anisotropic path (a :class:`~so2nn.models.GatedTensorMLP`; needs
            ``decompose``), not the reference's component-wise MLP.
        edge_level_mlp: apply the MLPs per edge, before the mean over edges.
        num_mlp_layers: linear maps in each MLP (``>= 1``).
        source_target_embedding: :math:`h_e` from source and target features (``2C`` channels).
        extensive: sum over the atoms of a system instead of the mean.
        avg_num_nodes: divides the extensive sum of the decomposed parts.
        isotropic_mean, isotropic_std: :math:`\mu_0`, :math:`s_0` (eV/Angstrom^3).
        anisotropic_mean, anisotropic_std: :math:`\mu_2`, :math:`s_2` (eV/Angstrom^3).
        stress_mean, stress_std: :math:`\mu_S`, :math:`s_S` of the whole tensor (eV/Angstrom^3;
            for ``decompose=True`` a multiplier of the rebuilt tensor, 1 unless a checkpoint says so).

    Weights: ``harmonics_norm``, ``edge_norm`` (the reference's ``sphharm_norm``,
    ``xedge_layer_norm``), and ``isotropic_mlp``, ``anisotropic_mlp`` (decomposed; the
    reference's ``block.scalar_MLP``, ``block.irrep2_MLP``; with ``equivariant``,
    ``anisotropic_mlp`` is the :class:`~so2nn.models.GatedTensorMLP`) or ``tensor_mlp`` (plain;
    ``block.r2tensor_MLP``).

    Example:
        >>> layout = CoefficientLayout(2, 1)
        >>> head = StressHead(layout, sphere_channels=4, decompose=True, source_target_embedding=True)
        >>> pos = torch.randn(3, 3)
        >>> edge_index = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 2]])
        >>> vec = pos[edge_index[0]] - pos[edge_index[1]]
        >>> stress = head(torch.randn(3, 9, 4), vec, edge_index, torch.zeros(3, dtype=torch.long), 1)
        >>> stress.shape, bool(torch.allclose(stress, stress.transpose(1, 2)))
        (torch.Size([1, 3, 3]), True)
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        *,
        sphere_channels: int,
        norm_type: str = "layer_norm_sh",
        decompose: bool = True,
        equivariant: bool = False,
        edge_level_mlp: bool = False,
        num_mlp_layers: int = 2,
        source_target_embedding: bool = False,
        extensive: bool = False,
        avg_num_nodes: float = 1.0,
        isotropic_mean: float = 0.0,
        isotropic_std: float = 1.0,
        anisotropic_mean: float = 0.0,
        anisotropic_std: float = 1.0,
        stress_mean: float = 0.0,
        stress_std: float = 1.0,
    ) -> None:
        super().__init__()
        if not (isinstance(num_mlp_layers, int) and not isinstance(num_mlp_layers, bool) and num_mlp_layers >= 1):
            raise ValueError(f"num_mlp_layers must be an int >= 1, got {num_mlp_layers!r}")
        if not avg_num_nodes > 0:
            raise ValueError(f"avg_num_nodes must be > 0, got {avg_num_nodes}")
        if equivariant and not decompose:
            raise ValueError("equivariant=True is a decomposed stress head: set decompose=True")
        self.layout = layout
        self.equivariant = bool(equivariant)
        self.decompose, self.edge_level_mlp, self.extensive = bool(decompose), bool(edge_level_mlp), bool(extensive)
        self.source_target_embedding = bool(source_target_embedding)
        self.avg_num_nodes = float(avg_num_nodes)
        channels = 2 * sphere_channels if source_target_embedding else sphere_channels
        self.harmonics_norm = normalization_layer(norm_type, CoefficientLayout(layout.lmax), 1)
        self.edge_norm = nn.LayerNorm(channels)
        if self.decompose:
            self.isotropic_mlp = _mlp(channels, num_mlp_layers)
            self.anisotropic_mlp = (GatedTensorMLP(channels, num_mlp_layers) if self.equivariant
                                    else _mlp(channels, num_mlp_layers))
        else:
            self.tensor_mlp = _mlp(channels, num_mlp_layers)
        self.set_statistics(isotropic_mean, isotropic_std, anisotropic_mean, anisotropic_std, stress_mean, stress_std)

    def set_statistics(self, isotropic_mean: float = 0.0, isotropic_std: float = 1.0, anisotropic_mean: float = 0.0,
                       anisotropic_std: float = 1.0, stress_mean: float = 0.0, stress_std: float = 1.0) -> None:
        """Set the de-normalisation (eV/Angstrom^3); warns for the means that break equivariance."""
        for name, std in (("isotropic_std", isotropic_std), ("anisotropic_std", anisotropic_std),
                          ("stress_std", stress_std)):
            if not std > 0:
                raise ValueError(f"{name} must be > 0, got {std}")
        for name, mean in (("isotropic_mean", isotropic_mean), ("anisotropic_mean", anisotropic_mean),
                           ("stress_mean", stress_mean)):
            if not math.isfinite(mean):
                raise ValueError(f"{name} must be finite, got {mean}")
        if not self.decompose and (isotropic_mean, isotropic_std, anisotropic_mean, anisotropic_std) != (0, 1, 0, 1):
            raise ValueError("isotropic/anisotropic statistics apply to the decomposed stress head only "
                             "(decompose=False uses stress_mean and stress_std)")
        for name, mean in (("anisotropic_mean", anisotropic_mean), ("stress_mean", stress_mean)):
            if mean != 0.0 and self.equivariant:
                raise ValueError(f"the equivariant stress head needs {name}=0 (a constant added to every "
                                 f"component is not rotation equivariant), got {mean}")
            if mean != 0.0:
                warnings.warn(f"StressHead: {name}={mean:g} is added to every component of the stress, as fairchem's "
                              "trainer does; this is not rotation equivariant", stacklevel=2)
        self.isotropic_mean, self.isotropic_std = float(isotropic_mean), float(isotropic_std)
        self.anisotropic_mean, self.anisotropic_std = float(anisotropic_mean), float(anisotropic_std)
        self.stress_mean, self.stress_std = float(stress_mean), float(stress_std)

    def extra_repr(self) -> str:
        kind = "equivariant" if self.equivariant else ("decomposed" if self.decompose else "rank2")
        return (f"{kind}, edge_level_mlp={self.edge_level_mlp}, "
                f"source_target_embedding={self.source_target_embedding}, extensive={self.extensive}")

    def _edge_features(self, x: torch.Tensor, edge_vec: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """:math:`h_e [E, C']`: node features contracted with the normalised harmonics of the edge."""
        w = self.harmonics_norm(spherical_harmonics(self.layout.lmax, edge_vec, normalize=False, validate=False)[:, :, None])[:, :, 0]
        if self.source_target_embedding:
            x_edge = torch.cat([x.index_select(0, edge_index[0]), x.index_select(0, edge_index[1])], dim=2)
        else:
            x_edge = x.index_select(0, edge_index[1])
        return self.edge_norm(torch.einsum("eic,ei->ec", x_edge, w))

    def _anisotropic(self, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Degree-2 features ``u [*, 5, C']`` (and their invariants ``s [*, C']``) -> ``[*, 5]``."""
        if self.equivariant:
            return self.anisotropic_mlp(u, s)
        return self.anisotropic_mlp(u)[..., 0]  # the reference's MLP, on each m alike

    def _per_system(self, node_values: torch.Tensor, batch: torch.Tensor, num_systems: int) -> torch.Tensor:
        if self.extensive:
            return node_values.new_zeros((num_systems, *node_values.shape[1:])).index_add(0, batch, node_values)
        return _mean_at(node_values, batch, num_systems)

    def forward(
        self,
        x: torch.Tensor,
        edge_vec: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor,
        num_systems: int,
    ) -> torch.Tensor:
        """``x [N, (lmax+1)**2, C]``, edge vectors ``[E, 3]`` (source minus target, as the
        model's), ``edge_index [2, E]``, ``batch [N]`` -> stress ``[num_systems, 3, 3]``."""
        num_nodes, target = x.shape[0], edge_index[1]
        h = self._edge_features(x, edge_vec, edge_index)  # [E, C']
        if self.decompose:
            Y2 = spherical_harmonics(2, edge_vec, validate=False)[:, 4:9]  # [E, 5], degree 2 of the unit direction
            u = Y2[:, :, None] * h[:, None, :]  # [E, 5, C'], degree 2
            if self.edge_level_mlp:
                iso = _mean_at(self.isotropic_mlp(h), target, num_nodes)  # [N, 1]
                aniso = _mean_at(self._anisotropic(u, h), target, num_nodes)  # [N, 5]
            else:
                s = _mean_at(h, target, num_nodes)
                iso, aniso = self.isotropic_mlp(s), self._anisotropic(_mean_at(u, target, num_nodes), s)
            iso, aniso = self._per_system(iso, batch, num_systems), self._per_system(aniso, batch, num_systems)
            if self.extensive:
                iso, aniso = iso / self.avg_num_nodes, aniso / self.avg_num_nodes
            parts = torch.cat([iso * self.isotropic_std + self.isotropic_mean,
                               aniso * self.anisotropic_std + self.anisotropic_mean], dim=1)  # [B, 6]
            stress = torch.einsum("bk,kij->bij", parts, STRESS_BASIS.to(parts))
        else:
            outer = (edge_vec[:, :, None] * edge_vec[:, None, :]).reshape(-1, 1, 9)  # r r^T, [E, 1, 9]
            edge_tensor = h[:, :, None] * outer  # [E, C', 9]
            if self.edge_level_mlp:
                node_tensor = _mean_at(self.tensor_mlp(edge_tensor.transpose(1, 2))[..., 0], target, num_nodes)
            else:
                node_tensor = self.tensor_mlp(_mean_at(edge_tensor, target, num_nodes).transpose(1, 2))[..., 0]
            stress = self._per_system(node_tensor, batch, num_systems).reshape(-1, 3, 3)
        if self.stress_std != 1.0 or self.stress_mean != 0.0:
            stress = stress * self.stress_std + self.stress_mean
        return stress
