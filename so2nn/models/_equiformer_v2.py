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
)
from ..so3 import CoefficientLayout, EdgeRotation
from ._config import EquiformerV2Config
from ._inputs import AtomicInputs, read_inputs

__all__ = ["EquiformerV2", "TransformerBlock"]


class TransformerBlock(nn.Module):
    r"""One EquiformerV2 block: pre-norm attention and feed-forward, each with a residual.

    .. math::

        x \leftarrow x + \mathrm{DropPath}\bigl(\mathrm{Attention}(\mathrm{Norm}_1(x))\bigr), \qquad
        x \leftarrow x + \mathrm{DropPath}\bigl(\mathrm{FFN}(\mathrm{Norm}_2(x))\bigr)

    Built by :class:`EquiformerV2` from its config (``num_layers`` of them); the forward takes
    the node features ``x [N, (lmax+1)**2, C]``, the invariant edge features, the atomic
    numbers, ``edge_index``, the :class:`~so2nn.so3.EdgeRotation` of the edges and ``batch``,
    and returns the new node features, same shape.

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

    def _regularise(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        if self.drop_path is not None:
            x = self.drop_path(x, batch)
        if self.proj_drop is not None:
            x = self.proj_drop(x)
        return x

    def forward(self, x, edge_features, atomic_numbers, edge_index, rotation, batch) -> torch.Tensor:
        x = x + self._regularise(self.ga(self.norm_1(x), edge_features, atomic_numbers, edge_index, rotation), batch)
        return x + self._regularise(self.ffn(self.norm_2(x)), batch)


class EquiformerV2(nn.Module):
    r"""EquiformerV2 for energies and forces of atomistic systems.

    The forward reads like the paper:

    1. atom embedding on :math:`l = 0` plus the edge-degree embedding;
    2. ``num_layers`` transformer blocks (equivariant graph attention + feed-forward);
    3. final norm; energy = :math:`\frac{1}{\bar n}\sum_i \mathrm{FFN}(x_i)^{(0)}`;
       forces = the :math:`l = 1` output of one more attention block (direct), or
       :math:`-\partial E/\partial r` (``config.direct_forces = False``).

    Args:
        config: :class:`EquiformerV2Config`, or the name of a preset (``"oc20-31M"``, ...).

    Inputs: a torch_geometric ``Data``/``Batch`` with OC20's fields (``pos [N, 3]``,
    ``atomic_numbers [N]``, ``natoms [B]``, ``batch [N]``, ``cell [B, 3, 3]``; optional
    ``pbc``, ``tags``, ``fixed``), or the same as keyword arguments. A precomputed graph
    (``edge_index [2, E]`` with row 0 the source and ``cell_offsets [E, 3]``) is used as given.

    Returns: ``{"energy": [B], "forces": [N, 3]}`` (eV, eV/Angstrom for OC20-trained weights).

    Example:
        >>> config = EquiformerV2Config(
        ...     lmax=2, mmax=1, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
        ...     attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
        ...     num_distance_basis=16, max_radius=5.0, alpha_drop=0.0, drop_path_rate=0.0)
        >>> model = EquiformerV2(config).eval()
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])   # a water molecule
        >>> out = model(pos=pos, atomic_numbers=torch.tensor([8, 1, 1]))
        >>> out["energy"].shape, out["forces"].shape
        (torch.Size([1]), torch.Size([3, 3]))
    """

    def __init__(self, config: EquiformerV2Config | str = "oc20-31M") -> None:
        super().__init__()
        if isinstance(config, str):
            from ._config import preset

            config = preset(config)
        self.config = c = config
        self.layout = layout = CoefficientLayout(c.lmax, c.mmax)
        self.sphere_embedding = nn.Embedding(c.max_num_elements, c.sphere_channels)
        # The reference hard-codes 600 Gaussians of width 2 steps over [0, max_radius].
        self.distance_expansion = RadialBasis(c.num_distance_basis, c.max_radius, "gaussian", 2.0)
        edge_channels_list = [c.num_distance_basis, c.edge_channels, c.edge_channels]
        elements = c.max_num_elements if c.use_atom_edge_embedding else None
        self.edge_degree_embedding = EdgeDegreeEmbedding(
            layout, c.sphere_channels, edge_channels_list, elements, c.avg_degree, kernels=c.kernels
        )
        self.blocks = nn.ModuleList(TransformerBlock(c, layout, edge_channels_list) for _ in range(c.num_layers))
        self.norm = normalization_layer(c.norm_type, layout, c.sphere_channels)
        self.energy_block = FeedForwardNetwork(
            layout, c.sphere_channels, c.ffn_hidden_channels, 1, c.activation, c.use_grid_mlp, c.grid_resolution,
            kernels=c.kernels,
        )
        self.force_block = None
        if c.direct_forces:
            self.force_block = EquivariantGraphAttention(
                layout, sphere_channels=c.sphere_channels, hidden_channels=c.attn_hidden_channels,
                num_heads=c.num_heads, attn_alpha_channels=c.attn_alpha_channels,
                attn_value_channels=c.attn_value_channels, output_channels=1, edge_channels_list=edge_channels_list,
                max_num_elements=elements, activation=c.activation, attn_renorm=c.use_attn_renorm, alpha_drop=0.0,
                grid_resolution=c.grid_resolution, recompute=c.recompute_edge_activations, kernels=c.kernels,
            )
        if c.use_energy_lin_ref:
            self.energy_lin_ref = nn.Parameter(torch.zeros(c.max_num_elements), requires_grad=False)
        else:
            self.energy_lin_ref = None

    @classmethod
    def from_fairchem(cls, checkpoint, use_ema: bool = True, **config_changes) -> EquiformerV2:
        """Build from an official EquiformerV2 checkpoint (path or loaded dict), weight for weight.

        The model config is read from the checkpoint; EMA weights are used when present
        (``use_ema``); ``config_changes`` override inference options (``grid_resolution``,
        ``graph_mode``, ...). Unknown or missing weights raise a ValueError listing them.
        fairchem itself is not needed.
        """
        from ._fairchem import load_fairchem_checkpoint

        config, state_dict = load_fairchem_checkpoint(checkpoint, use_ema, **config_changes)
        model = cls(config)
        model.load_reference_state_dict(state_dict)
        return model

    @classmethod
    def from_checkpoint(cls, checkpoint, use_ema: bool = True, **config_changes) -> EquiformerV2:
        """Build from a checkpoint (path or loaded dict): so2nn's own (:meth:`save`, or a training
        checkpoint of ``examples/train_oc20.py``) or an official fairchem one.

        EMA weights are used when present and ``use_ema``; ``config_changes`` override inference
        options (``grid_resolution``, ``graph_mode``, ...).
        """
        from ._checkpoint import load_checkpoint

        checkpoint = load_checkpoint(checkpoint)
        if checkpoint.get("format") != "so2nn":
            return cls.from_fairchem(checkpoint, use_ema, **config_changes)
        config = EquiformerV2Config(**checkpoint["config"]).replace(**config_changes)
        weights = checkpoint.get("ema") if use_ema and checkpoint.get("ema") is not None else checkpoint["model"]
        model = cls(config)
        model.load_reference_state_dict(weights)
        return model

    def save(self, path) -> None:
        """Write config and weights to ``path`` atomically (read back with :meth:`from_checkpoint`)."""
        from ._checkpoint import atomic_save, model_checkpoint

        atomic_save(model_checkpoint(self), path)

    def load_reference_state_dict(self, state_dict: dict) -> None:
        """Load mapped reference weights; raise a ValueError naming unknown/missing keys or bad shapes."""
        own = self.state_dict()
        unknown = sorted(set(state_dict) - set(own))
        missing = sorted(set(own) - set(state_dict))
        if unknown or missing:
            raise ValueError(f"checkpoint does not match the model: unknown keys {unknown}, missing keys {missing}")
        bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state_dict.items() if v.shape != own[k].shape]
        if bad:
            raise ValueError(f"checkpoint shapes do not match the model config: {bad}")
        self.load_state_dict(state_dict)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self.config
        return f"lmax={c.lmax}, mmax={c.mmax}, num_layers={c.num_layers}, sphere_channels={c.sphere_channels}"

    def build_graph(self, inputs: AtomicInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Radius graph (``max_radius``, ``max_neighbors`` per atom) of the inputs."""
        c = self.config
        return radius_graph(
            inputs.pos.detach(), c.max_radius, inputs.cell if inputs.periodic else None,
            inputs.pbc if inputs.periodic else None, inputs.batch, c.max_neighbors, strict=c.graph_mode == "reference",
        )

    def forward(self, data=None, **fields) -> dict[str, torch.Tensor]:
        c = self.config
        inputs = read_inputs(data, fields, c)
        if inputs.edge_index is None:
            inputs.edge_index, inputs.cell_offsets = self.build_graph(inputs)
        pos = inputs.pos
        if not c.direct_forces and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        # Gradient forces need a graph even under torch.no_grad(); direct forces never do.
        with torch.enable_grad() if not c.direct_forces else contextlib.nullcontext():
            energy, x, context = self._energy(inputs, pos)
            if not c.direct_forces:
                (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=self.training)
                return {"energy": energy if self.training else energy.detach(), "forces": -grad}
        edge_features, edge_index, rotation = context
        forces = self.force_block(x, edge_features, inputs.atomic_numbers, edge_index, rotation)[:, 1:4, 0]
        return {"energy": energy, "forces": forces * c.forces_std if c.forces_std != 1.0 else forces}

    def _energy(self, inputs: AtomicInputs, pos: torch.Tensor):
        c = self.config
        edge_index, numbers, batch = inputs.edge_index, inputs.atomic_numbers, inputs.batch
        vec = edge_vectors(pos, edge_index, inputs.cell_offsets if inputs.periodic else None,
                           inputs.cell if inputs.periodic else None, batch)
        distance = vec.norm(dim=1)
        if distance.numel() and bool((distance < c.min_distance).any()):
            e = int((distance < c.min_distance).nonzero()[0, 0])
            raise ValueError(
                f"atoms {int(edge_index[0, e])} and {int(edge_index[1, e])} are {float(distance[e].detach()):.3g} A apart "
                f"(< min_distance={c.min_distance}): overlapping atoms"
            )
        rotation = EdgeRotation(self.layout, vec)
        edge_features = self.distance_expansion(distance)
        num_atoms = pos.shape[0]
        x = self.edge_degree_embedding(edge_features, numbers, edge_index, rotation, num_atoms)
        x = torch.cat([x[:, :1] + self.sphere_embedding(numbers).unsqueeze(1), x[:, 1:]], dim=1)
        recompute = c.checkpoint_activations and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # store only the block's input; rerun it in backward (same dropout masks)
                x = torch.utils.checkpoint.checkpoint(
                    block, x, edge_features, numbers, edge_index, rotation, batch, use_reentrant=False
                )
            else:
                x = block(x, edge_features, numbers, edge_index, rotation, batch)
        x = self.norm(x)
        node_energy = self.energy_block(x)[:, 0, 0]
        energy = node_energy.new_zeros(inputs.num_systems).index_add(0, batch, node_energy) / c.avg_num_nodes
        if c.energy_std != 1.0 or c.energy_mean != 0.0:
            energy = energy * c.energy_std + c.energy_mean
        if self.energy_lin_ref is not None:
            energy = energy.index_add(0, batch, self.energy_lin_ref.to(energy.dtype).index_select(0, numbers))
        return energy, x, (edge_features, edge_index, rotation)
