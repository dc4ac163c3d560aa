"""Compose a small equivariant network from so2nn's layers and train it.

The network is not EquiformerV2: an edge-degree embedding, two message-passing blocks of
SO(2)-convolution attention with gate activations (exactly equivariant), and a readout that
takes the l = 1 coefficients as a vector per atom. The task: predict the pairwise Morse
forces on the atoms of small molecules, from random rotations and rattles of ASE's
molecules. At the end it checks the trained model with so2nn.testing.

    python examples/compose_custom_network.py        # 600 steps, one molecule each
"""

from __future__ import annotations

import argparse
import time

import torch
from ase.build import molecule
from torch import nn

from so2nn.cli import (
    add_threads_argument,
    describe_threads,
    exit_on_interrupt,
    non_negative_int,
    positive_int,
    set_threads,
    usage_errors,
)
from so2nn.graph import edge_vectors, radius_graph
from so2nn.layers import (
    EdgeDegreeEmbedding,
    EquivariantGraphAttention,
    FeedForwardNetwork,
    RadialBasis,
    SeparableLayerNorm,
    SO3Linear,
)
from so2nn.so3 import CoefficientLayout, EdgeRotation
from so2nn.testing import assert_equivariant, random_rotation

CUTOFF = 4.0
MOLECULES = ["H2O", "NH3", "CH4", "CH3OH", "C2H6", "C2H4", "HCOOH", "CH3CHO", "CH3CH2OH", "CH3NO2"]


def morse_forces(pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """Forces of a Morse potential between every pair within the cutoff (the target)."""
    pos = pos.detach().requires_grad_()
    r = edge_vectors(pos, edge_index).norm(dim=1)
    energy = 0.5 * ((1 - torch.exp(-1.5 * (r - 1.3))) ** 2).sum()
    return -torch.autograd.grad(energy, pos)[0]


class VectorNet(nn.Module):
    """Atom types -> equivariant features -> one vector per atom."""

    def __init__(self, layout: CoefficientLayout, channels: int = 16, num_blocks: int = 2, num_basis: int = 16):
        super().__init__()
        self.layout = layout
        self.basis = RadialBasis(num_basis, CUTOFF)
        self.atom_embedding = nn.Embedding(10, channels)
        self.edge_degree = EdgeDegreeEmbedding(layout, channels, [num_basis, 16], max_num_elements=10,
                                               rescale_factor=4.0)
        self.norms = nn.ModuleList(SeparableLayerNorm(layout, channels) for _ in range(2 * num_blocks))
        self.attention = nn.ModuleList(
            EquivariantGraphAttention(
                layout, channels, channels, num_heads=2, attn_alpha_channels=8, attn_value_channels=8,
                output_channels=channels, edge_channels_list=[num_basis, 16, 16], max_num_elements=10,
                activation="gate",
            )
            for _ in range(num_blocks)
        )
        self.ffn = nn.ModuleList(
            FeedForwardNetwork(layout, channels, 2 * channels, channels, activation="gate", grid_mlp=False)
            for _ in range(num_blocks)
        )
        self.readout = SO3Linear(layout, channels, 1)

    def forward(self, pos: torch.Tensor, numbers: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        vec = edge_vectors(pos, edge_index)
        rotation = EdgeRotation(self.layout, vec)  # edge frames: once per forward, shared by the blocks
        edge_features = self.basis(vec.norm(dim=1))
        x = self.edge_degree(edge_features, numbers, edge_index, rotation, pos.shape[0])
        x = torch.cat([x[:, :1] + self.atom_embedding(numbers).unsqueeze(1), x[:, 1:]], dim=1)
        for i, (attention, ffn) in enumerate(zip(self.attention, self.ffn)):
            x = x + attention(self.norms[2 * i](x), edge_features, numbers, edge_index, rotation)
            x = x + ffn(self.norms[2 * i + 1](x))
        return self.readout(x)[:, 1:4, 0]  # l = 1 coefficients: (x, y, z) in e3nn's basis


def sample(generator: torch.Generator):
    """A randomly rotated, rattled molecule with its graph and Morse forces."""
    atoms = molecule(MOLECULES[int(torch.randint(len(MOLECULES), (1,), generator=generator))])
    pos = torch.tensor(atoms.positions, dtype=torch.get_default_dtype())
    pos = (pos @ random_rotation(generator, pos.dtype).T
           + 0.1 * torch.randn(pos.shape, generator=generator, dtype=pos.dtype))
    numbers = torch.tensor(atoms.numbers)
    edge_index, _ = radius_graph(pos, CUTOFF)
    return pos, numbers, edge_index, morse_forces(pos, edge_index)


def main(argv=None) -> None:
    args = parse_args(argv)
    with exit_on_interrupt("this example saves nothing; the same command runs it again"):
        run(args)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=600,
                        help="training steps, one molecule each (default: 600)")
    parser.add_argument("--lmax", type=positive_int, default=2, help="largest degree of the features (default: 2)")
    parser.add_argument("--mmax", type=non_negative_int, default=1,
                        help="largest order kept in edge frames (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the samples (default: 0)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.mmax > args.lmax:
        parser.error(f"--mmax {args.mmax} must be <= --lmax {args.lmax}")
    with usage_errors(parser):
        set_threads(args.threads)
    return args


def run(args) -> None:
    print(f"cpu, {describe_threads()}", flush=True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = VectorNet(CoefficientLayout(args.lmax, args.mmax))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    validation = [sample(torch.Generator().manual_seed(10_000 + i)) for i in range(20)]

    def validation_mae() -> float:
        with torch.no_grad():
            return sum(float((model(p, z, e) - f).abs().mean()) for p, z, e, f in validation) / len(validation)

    baseline = sum(float(f.abs().mean()) for *_, f in validation) / len(validation)
    print(f"{sum(p.numel() for p in model.parameters())} parameters; predicting zero: MAE {baseline:.4f}")
    start = last = time.perf_counter()
    for step in range(1, args.steps + 1):
        pos, numbers, edge_index, forces = sample(generator)
        loss = (model(pos, numbers, edge_index) - forces).pow(2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step:4d}  train loss {loss.item():.4f}  validation MAE {validation_mae():.4f}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            last = time.perf_counter()
        elif time.perf_counter() - last > 10:  # a slow machine: say where it is in between
            print(f"step {step:4d}  train loss {loss.item():.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
            last = time.perf_counter()

    pos, numbers, edge_index, _ = validation[0]
    model = model.double()
    errors = assert_equivariant(
        lambda pos: model(pos, numbers, edge_index), [pos.double()], ["vector"], "vector", tolerance=1e-9
    )
    print(f"trained model, float64, random rotation: {errors[0]}")
    final = validation_mae_double(model, validation)
    print(f"validation MAE {final:.4f} vs {baseline:.4f} for predicting zero")


def validation_mae_double(model, validation) -> float:
    with torch.no_grad():
        total = sum(float((model(p.double(), z, e) - f.double()).abs().mean()) for p, z, e, f in validation)
        return total / len(validation)


if __name__ == "__main__":
    main()
