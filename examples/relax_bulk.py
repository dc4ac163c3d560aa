"""Relax the positions and the cell of a bulk crystal with a conservative so2nn model through ASE.

The crystal: the conventional cubic cell of an fcc metal (4 atoms, --repeat for a supercell),
strained (--strain: stretched and sheared) and rattled, so that both the atoms and the cell
have somewhere to go. The example relaxes it with so2nn's ASE calculator and ASE's
FrechetCellFilter (positions and cell together, BFGS or FIRE), prints energy, largest force and
pressure at every step, writes the trajectory (--out), reports the final pressure and lattice
parameters, then relaxes the same start with EMT itself and compares the two.

Relaxing a cell needs the stress, so the model must provide one: a conservative EquiformerV2
(``direct_forces=False``, stress = (1/V) dE/d(strain)) or a model with a stress head. The
model: --checkpoint PATH (an so2nn checkpoint or an official fairchem one). Without it, a tiny
conservative model is trained first on EMT frames of randomly strained, rattled cells of the
same metal (energies and forces; under a minute on a laptop CPU), and reused from --train-out
afterwards::

    python examples/relax_bulk.py
    python examples/relax_bulk.py --metal Al --strain 0.04 --optimizer FIRE
    python examples/relax_bulk.py --checkpoint my_conservative_model.pt --device cuda

Energies are EMT's (eV; the tiny model learns them as they are). A model trained on other data
(DFT) lives on another scale and relaxes to its own lattice constant: then the comparison with
EMT says how far the two potentials disagree, not whether the relaxation worked; the final
pressure and force are that measure.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE
from ase.units import GPa

from so2nn.calculators import So2nnCalculator
from so2nn.cli import (
    UsageError,
    add_threads_argument,
    check_device,
    describe_threads,
    exit_on_interrupt,
    non_negative_int,
    positive_float,
    positive_int,
    set_threads,
    usage_errors,
)
from so2nn.data import atoms_to_data
from so2nn.data.emt import METALS
from so2nn.models import EquiformerV2Config
from so2nn.training import Trainer, TrainingConfig

OPTIMIZERS = {"BFGS": BFGS, "FIRE": FIRE}



def tiny_model_config(metal: str, repeat: int) -> EquiformerV2Config:
    r"""The tiny conservative model trained when no checkpoint is given (a few thousand parameters).

    EquiformerV2 has no smooth cutoff: its energy jumps when a neighbour crosses
    ``max_radius``. The cutoff is therefore put between the second (:math:`a`) and third
    (:math:`1.22\,a`) neighbour shells of the fcc lattice, at :math:`1.1\,a`, where no
    neighbour comes near it within the strains the example uses. The energy is the sum over
    the cell's atoms divided by ``avg_num_nodes``: their number here.
    """
    a = bulk(metal, "fcc", cubic=True).cell[0, 0]
    return EquiformerV2Config(
        lmax=2, mmax=1, num_layers=1, sphere_channels=16, attn_hidden_channels=16, num_heads=2,
        attn_alpha_channels=8, attn_value_channels=8, ffn_hidden_channels=16, edge_channels=16,
        num_distance_basis=32, max_radius=round(1.1 * a, 3), max_neighbors=50, alpha_drop=0.0, drop_path_rate=0.0,
        direct_forces=False, activation="gate", use_grid_mlp=False, avg_num_nodes=4.0 * repeat**3,
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = p.add_argument_group("model")
    model.add_argument("--checkpoint", type=Path,
                       help="so2nn or fairchem checkpoint of a model with stress (default: a tiny conservative "
                            "model trained first on EMT frames of the metal, see --train-*)")
    model.add_argument("--train-frames", type=positive_int, default=128,
                       help="EMT frames (strained, rattled cells) the tiny model trains on (%(default)s)")
    model.add_argument("--train-steps", type=positive_int, default=400, help="its training steps (%(default)s)")
    model.add_argument("--train-out", type=Path, default=Path("runs/relax_bulk_model"),
                       help="where it is trained; its model.pt is reused when it exists (%(default)s)")
    model.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    model.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                       help="(%(default)s: a cell relaxation differences small energies)")
    add_threads_argument(model)
    system = p.add_argument_group("system")
    system.add_argument("--metal", choices=METALS, default="Cu", help="the fcc metal (%(default)s)")
    system.add_argument("--repeat", type=positive_int, default=1,
                        help="the conventional cubic cell repeated this many times along each axis (%(default)s)")
    system.add_argument("--strain", type=float, default=0.03,
                        help="initial stretch of the cell (fraction), with a shear of a third of it (%(default)s)")
    system.add_argument("--rattle", type=float, default=0.05,
                        help="standard deviation of the initial displacements, A (%(default)s)")
    system.add_argument("--seed", type=non_negative_int, default=0,
                        help="of the rattle and the training data (%(default)s)")
    relaxation = p.add_argument_group("relaxation")
    relaxation.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="BFGS", help="(%(default)s)")
    relaxation.add_argument("--fmax", type=positive_float, default=0.01,
                            help="converged below this on every atom and on the cell (the filter's "
                                 "generalised forces, eV/A) (%(default)s)")
    relaxation.add_argument("--steps", type=positive_int, default=200,
                            help="at most this many optimiser steps (%(default)s)")
    relaxation.add_argument("--out", type=Path, default=Path("runs/relax_bulk/relax.traj"),
                            help="the model's trajectory, ASE .traj (%(default)s)")
    args = p.parse_args(argv)
    if not args.fmax > 0 or args.steps < 1 or args.train_steps < 1 or args.repeat < 1:
        p.error("--fmax must be > 0; --steps, --train-steps and --repeat >= 1")
    if args.train_frames < 10:
        p.error("--train-frames must be >= 10 (a fifth of them validate)")
    if not 0 <= args.strain < 0.2 or args.rattle < 0:
        p.error("--strain must be in [0, 0.2) and --rattle >= 0")
    with usage_errors(p):
        args.device = str(check_device(args.device))
    return args


def strained_crystal(metal: str, repeat: int, strain: float, rattle: float, seed: int) -> Atoms:
    """The cubic fcc cell of ``metal`` at EMT's lattice constant, stretched by ``strain``,
    sheared by a third of it and rattled by ``rattle`` A."""
    atoms = bulk(metal, "fcc", cubic=True) * (repeat, repeat, repeat)
    deformation = np.eye(3) * (1 + strain)
    deformation[0, 1] = deformation[1, 0] = strain / 3
    atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def emt_frames(metal: str, repeat: int, count: int, seed: int) -> list:
    """``count`` canonical S2EF items: cells under random strains up to 5% (shears up to 2%),
    atoms rattled by up to 0.06 A, with EMT's energies and forces."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        atoms = bulk(metal, "fcc", cubic=True) * (repeat, repeat, repeat)
        eps = np.diag(rng.uniform(-0.05, 0.05, 3))
        eps[np.triu_indices(3, 1)] = rng.uniform(-0.02, 0.02, 3)
        eps = np.triu(eps) + np.triu(eps, 1).T
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        atoms.rattle(rng.uniform(0.0, 0.06), seed=int(rng.integers(2**31)))
        atoms.calc = EMT()
        frames.append(atoms_to_data(atoms, f"EMT bulk {metal} frame {i}", sid=i))
    return frames


