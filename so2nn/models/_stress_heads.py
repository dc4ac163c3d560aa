r"""The direct stress heads, one class per kind, and the statistics they de-normalise with.

Every kind reads the same invariant edge features (:class:`StressHead`, their shared base) and
returns a stress ``[B, 3, 3]`` (eV/Angstrom^3):

* :class:`Rank2StressHead`: the reference's plain rank-2 block, an MLP per Cartesian component;
* :class:`DecomposedStressHead`: the reference's isotropic :math:`l = 0` plus anisotropic
  :math:`l = 2` parts (OMat24's), rebuilt with :data:`STRESS_BASIS`;
* :class:`EquivariantStressHead`: so2nn's decomposed head whose anisotropic part is exactly
  equivariant for any weights (a :class:`GatedTensorMLP`).

:data:`STRESS_HEADS` names them as ``config.stress.head`` does. Their target statistics are a
:class:`StressStatistics` record, validated once when it is made and read by the head as it is:
the model's config (``config.stress.statistics``) and its head hold the same record.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import normalization_layer
from ..so3 import CoefficientLayout, spherical_harmonics

__all__ = ["STRESS_BASIS", "STRESS_HEADS", "DecomposedStressHead", "EquivariantStressHead", "GatedTensorMLP",
           "Rank2StressHead", "StressHead", "StressStatistics"]


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
#: Frobenius product. The decomposed stress heads rebuild a stress from its parts with them.
STRESS_BASIS = _rank2_basis()


@dataclass(frozen=True)
class StressStatistics:
    r"""The target statistics a stress head de-normalises with (eV/Angstrom^3), checked once here.

    Attributes:
        isotropic_mean, isotropic_std: :math:`\mu_0`, :math:`s_0` of the isotropic part
            (the decomposed heads).
        anisotropic_mean, anisotropic_std: :math:`\mu_2`, :math:`s_2` of the anisotropic part
            (the decomposed heads); a non-zero mean is added to each of its five components, as
            fairchem's trainer does (not rotation equivariant).
        mean, std: :math:`\mu_S`, :math:`s_S` of the whole tensor: of the plain block's output,
            and a multiplier (and offset) of the decomposed heads' rebuilt tensor (1 and 0
            unless a checkpoint says so).

    Each head kind accepts the statistics its equation uses (:meth:`StressHead.check_statistics`).

    Example:
        >>> StressStatistics(isotropic_std=0.3).anisotropic_std
        1.0
    """

    isotropic_mean: float = 0.0
    isotropic_std: float = 1.0
    anisotropic_mean: float = 0.0
    anisotropic_std: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        for name in ("isotropic_mean", "isotropic_std", "anisotropic_mean", "anisotropic_std", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"stress statistics: {name} must be a finite number, got {value!r}")
            if name.endswith("std") and not value > 0:
                raise ValueError(f"stress statistics: {name} must be > 0, got {value}")
            object.__setattr__(self, name, float(value))

    def changed(self, names: tuple[str, ...]) -> list[str]:
        """Those of ``names`` that differ from their default (the identity)."""
        default = StressStatistics()
        return [name for name in names if getattr(self, name) != getattr(default, name)]


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
        _check_num_layers(num_layers)
        self.linears = nn.ModuleList(nn.Linear(channels, channels, bias=False) for _ in range(num_layers - 1))
        self.linears.append(nn.Linear(channels, 1, bias=False))
        self.gates = nn.ModuleList(nn.Linear(channels, channels) for _ in range(num_layers - 1))

    def forward(self, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``u [..., 5, C]`` (degree 2), invariants ``s [..., C]`` -> ``[..., 5]``."""
        for linear, gate in zip(self.linears, self.gates):
            u = linear(u) * torch.nn.functional.silu(gate(s))[..., None, :]
        return self.linears[-1](u)[..., 0]


def _check_num_layers(num_layers) -> None:
    if not (isinstance(num_layers, int) and not isinstance(num_layers, bool) and num_layers >= 1):
        raise ValueError(f"num_mlp_layers must be an int >= 1, got {num_layers!r}")


