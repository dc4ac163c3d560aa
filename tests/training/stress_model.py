"""A small model that outputs stress, for the training tests: a learned embedded-atom model.

E = std * sum_i MLP([rho_i, e(Z_i)]) + mean (+ element references), with learned densities
rho_i = sum_j f_c(r_ij) * phi(r_ij) * w(Z_j) (Gaussians phi, a cosine cutoff f_c); F = -dE/dr;
stress sigma = (1/V) dE/d(strain) through a symmetric strain of positions and cell (ASE's sign:
positive = tensile). Smooth in the positions and cell, so it can learn EMT's stress. Registered
when this module is imported (a process that loads its checkpoints imports it).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from so2nn.graph import edge_vectors, radius_graph
from so2nn.models import AtomicInputs, TargetStatistics, read_inputs, register_model

MODEL_TYPE = "tests.stress_eam"


@dataclass(frozen=True)
class StressEAMConfig:
    channels: int = 16
    num_basis: int = 12
    max_radius: float = 5.0
    max_neighbors: int = 100  # no cap: a smooth energy
    max_num_elements: int = 90
    use_pbc: bool = True
    stress: bool = True  # output stress (periodic systems)
    energy_mean: float = 0.0
    energy_std: float = 1.0
    forces_std: float = 1.0
    element_references: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> StressEAMConfig:
        return replace(self, **changes)


class StressEAM(nn.Module):
    config_class = StressEAMConfig

    def __init__(self, config: StressEAMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.register_buffer("centres", torch.linspace(0.5, c.max_radius, c.num_basis), persistent=False)
        self.density_weights = nn.Embedding(c.max_num_elements, c.num_basis * c.channels)
        self.embedding = nn.Embedding(c.max_num_elements, c.channels)
        self.mlp = nn.Sequential(nn.Linear(2 * c.channels, c.channels), nn.SiLU(), nn.Linear(c.channels, 1))
        nn.init.normal_(self.density_weights.weight, std=1.0 / math.sqrt(c.num_basis))

    @classmethod
    def from_config(cls, config: StressEAMConfig) -> StressEAM:
        return cls(config)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("energy", "forces", "stress") if self.config.stress else ("energy", "forces")

    @property
    def target_statistics(self) -> TargetStatistics:
        c = self.config
        return TargetStatistics(c.energy_mean, c.energy_std, c.forces_std, c.element_references)

    def with_target_statistics(self, stats: TargetStatistics) -> StressEAM:
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
        numbers, (src, dst), batch = inputs.atomic_numbers, inputs.edge_index, inputs.batch
        pos = inputs.pos.detach().requires_grad_(True)
        with_stress = c.stress and inputs.periodic
        with torch.enable_grad() if not torch.is_grad_enabled() else contextlib.nullcontext():
            cell, strained, wrt = inputs.cell if inputs.periodic else None, pos, [pos]
            if with_stress:
                strain = torch.zeros(
                    inputs.num_systems, 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True
                )
                symmetric = (strain + strain.transpose(1, 2)) / 2
                strained = pos + torch.einsum("ni,nij->nj", pos, symmetric[batch])
                cell = cell + cell @ symmetric
                wrt.append(strain)
            vec = edge_vectors(
                strained, inputs.edge_index, inputs.cell_offsets if inputs.periodic else None, cell, batch
            )
            r = vec.norm(dim=1)
            envelope = 0.5 * (torch.cos(math.pi * r / c.max_radius) + 1.0) * (r < c.max_radius)
            basis = torch.exp(-((r[:, None] - self.centres) ** 2) / 0.5) * envelope[:, None]  # [E, K]
            weights = self.density_weights(numbers[src]).view(-1, c.num_basis, c.channels)
            density = pos.new_zeros(pos.shape[0], c.channels).index_add(
                0, dst, torch.einsum("ek,ekc->ec", basis, weights)
            )
            node_energy = self.mlp(torch.cat([density, self.embedding(numbers)], dim=1))[:, 0] * c.energy_std
            if c.element_references is not None:
                node_energy = (
                    node_energy
                    + torch.tensor(c.element_references, dtype=node_energy.dtype, device=pos.device)[numbers]
                )
            energy = (
                node_energy.new_zeros(inputs.num_systems).index_add(0, batch, node_energy) + c.energy_mean
            )
            grads = torch.autograd.grad(
                energy.sum(), wrt, create_graph=self.training, materialize_grads=True, allow_unused=True
            )
        out = {"energy": energy if self.training else energy.detach(), "forces": -grads[0]}
        if c.stress:
            if not with_stress:
                raise ValueError("stress needs a periodic system")
            out["stress"] = grads[1] / torch.linalg.det(inputs.cell).abs().view(-1, 1, 1)
        return out


register_model(MODEL_TYPE, StressEAM)
