r"""Output heads: the modules that turn node features into the predicted quantities.

A head reads the final node features ``x [N, (lmax+1)**2, C]`` (after the model's last norm)
and returns one output of the model, in the units of its training targets: the energy head
``[B]`` (eV), the direct force head ``[N, 3]`` (eV/Angstrom), the direct stress heads
``[B, 3, 3]`` (eV/Angstrom^3; one class per kind, see :class:`~so2nn.models.StressHead`). A
model keeps its heads in a :class:`torch.nn.ModuleDict` under the names of its outputs
(``model.heads["energy"]``, ``model.heads["forces"]``, ``model.heads["stress"]``), so that a
checkpoint's weights of head ``name`` are the keys ``heads.<name>.*``.

Each head holds the target statistics it de-normalises with as plain floats (not weights):
the network predicts normalised targets, the head returns physical units. The head is their
one home: the model's config reads them from it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import EquivariantGraphAttention, FeedForwardNetwork
from ..so3 import CoefficientLayout, EdgeRotation

__all__ = ["EnergyHead", "ForceHead"]


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
        # (scatter_add, not index_add: inductor's CPU code generator fails on index_add of these rows)
        energy = node_energy.new_zeros(num_systems).scatter_add(0, batch, node_energy)
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
            energy = energy.scatter_add(0, batch, per_atom)
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