def _mean_at(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of ``values`` over the rows with the same ``index`` (0 where there are none)."""
    total = values.new_zeros((size, *values.shape[1:])).index_add(0, index, values)
    ones = torch.ones_like(index, dtype=values.dtype)
    count = torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, index, ones)
    return total / count.clamp(min=1).view(-1, *([1] * (values.dim() - 1)))


class StressHead(nn.Module):
    r"""The parts every direct stress head shares: invariant edge features, the means over edges
    and atoms, the de-normalisation of the whole tensor. Build one of its kinds
    (:class:`Rank2StressHead`, :class:`DecomposedStressHead`, :class:`EquivariantStressHead`;
    :data:`STRESS_HEADS` by name), not this class.

    Each edge :math:`e = (j \to i)` with vector :math:`r_e` gets invariant features from the
    node features contracted with the (normalised) spherical harmonics of its direction,

    .. math::

        h_e = \mathrm{LayerNorm}\Bigl(\sum_{l,m} x_{lm}\, w_{lm}(r_e)\Bigr), \qquad
        w(r_e) = \mathrm{Norm}\bigl(|r_e|^l Y_{lm}(\hat r_e)\bigr)_{l \le L},

    with :math:`x = x_i` (the target's features), or :math:`x = x_j \oplus x_i` (source and target
    concatenated along channels, ``source_target_embedding``), and :math:`\mathrm{Norm}` the
    backbone's norm type over one channel (the reference keeps the harmonics' magnitudes
    :math:`|r_e|^l` and normalises them instead). Each kind then maps :math:`h_e` to a stress,
    with :math:`\langle\cdot\rangle_i` the mean over the edges into :math:`i` and
    :math:`\langle\cdot\rangle_b` the mean over the atoms of system :math:`b` (``extensive``: the
    sum), and returns :math:`s_S\,(\dots) + \mu_S`. :math:`S` is symmetric always. The arguments
    below are those of every kind.

    Args:
        layout: the node features' layout (:math:`L` = ``layout.lmax``).
        sphere_channels: channels :math:`C` of the node features.
        norm_type: the normalisation of the harmonics, as the backbone's (``"layer_norm_sh"``, ...).
        edge_level_mlp: apply the MLPs per edge, before the mean over edges.
        num_mlp_layers: linear maps in each MLP (``>= 1``).
        source_target_embedding: :math:`h_e` from source and target features (``2C`` channels).
        extensive: sum over the atoms of a system instead of the mean.
        statistics: the :class:`StressStatistics` the head de-normalises with (kept as given,
            as :attr:`statistics`; each kind accepts those its equation uses).

    Weights: ``harmonics_norm``, ``edge_norm`` (the reference's ``sphharm_norm``,
    ``xedge_layer_norm``), then the kind's MLPs.
    """

    #: The name of the kind (``config.stress.head``).
    kind: str = ""

    def __new__(cls, *args, **kwargs):
        if cls is StressHead:
            raise TypeError("StressHead is the base of the stress heads: build Rank2StressHead, DecomposedStressHead "
                            "or EquivariantStressHead (so2nn.models.STRESS_HEADS names them)")
        return super().__new__(cls)

    def __init__(
        self,
        layout: CoefficientLayout,
        *,
        sphere_channels: int,
        norm_type: str = "layer_norm_sh",
        edge_level_mlp: bool = False,
        num_mlp_layers: int = 2,
        source_target_embedding: bool = False,
        extensive: bool = False,
        statistics: StressStatistics | None = None,
    ) -> None:
        super().__init__()
        _check_num_layers(num_mlp_layers)
        statistics = StressStatistics() if statistics is None else statistics
        if not isinstance(statistics, StressStatistics):
            raise TypeError(f"statistics must be a StressStatistics, got {type(statistics).__name__}")
        self.check_statistics(statistics)
        self.layout = layout
        self.edge_level_mlp, self.extensive = bool(edge_level_mlp), bool(extensive)
        self.source_target_embedding = bool(source_target_embedding)
        #: The :class:`StressStatistics` this head de-normalises with.
        self.statistics = statistics
        self.channels = 2 * sphere_channels if source_target_embedding else sphere_channels
        self.harmonics_norm = normalization_layer(norm_type, CoefficientLayout(layout.lmax), 1)
        self.edge_norm = nn.LayerNorm(self.channels)

    @classmethod
    def check_statistics(cls, statistics: StressStatistics) -> None:
        """Raise a ValueError for statistics this kind does not apply (the config asks too)."""

    @classmethod
    def options(cls, config) -> dict:
        """This kind's constructor options from a ``config.stress`` (a
        :class:`~so2nn.models.StressConfig`)."""
        return dict(edge_level_mlp=config.edge_level_mlp, num_mlp_layers=config.num_mlp_layers,
                    source_target_embedding=config.source_target_embedding, extensive=config.extensive,
                    statistics=config.statistics)

    def extra_repr(self) -> str:
        return (f"{self.kind}, edge_level_mlp={self.edge_level_mlp}, "
                f"source_target_embedding={self.source_target_embedding}, extensive={self.extensive}")

    def _edge_features(self, x: torch.Tensor, edge_vec: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """:math:`h_e [E, C']`: node features contracted with the normalised harmonics of the edge."""
        harmonics = spherical_harmonics(self.layout.lmax, edge_vec, normalize=False, validate=False)
        w = self.harmonics_norm(harmonics[:, :, None])[:, :, 0]
        if self.source_target_embedding:
            x_edge = torch.cat([x.index_select(0, edge_index[0]), x.index_select(0, edge_index[1])], dim=2)
        else:
            x_edge = x.index_select(0, edge_index[1])
        return self.edge_norm(torch.einsum("eic,ei->ec", x_edge, w))

    def _per_system(self, node_values: torch.Tensor, batch: torch.Tensor, num_systems: int) -> torch.Tensor:
        if self.extensive:
            return node_values.new_zeros((num_systems, *node_values.shape[1:])).index_add(0, batch, node_values)
        return _mean_at(node_values, batch, num_systems)

    def _denormalised(self, stress: torch.Tensor) -> torch.Tensor:
        s = self.statistics
        return stress * s.std + s.mean if (s.std != 1.0 or s.mean != 0.0) else stress


class Rank2StressHead(StressHead):
    r"""Direct stress: the reference's plain rank-2 block, an MLP per Cartesian component.

    .. math::

        S_{b,\alpha\beta} = s_S \bigl\langle \mathrm{MLP}(\langle h_e\, r_{e\alpha} r_{e\beta} \rangle_i)
        \bigr\rangle_b + \mu_S

    with :math:`h_e` and the means as in :class:`StressHead` (``extensive``: the plain sum, which
    the reference does not divide by an atom count; ``edge_level_mlp``: the MLP acts on each edge
    before the mean over edges). The MLP is ``num_mlp_layers`` linear maps over channels with
    SiLU between, applied to each of the nine components alike.

    Equivariance: the MLP (its biases, its SiLU) acts component by component, which does not
    commute with rotations: :math:`S` rotates as :math:`R S R^\top` only up to an error that
    training may make small (as in the reference, whose numbers this head reproduces; with
    random weights the error is of the order of the stress itself). With ``num_mlp_layers=1``
    and zero last bias it is exact. A non-zero :math:`\mu_S` is added to every component, as
    fairchem's trainer adds it (not rotation equivariant either: the head warns).

    The arguments are those of :class:`StressHead` (``statistics`` with ``mean`` and ``std`` only).

    Weights: ``harmonics_norm``, ``edge_norm``, ``tensor_mlp`` (the reference's
    ``block.r2tensor_MLP``).

    Example:
        >>> head = Rank2StressHead(CoefficientLayout(2, 1), sphere_channels=4, statistics=StressStatistics(std=2.0))
        >>> pos = torch.randn(3, 3)
        >>> edge_index = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 2]])
        >>> vec = pos[edge_index[0]] - pos[edge_index[1]]
        >>> head(torch.randn(3, 9, 4), vec, edge_index, torch.zeros(3, dtype=torch.long), 1).shape
        torch.Size([1, 3, 3])
    """

    kind = "rank2"

    def __init__(self, layout: CoefficientLayout, *, sphere_channels: int, num_mlp_layers: int = 2, **options) -> None:
        super().__init__(layout, sphere_channels=sphere_channels, num_mlp_layers=num_mlp_layers, **options)
        self.tensor_mlp = _mlp(self.channels, num_mlp_layers)
        if self.statistics.mean != 0.0:
            warnings.warn(f"{type(self).__name__}: mean={self.statistics.mean:g} is added to every component of "
                          "the stress, as fairchem's trainer does; this is not rotation equivariant", stacklevel=2)

    @classmethod
    def check_statistics(cls, statistics: StressStatistics) -> None:
        parts = statistics.changed(("isotropic_mean", "isotropic_std", "anisotropic_mean", "anisotropic_std"))
        if parts:
            raise ValueError(f"stress statistics {parts} apply to the decomposed stress heads ('decomposed', "
                             "'equivariant') only: the plain rank-2 head is de-normalised with mean and std")

    def forward(self, x: torch.Tensor, edge_vec: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor,
                num_systems: int) -> torch.Tensor:
        """``x [N, (lmax+1)**2, C]``, edge vectors ``[E, 3]`` (source minus target, as the
        model's), ``edge_index [2, E]``, ``batch [N]`` -> stress ``[num_systems, 3, 3]``."""
        num_nodes, target = x.shape[0], edge_index[1]
        h = self._edge_features(x, edge_vec, edge_index)  # [E, C']
        outer = (edge_vec[:, :, None] * edge_vec[:, None, :]).reshape(-1, 1, 9)  # r r^T, [E, 1, 9]
        edge_tensor = h[:, :, None] * outer  # [E, C', 9]
        if self.edge_level_mlp:
            node_tensor = _mean_at(self.tensor_mlp(edge_tensor.transpose(1, 2))[..., 0], target, num_nodes)
        else:
            node_tensor = self.tensor_mlp(_mean_at(edge_tensor, target, num_nodes).transpose(1, 2))[..., 0]
        return self._denormalised(self._per_system(node_tensor, batch, num_systems).reshape(-1, 3, 3))


class DecomposedStressHead(StressHead):
    r"""Direct stress from an isotropic :math:`l = 0` and an anisotropic :math:`l = 2` part: the
    reference's decomposed rank-2 head (OMat24's).

    .. math::

        \sigma_b = \bigl\langle \mathrm{MLP}_0(\langle h_e\rangle_i) \bigr\rangle_b, \qquad
        a_{b,m} = \bigl\langle \mathrm{MLP}_2(\langle Y_{2m}(\hat r_e)\, h_e \rangle_i) \bigr\rangle_b,

    with :math:`h_e` and the means as in :class:`StressHead` (``extensive``: the sum divided by
    ``avg_num_nodes``; ``edge_level_mlp``: the MLPs act on each edge before the mean over edges),
    each part de-normalised with its own statistics, and the stress rebuilt in Cartesian form,

    .. math::

        S_b = s_S \Bigl[(s_0 \sigma_b + \mu_0) \frac{I}{\sqrt3}
              + \sum_{m=-2}^{2} (s_2 a_{b,m} + \mu_2) B_m\Bigr] + \mu_S,

    with :math:`B_m` the symmetric traceless basis of :data:`STRESS_BASIS`
    (:math:`r^\top B_m r \propto Y_{2m}(r)`). The MLPs are ``num_mlp_layers`` linear maps over
    channels with SiLU between, applied to each :math:`m` alike.

    Equivariance: :math:`h_e` is invariant and the isotropic part exactly invariant; the
    reference's :math:`\mathrm{MLP}_2` acts component by component (its biases, its SiLU), which
    does not commute with rotations, so the anisotropic part rotates as :math:`R S R^\top` only up
    to an error that training may make small (exact with ``num_mlp_layers=1`` and zero last bias).
    :class:`EquivariantStressHead` is the exact form. A non-zero :math:`\mu_2` or :math:`\mu_S` is
    added to every component, as fairchem's trainer adds it, which is not rotation equivariant
    either: the head warns.

    The arguments are those of :class:`StressHead`, and ``avg_num_nodes``, which divides the
    extensive sum.

    Weights: ``harmonics_norm``, ``edge_norm``, ``isotropic_mlp``, ``anisotropic_mlp`` (the
    reference's ``block.scalar_MLP``, ``block.irrep2_MLP``).

    Example:
        >>> head = DecomposedStressHead(CoefficientLayout(2, 1), sphere_channels=4, source_target_embedding=True)
        >>> pos = torch.randn(3, 3)
        >>> edge_index = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 2]])
        >>> vec = pos[edge_index[0]] - pos[edge_index[1]]
        >>> stress = head(torch.randn(3, 9, 4), vec, edge_index, torch.zeros(3, dtype=torch.long), 1)
        >>> stress.shape, bool(torch.allclose(stress, stress.transpose(1, 2)))
        (torch.Size([1, 3, 3]), True)
    """

    kind = "decomposed"

    def __init__(self, layout: CoefficientLayout, *, sphere_channels: int, num_mlp_layers: int = 2,
                 avg_num_nodes: float = 1.0, **options) -> None:
        super().__init__(layout, sphere_channels=sphere_channels, num_mlp_layers=num_mlp_layers, **options)
        if not avg_num_nodes > 0:
            raise ValueError(f"avg_num_nodes must be > 0, got {avg_num_nodes}")
        self.avg_num_nodes = float(avg_num_nodes)
        self.isotropic_mlp = _mlp(self.channels, num_mlp_layers)
        self.anisotropic_mlp = self._anisotropic_mlp(num_mlp_layers)
        for name in ("anisotropic_mean", "mean"):
            if getattr(self.statistics, name) != 0.0:
                warnings.warn(f"{type(self).__name__}: {name}={getattr(self.statistics, name):g} is added to every "
                              "component of the stress, as fairchem's trainer does; this is not rotation equivariant",
                              stacklevel=2)

    @classmethod
    def options(cls, config) -> dict:
        return {**super().options(config), "avg_num_nodes": config.avg_num_nodes}

    def _anisotropic_mlp(self, num_mlp_layers: int) -> nn.Module:
        return _mlp(self.channels, num_mlp_layers)

    def _anisotropic(self, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Degree-2 features ``u [*, 5, C']`` (and their invariants ``s [*, C']``) -> ``[*, 5]``."""
        return self.anisotropic_mlp(u)[..., 0]  # the reference's MLP, on each m alike

    def forward(self, x: torch.Tensor, edge_vec: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor,
                num_systems: int) -> torch.Tensor:
        """``x [N, (lmax+1)**2, C]``, edge vectors ``[E, 3]`` (source minus target, as the
        model's), ``edge_index [2, E]``, ``batch [N]`` -> stress ``[num_systems, 3, 3]``."""
        num_nodes, target, stats = x.shape[0], edge_index[1], self.statistics
        h = self._edge_features(x, edge_vec, edge_index)  # [E, C']
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
        parts = torch.cat([iso * stats.isotropic_std + stats.isotropic_mean,
                           aniso * stats.anisotropic_std + stats.anisotropic_mean], dim=1)  # [B, 6]
        return self._denormalised(torch.einsum("bk,kij->bij", parts, STRESS_BASIS.to(parts)))


class EquivariantStressHead(DecomposedStressHead):
    r"""Direct stress whose anisotropic part is exactly equivariant for any weights: so2nn's own
    decomposed head, for models trained with so2nn (not the reference's).

    As :class:`DecomposedStressHead`, with :math:`\mathrm{MLP}_2` replaced by a
    :class:`~so2nn.models.GatedTensorMLP`, linear maps without bias over the channels of the
    degree-2 features, alike for every :math:`m`, gated by the invariants of the isotropic path:

    .. math::

        a_{b,m} = \bigl\langle \mathrm{GatedMLP}_2\bigl(\langle Y_{2m}(\hat r_e)\, h_e \rangle_i;\;
        \langle h_e \rangle_i\bigr) \bigr\rangle_b, \qquad
        \mathrm{GatedMLP}_2(u; s)_m = w^\top \Bigl[\mathop{\bigcirc}_{k=1}^{K-1}
        \bigl(u \mapsto (W_k u) \odot \mathrm{SiLU}(G_k s + c_k)\bigr)\Bigr](u)_m

    (``edge_level_mlp``: per edge, gated by :math:`h_e`), and :math:`S_b` rebuilt as there.
    Equivariance: :math:`h_e` is invariant, the isotropic part exactly invariant, and the
    anisotropic part rotates with :math:`D^{(2)}(R)`, so :math:`S(R\,\cdot) = R S R^\top` exactly,
    for any weights. Its statistics need :math:`\mu_2 = \mu_S = 0` (a constant added to every
    component would break that).

    The arguments are those of :class:`DecomposedStressHead`.

    Weights: those of :class:`DecomposedStressHead`, ``anisotropic_mlp`` being the
    :class:`~so2nn.models.GatedTensorMLP`.

    Example:
        >>> head = EquivariantStressHead(CoefficientLayout(2, 1), sphere_channels=4)
        >>> pos = torch.randn(3, 3)
        >>> edge_index = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 2]])
        >>> vec = pos[edge_index[0]] - pos[edge_index[1]]
        >>> head(torch.randn(3, 9, 4), vec, edge_index, torch.zeros(3, dtype=torch.long), 1).shape
        torch.Size([1, 3, 3])
    """

    kind = "equivariant"

    @classmethod
    def check_statistics(cls, statistics: StressStatistics) -> None:
        nonzero = statistics.changed(("anisotropic_mean", "mean"))
        if nonzero:
            raise ValueError(f"the equivariant stress head needs stress statistics {nonzero} = 0: a constant added "
                             "to every component of the stress is not rotation equivariant")

    def _anisotropic_mlp(self, num_mlp_layers: int) -> nn.Module:
        return GatedTensorMLP(self.channels, num_mlp_layers)

    def _anisotropic(self, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.anisotropic_mlp(u, s)


#: The stress head kinds by the name ``config.stress.head`` gives them.
STRESS_HEADS: dict[str, type[StressHead]] = {
    head.kind: head for head in (DecomposedStressHead, Rank2StressHead, EquivariantStressHead)
}