def train_tiny_model(args) -> Path:
    """A tiny conservative model trained on EMT bulk frames (reused when already trained)."""
    path = args.train_out / "model.pt"
    if path.is_file():
        print(f"model: {path} (trained before; delete it to train again)")
        return path
    start = time.perf_counter()
    frames = emt_frames(args.metal, args.repeat, args.train_frames, args.seed)
    split = len(frames) - max(2, len(frames) // 5)
    print(f"no --checkpoint: training a tiny conservative model on {split} EMT frames of strained {args.metal} "
          f"cells ({args.train_steps} steps), validating on {len(frames) - split}", flush=True)
    # Energies carry the cell's equation of state: weigh them as much as the forces.
    config = TrainingConfig(max_steps=args.train_steps, batch_size=4, eval_batch_size=8, lr=5e-3,
                            warmup_steps=args.train_steps // 10, energy_coefficient=20.0, force_coefficient=20.0,
                            eval_every=args.train_steps, checkpoint_every=args.train_steps, ema_decay=0.9,
                            seed=args.seed)
    trainer = Trainer(tiny_model_config(args.metal, args.repeat), frames[:split], frames[split:], config,
                      args.train_out, device=args.device, progress=True)
    metrics = trainer.fit()
    trainer.close()
    if trainer.stop_signal:  # Ctrl-C: no model to relax with; exit as shells expect of an interrupted command
        print(f"training interrupted at step {trainer.step} of {args.train_steps}; the same command trains the model "
              f"again", flush=True)
        raise SystemExit(128 + trainer.stop_signal)
    print(f"trained in {time.perf_counter() - start:.0f} s: validation energy MAE {metrics['energy_mae']:.4f} eV, "
          f"force MAE {metrics['forces_mae']:.4f} eV/A -> {path}", flush=True)
    return path


def pressure(atoms: Atoms) -> float:
    r""":math:`P = -\operatorname{tr}\sigma / 3`, in GPa (positive: the crystal wants to expand)."""
    return float(-atoms.get_stress()[:3].mean() / GPa)


def max_force(atoms: Atoms) -> float:
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def relax(atoms: Atoms, optimizer: str, fmax: float, steps: int, trajectory=None, label: str = ""):
    """Relax positions and cell of ``atoms`` in place (FrechetCellFilter): the energy of every
    step, printed with the largest force and the pressure when ``label`` is given, and whether
    it converged."""
    cell_filter = FrechetCellFilter(atoms)
    dynamics = OPTIMIZERS[optimizer](cell_filter, logfile=None, trajectory=trajectory)
    energies = []

    def record():
        energies.append(atoms.get_potential_energy())
        if label:
            print(f"  {label} step {len(energies) - 1:3d}: energy {energies[-1]:10.5f} eV, "
                  f"max force {max_force(atoms):.4f} eV/A, pressure {pressure(atoms):+8.4f} GPa")

    dynamics.attach(record, interval=1)
    converged = bool(dynamics.run(fmax=fmax, steps=steps))
    return energies, converged


def lattice(atoms: Atoms, repeat: int) -> str:
    a, b, c, alpha, beta, gamma = atoms.cell.cellpar()
    return (f"a b c = {a / repeat:.4f} {b / repeat:.4f} {c / repeat:.4f} A (per cubic cell), "
            f"angles {alpha:.2f} {beta:.2f} {gamma:.2f} deg, {atoms.get_volume() / len(atoms):.4f} A^3/atom")


def main(argv=None) -> dict:
    args = parse_args(argv)
    with exit_on_interrupt("a model it trained is kept for the next run; the same command runs it again"), \
            usage_errors():
        return run(args)


def run(args) -> dict:
    set_threads(args.threads)
    start = strained_crystal(args.metal, args.repeat, args.strain, args.rattle, args.seed)
    print(f"fcc {args.metal}, {len(start)} atoms, cell stretched {100 * args.strain:.1f}% and sheared "
          f"{100 * args.strain / 3:.1f}%, rattled {args.rattle} A")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise UsageError(f"--checkpoint: no checkpoint file at {args.checkpoint}")
    checkpoint = args.checkpoint if args.checkpoint is not None else train_tiny_model(args)
    try:
        calc = So2nnCalculator(checkpoint, device=args.device, dtype=args.dtype)
    except ValueError as error:
        raise UsageError(f"--checkpoint: {error}") from None
    if "stress" not in calc.implemented_properties:
        raise UsageError(
            f"the model in {checkpoint} gives no stress (its outputs: {', '.join(calc.model.output_names)}): "
            "relaxing a cell needs a conservative model (direct_forces=False) or one with a stress head"
        )
    atoms = start.copy()
    atoms.calc = calc
    c = calc.model.config
    print(f"model: {type(calc.model).__name__} lmax={c.lmax} mmax={c.mmax} layers={c.num_layers} from "
          f"{checkpoint}, {calc.device} {args.dtype}, {describe_threads()}")
    print(f"start: {lattice(atoms, args.repeat)}; pressure {pressure(atoms):+.4f} GPa")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"relaxing positions and cell with the model ({args.optimizer} on FrechetCellFilter, fmax {args.fmax}, "
          f"at most {args.steps} steps):")
    energies, converged = relax(atoms, args.optimizer, args.fmax, args.steps, trajectory=str(args.out),
                                label="model")
    final_pressure, final_force = pressure(atoms), max_force(atoms)

    emt = start.copy()  # the same start, relaxed by EMT itself
    emt.calc = EMT()
    emt_energies, emt_converged = relax(emt, args.optimizer, args.fmax, args.steps)
    check = atoms.copy()
    check.calc = EMT()
    emt_pressure_at_model = pressure(check)
    volume_error = atoms.get_volume() / emt.get_volume() - 1

    def outcome(energies: list[float], converged: bool) -> str:
        return f"{len(energies) - 1} steps, {'converged' if converged else 'NOT converged'}"

    print(f"trajectory ({len(energies)} frames): {args.out}")
    print(f"model: {outcome(energies, converged)}; energy {energies[0]:.5f} -> {energies[-1]:.5f} eV; "
          f"final pressure {final_pressure:+.4f} GPa, max force {final_force:.4f} eV/A")
    print(f"  relaxed lattice: {lattice(atoms, args.repeat)}")
    print(f"EMT:   {outcome(emt_energies, emt_converged)}; energy {emt_energies[0]:.5f} -> {emt_energies[-1]:.5f} eV; "
          f"final pressure {pressure(emt):+.4f} GPa")
    print(f"  relaxed lattice: {lattice(emt, args.repeat)}")
    print(f"volume: model {100 * volume_error:+.2f}% from EMT's; EMT's pressure at the model's relaxed cell "
          f"{emt_pressure_at_model:+.4f} GPa")
    ours, theirs = atoms.cell.cellpar()[:3] / args.repeat, emt.cell.cellpar()[:3] / args.repeat
    print(f"lattice a b c: model {' '.join(f'{x:.4f}' for x in ours)} A "
          f"vs EMT {' '.join(f'{x:.4f}' for x in theirs)} A "
          f"({' '.join(f'{100 * (x / y - 1):+.2f}%' for x, y in zip(ours, theirs))}); the tiny model's cell is only "
          f"as good as its stress: --train-steps and --train-frames train it longer")
    return {"energies": energies, "converged": converged, "pressure": final_pressure, "max_force": final_force,
            "cellpar": atoms.cell.cellpar().tolist(), "emt_cellpar": emt.cell.cellpar().tolist(),
            "emt_converged": emt_converged, "volume_error": volume_error,
            "emt_pressure_at_model": emt_pressure_at_model}


if __name__ == "__main__":
    main()
