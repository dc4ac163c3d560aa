"""A second so2nn model, outside so2nn: the proof that training, checkpoints and the ASE
calculator work for any model that offers the protocol (so2nn.models.AtomisticModel).

Built only from public so2nn layers (edge-degree embedding, one equivariant graph attention, a
feed-forward readout), with its own config class and conservative forces F = -dE/dr. It is
registered when this module is imported: a process that loads its checkpoints imports it.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from so2nn.graph import edge_vectors, radius_graph
from so2nn.layers import EdgeDegreeEmbedding, EquivariantGraphAttention, FeedForwardNetwork, RadialBasis
from so2nn.models import AtomicInputs, TargetStatistics, read_inputs, register_model
from so2nn.so3 import CoefficientLayout, EdgeRotation

MODEL_TYPE = "tests.tiny_conservative"


@dataclass(frozen=True)
class TinyConfig:
    lmax: int = 1
    channels: int = 8
    num_basis: int = 8
    max_radius: float = 4.0
    max_neighbors: int = 50  # more than any atom has within max_radius: a smooth energy (no neighbour cap)
    max_num_elements: int = 30
    use_pbc: bool = True
    energy_mean: float = 0.0
    energy_std: float = 1.0
    forces_std: float = 1.0
    element_references: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> TinyConfig:
        return replace(self, **changes)


class TinyModel(nn.Module):
    """E = std * sum_i FFN(x_i)^(0) + mean (+ element references), x from one attention over an
    edge-degree embedding; F = -dE/dr."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = c = config
        self.layout = layout = CoefficientLayout(c.lmax, c.lmax)
        edge_channels = [c.num_basis, c.channels, c.channels]
        self.embedding = nn.Embedding(c.max_num_elements, c.channels)
        self.basis = RadialBasis(c.num_basis, cutoff=c.max_radius)
        self.edge_degree = EdgeDegreeEmbedding(layout, channels=c.channels, edge_channels_list=edge_channels,
                                               max_num_elements=None, rescale_factor=4.0)
        self.attention = EquivariantGraphAttention(
            layout,
            sphere_channels=c.channels,
            hidden_channels=c.channels,
            num_heads=2,
            attn_alpha_channels=4,
            attn_value_channels=4,
            output_channels=c.channels,
            edge_channels_list=edge_channels,
            activation="gate",
            grid_resolution=None,
            recompute=False,
        )
        self.readout = FeedForwardNetwork(
            layout,
            sphere_channels=c.channels,
            hidden_channels=c.channels,
            output_channels=1,
            activation="gate",
            grid_mlp=False,
            grid_resolution=None,
        )

    @classmethod
    def from_config(cls, config: TinyConfig) -> TinyModel:
        return cls(config)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("energy", "forces")

    @property
    def target_statistics(self) -> TargetStatistics:
        c = self.config
        return TargetStatistics(c.energy_mean, c.energy_std, c.forces_std, c.element_references)

    def with_target_statistics(self, stats: TargetStatistics) -> TinyModel:
        self.config = self.config.replace(
            energy_mean=stats.energy_mean,
            energy_std=stats.energy_std,
            forces_std=stats.forces_std,
            element_references=stats.element_references,
        )
        return self

    def build_graph(self, inputs: AtomicInputs) -> tuple[torch.Tensor, torch.Tensor]:
        cell = inputs.cell if inputs.periodic else None
        return radius_graph(
            inputs.pos.detach(),
            self.config.max_radius,
            cell,
            inputs.pbc if inputs.periodic else None,
            inputs.batch,
            self.config.max_neighbors,
        )

    def forward(self, data=None, **fields) -> dict[str, torch.Tensor]:
        c = self.config
        inputs = read_inputs(data, fields, c)
        if inputs.edge_index is None:
            inputs.edge_index, inputs.cell_offsets = self.build_graph(inputs)
        pos = inputs.pos if inputs.pos.requires_grad else inputs.pos.detach().requires_grad_(True)
        numbers, edge_index, batch = inputs.atomic_numbers, inputs.edge_index, inputs.batch
        with torch.enable_grad() if not torch.is_grad_enabled() else contextlib.nullcontext():
            vec = edge_vectors(
                pos,
                edge_index,
                inputs.cell_offsets if inputs.periodic else None,
                inputs.cell if inputs.periodic else None,
                batch,
            )
            rotation = EdgeRotation(self.layout, vec)
            edge_features = self.basis(vec.norm(dim=1))
            x = self.edge_degree(edge_features, numbers, edge_index, rotation, pos.shape[0])
            x = torch.cat([x[:, :1] + self.embedding(numbers).unsqueeze(1), x[:, 1:]], dim=1)
            x = x + self.attention(x, edge_features, numbers, edge_index, rotation)
            node_energy = self.readout(x)[:, 0, 0] * c.energy_std
            if c.element_references is not None:
                node_energy = (
                    node_energy
                    + torch.tensor(c.element_references, dtype=node_energy.dtype, device=pos.device)[numbers]
                )
            energy = (
                node_energy.new_zeros(inputs.num_systems).index_add(0, batch, node_energy) + c.energy_mean
            )
            (grad,) = torch.autograd.grad(
                energy.sum(), pos, create_graph=self.training, allow_unused=True, materialize_grads=True
            )
        if not self.training:
            energy = energy.detach()
        return {"energy": energy, "forces": -grad}


register_model(MODEL_TYPE, TinyModel)
