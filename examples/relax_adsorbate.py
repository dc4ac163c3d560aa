"""Relax an adsorbate on a metal slab with EquiformerV2 through ASE, and check it against EMT.

The system is built the way OC20 (and so2nn's EMT demo dataset) builds its systems: an
adsorbate (O by default) on a Cu(111) slab that is periodic in all three directions, with
tags 0 (subsurface, held in place by FixAtoms), 1 (surface) and 2 (adsorbate). The example
relaxes it with so2nn's ASE calculator (BFGS or FIRE), prints the energy of every step and the
final largest force, writes the trajectory (--out), then relaxes the same start with EMT itself
and compares the two.

The model: --checkpoint PATH (an so2nn checkpoint or an official fairchem one). Without it,
the model the training example saves (runs/train_oc20/model.pt); without that, a tiny model
trained first by running the training example (a few minutes on a CPU, about one on a GPU)::

    python examples/relax_adsorbate.py
    python examples/relax_adsorbate.py --adsorbate CO --site ontop --optimizer FIRE --fmax 0.03
    python examples/relax_adsorbate.py --checkpoint runs/train_oc20/model.pt --device cuda

Energies are on the scale the demo dataset trains on: EMT's energy minus the sum of per-element
references (:func:`so2nn.data.emt.reference_energy`). A model trained on other data (official
OC20 weights predict DFT adsorption energies) lives on another scale: then only the geometric
comparison with EMT means something. A model with direct forces (the default) predicts forces
that are not the gradient of its energy, so its energy need not fall at every step; how close its
relaxed structure comes to EMT's is the last lines' measure of what it learned.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import BFGS, FIRE

from so2nn.calculators import EquiformerV2Calculator
from so2nn.cli import (
    UsageError,
    add_threads_argument,
    check_device,
    describe_threads,
    exit_on_interrupt,
    positive_float,
    positive_int,
    set_threads,
    usage_errors,
)
from so2nn.data.emt import ADSORBATES, METALS, reference_energy

TRAIN_SCRIPT = Path(__file__).resolve().with_name("train_oc20.py")
TRAINED_MODEL = Path("runs/train_oc20/model.pt")  # where examples/train_oc20.py saves by default
OPTIMIZERS = {"BFGS": BFGS, "FIRE": FIRE}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = p.add_argument_group("model")
    model.add_argument("--checkpoint", type=Path, help="so2nn or fairchem checkpoint (default: "
                       f"{TRAINED_MODEL} if it exists, else a tiny model trained first)")
    model.add_argument("--train-steps", type=positive_int, default=600,
                       help="training steps of that tiny model (%(default)s)")
    model.add_argument("--train-out", type=Path, default=Path("runs/relax_model"),
                       help="where the tiny model is trained, reused when its model.pt exists (%(default)s)")
    model.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    model.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="(%(default)s)")
    add_threads_argument(model)
    system = p.add_argument_group("system")
    system.add_argument("--metal", choices=METALS, default="Cu", help="of the fcc(111) slab (%(default)s)")
    system.add_argument("--adsorbate", choices=sorted(ADSORBATES), default="O", help="(%(default)s)")
    system.add_argument("--site", choices=["ontop", "bridge", "fcc", "hcp"], default="fcc",
                        help="(%(default)s)")
    system.add_argument("--height", type=float, default=1.6,
                        help="initial height of the binding atom, A (%(default)s)")
    relaxation = p.add_argument_group("relaxation")
    relaxation.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="BFGS", help="(%(default)s)")
    relaxation.add_argument("--fmax", type=positive_float, default=0.05,
                            help="converged below this force on every free atom, eV/A (%(default)s)")
    relaxation.add_argument("--steps", type=positive_int, default=200,
                            help="at most this many optimiser steps (%(default)s)")
    relaxation.add_argument("--out", type=Path, default=Path("runs/relax_adsorbate/relax.traj"),
                            help="the model's trajectory, ASE .traj (%(default)s)")
    args = p.parse_args(argv)
    if not args.fmax > 0 or args.steps < 1 or args.train_steps < 1:
        p.error("--fmax must be > 0, --steps and --train-steps >= 1")
    with usage_errors(p):
        args.device = str(check_device(args.device))
    return args


def adsorbate_on_slab(metal: str, adsorbate: str, site: str, height: float) -> Atoms:
    """A 2x2x3 fcc(111) slab with the adsorbate at ``site``, tagged and constrained as in OC20."""
    slab = fcc111(metal, size=(2, 2, 3), vacuum=6.0, periodic=True)
    layer = slab.get_tags()  # ASE numbers the layers from the top: 1 is the surface
    symbols, positions = ADSORBATES[adsorbate]  # binding atom first, pointing away from the surface
    add_adsorbate(slab, Atoms(symbols, positions=positions), height, site)
    tags = np.concatenate([np.where(layer == 1, 1, 0), np.full(len(positions), 2)])
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(mask=tags == 0))
    return slab


def find_checkpoint(args) -> Path:
    """The checkpoint to use, training a tiny model first when there is none."""
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise UsageError(f"--checkpoint: no checkpoint file at {args.checkpoint}")
        return args.checkpoint
    trained = args.train_out / "model.pt"
    for path in (TRAINED_MODEL, trained):
        if path.is_file():
            print(f"model: {path}")
            return path
    command = [sys.executable, str(TRAIN_SCRIPT), "--tiny", "--max-steps", str(args.train_steps),
               "--out", str(args.train_out), *(["--threads", str(args.threads)] if args.threads else [])]
    print(f"no model at {TRAINED_MODEL}: training a tiny one first\n  {' '.join(command)}", flush=True)
    process = subprocess.Popen(command)
    try:
        status = process.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches both processes: the training saves its checkpoint and stops
        status = process.wait()
    if status < 0 or status >= 128:  # stopped by a signal, its checkpoint saved: exit as an interrupted command
        print("training interrupted: continue it with the --resume command above, then run this example again",
              flush=True)
        raise SystemExit(128 - status if status < 0 else status)
    if status != 0:
        raise SystemExit("training the model failed (see its output above)")
    if not trained.is_file():  # stopped early (it leaves a checkpoint to --resume)
        raise SystemExit(f"training ended without writing {trained} (see its output above)")
    return trained


def max_force(atoms: Atoms) -> float:
    """The largest force on a free atom (ASE zeroes the forces on FixAtoms atoms)."""
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def relax(atoms: Atoms, optimizer: str, fmax: float, steps: int, offset: float = 0.0, trajectory=None,
          label: str = "") -> tuple[list[float], bool]:
    """Relax ``atoms`` in place: the energy (minus ``offset``) at every step, printed when
    ``label`` is given, and whether it converged."""
    dynamics = OPTIMIZERS[optimizer](atoms, logfile=None, trajectory=trajectory)
    energies = []

    def record():
        energies.append(atoms.get_potential_energy() - offset)
        if label:
            print(f"  {label} step {len(energies) - 1:3d}: energy {energies[-1]:9.4f} eV, "
                  f"max force {max_force(atoms):.4f} eV/A")

    dynamics.attach(record, interval=1)
    converged = bool(dynamics.run(fmax=fmax, steps=steps))
    return energies, converged


def binding_height(atoms: Atoms) -> float:
    """Height of the adsorbate's binding atom above the mean height of the surface layer."""
    tags = atoms.get_tags()
    return float(atoms.positions[tags == 2][0, 2] - atoms.positions[tags == 1][:, 2].mean())


