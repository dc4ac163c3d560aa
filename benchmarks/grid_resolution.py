"""Accuracy/speed trade-off of the S2-grid resolution, per released EquiformerV2 preset.

For each preset (full size, random weights), on a Cu(111) 4x4x4 slab with *OH (66 atoms,
periodic), it measures the relative force equivariance error under a random rotation (in
float64, so that rounding does not hide small errors) and the median float32 eval time
(no_grad), at several grid resolutions. Grid activations are the only
non-exact part of the model, so the error is their aliasing; the resolution is an
inference-time option (the weights do not depend on it).

    python benchmarks/grid_resolution.py [--presets oc20-31M ...] [--resolutions 18 24 36 48]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc111

from so2nn.layers import fine_grid_resolution
from so2nn.models import PRESETS, EquiformerV2, preset
from so2nn.testing import equivariance_error, random_rotation


def slab():
    atoms = fcc111("Cu", (4, 4, 4), vacuum=8.0)
    add_adsorbate(atoms, Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]]), 1.5, "fcc")
    atoms.pbc = (True, True, True)
    return (torch.tensor(atoms.positions), torch.tensor(np.array(atoms.cell))[None], torch.tensor(atoms.numbers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS))
    parser.add_argument("--resolutions", nargs="+", type=int, default=[18, 24, 36])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-fine", action="store_true", help="skip so2nn.layers.fine_grid_resolution(lmax)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pos, cell, numbers = slab()
    R = random_rotation(torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 66-atom Cu(111)+OH slab")
    print("| preset | resolution | force equivariance error (relative, float64) | energy error (relative) "
          "| float32 eval (s) |")
    print("|---|---|---|---|---|")
    for name in args.presets:
        torch.manual_seed(0)
        base = EquiformerV2(preset(name)).double().eval()
        state = base.state_dict()
        lmax = base.config.lmax
        fine = [] if args.no_fine else [fine_grid_resolution(lmax)]
        for resolution in sorted(set(args.resolutions + fine)):
            model = EquiformerV2(preset(name, grid_resolution=resolution)).eval()
            model.load_state_dict(state)
            seconds = []
            with torch.no_grad():
                for _ in range(3):
                    start = time.perf_counter()
                    model(pos=pos.float(), cell=cell.float(), atomic_numbers=numbers)
                    seconds.append(time.perf_counter() - start)
            seconds = sorted(seconds)[1]
            model = model.double()
            call = lambda p, c, model=model: model(pos=p, cell=c, atomic_numbers=numbers)  # noqa: E731
            energy, forces = equivariance_error(call, [pos, cell], ["vector", "vector"],
                                                {"energy": None, "forces": "vector"}, R)
            print(f"| {name} | {resolution} | {forces.relative:.1e} | {energy.relative:.1e} | {seconds:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