def main(argv=None) -> dict:
    args = parse_args(argv)
    with exit_on_interrupt("a model it trained is kept for the next run; the same command runs it again"), \
            usage_errors():
        return run(args)


def run(args) -> dict:
    set_threads(args.threads)
    start = adsorbate_on_slab(args.metal, args.adsorbate, args.site, args.height)
    offset = reference_energy(start.numbers)  # the demo dataset's target is EMT - reference
    print(f"{args.adsorbate} on {args.metal}(111), {args.site} site: {len(start)} atoms, "
          f"{int((start.get_tags() == 0).sum())} fixed; reference energy {offset:.4f} eV")

    checkpoint = find_checkpoint(args)
    atoms = start.copy()
    try:
        atoms.calc = EquiformerV2Calculator(checkpoint, device=args.device, dtype=args.dtype)
    except ValueError as error:
        raise UsageError(f"--checkpoint: {error}") from None
    c = atoms.calc.model.config
    print(f"EquiformerV2 lmax={c.lmax} mmax={c.mmax} layers={c.num_layers} from {checkpoint}, "
          f"{'direct' if c.direct_forces else 'conservative'} forces, {atoms.calc.device} {args.dtype}, "
          f"{describe_threads()}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"relaxing with the model ({args.optimizer}, fmax {args.fmax} eV/A, at most {args.steps} steps):")
    energies, converged = relax(atoms, args.optimizer, args.fmax, args.steps, trajectory=str(args.out),
                                label="model")
    final_force = max_force(atoms)

    emt = start.copy()  # the same start, relaxed by EMT itself
    emt.calc = EMT()
    emt_energies, emt_converged = relax(emt, args.optimizer, args.fmax, args.steps, offset=offset)
    check = atoms.copy()
    check.calc = EMT()
    emt_at_model = check.get_potential_energy() - offset
    adsorbate = atoms.get_tags() == 2
    apart = float(np.linalg.norm(atoms.positions[adsorbate] - emt.positions[adsorbate], axis=1).max())

    def outcome(energies: list[float], converged: bool) -> str:
        return f"{len(energies) - 1} steps, {'converged' if converged else 'NOT converged'}"

    print(f"trajectory ({len(energies)} frames): {args.out}")
    print(f"model: {outcome(energies, converged)}; energy {energies[0]:.4f} -> {energies[-1]:.4f} eV; "
          f"final max force {final_force:.4f} eV/A")
    print(f"EMT:   {outcome(emt_energies, emt_converged)}; "
          f"energy {emt_energies[0]:.4f} -> {emt_energies[-1]:.4f} eV")
    print(f"relaxed energy: model {energies[-1]:.4f} eV vs EMT {emt_energies[-1]:.4f} eV "
          f"(model - EMT = {energies[-1] - emt_energies[-1]:+.4f} eV)")
    print(f"EMT at the model's relaxed structure: {emt_at_model:.4f} eV, "
          f"{emt_at_model - emt_energies[-1]:+.4f} eV from EMT's own relaxed structure")
    print(f"adsorbate: binding atom {binding_height(atoms):.3f} A above the surface "
          f"(EMT: {binding_height(emt):.3f} A); its atoms at most {apart:.3f} A from EMT's relaxed positions")
    return {"energies": energies, "converged": converged, "max_force": final_force,
            "emt_energies": emt_energies, "emt_converged": emt_converged, "emt_at_model": emt_at_model,
            "adsorbate_distance": apart}


if __name__ == "__main__":
    main()
