"""AdsorbML on systems EMT can compute: relax many adsorbate placements with the model in
batches, send only the best k to the reference calculator, and measure what that saves.

AdsorbML (Lan et al., 2023) finds the adsorption energy of an adsorbate on a surface (the lowest
energy over its binding sites and orientations) with a fraction of the DFT calculations: a model
relaxes many initial placements, the placements are ranked by the model's energy, and only the
best k go to DFT. Here EMT stands in for DFT, so that everything runs offline on a CPU:

1. Slabs and adsorbates: fcc(111) slabs of the chosen metals (2x2 or larger, three layers,
   periodic, 6 A of vacuum), tagged as OC20 tags them (0 subsurface, held fixed; 1 surface;
   2 adsorbate), and the adsorbates of so2nn's EMT demo data (H, O, N, C, OH, CO, ...).
2. Placements (the heuristic): for each slab/adsorbate pair, ``--placements`` initial
   structures, cycling over the facet's site types (ontop, bridge, fcc, hcp); each at a random
   equivalent site of the surface cell, shifted laterally by up to 0.2 A, with the binding atom
   0.1 to 0.5 A above the site's typical height (1.85 A ontop, 1.55 bridge, 1.3 hollow), and
   the adsorbate rotated randomly: any azimuth about the surface normal and a tilt of up to 30
   degrees, so that the binding atom stays the lowest. AdsorbML's own enumeration (heuristic
   sites plus random ones, from fairchem-data-oc) downloads its databases; this one does not.
3. Model: every placement relaxed with the model at once, in batches of ``--batch-size``
   through torch-sim's FIRE (:func:`so2nn.integrations.torch_sim.relax_batch`).
4. Anomalies, as AdsorbML discards them: a *desorbed* adsorbate (no adsorbate atom bonded to
   the surface), a *dissociated* one (its atoms no longer one bonded molecule), a
   *reconstructed* surface (the slab's bonds changed), with bonds from covalent radii
   (x ``--bond-scale``). Anomalous model relaxations are not ranked; anomalous EMT relaxations
   do not count as results.
5. Ground truth: every placement relaxed with EMT (FIRE); the pair's adsorption energy is the
   lowest energy of a valid EMT relaxation.
6. AdsorbML: the valid model relaxations ranked by model energy; the best k relaxed again with
   EMT from the model's structure. A pair is a *success* at k when the best of those k valid EMT
   energies is within ``--threshold`` (0.1 eV) of the ground truth (or below it). The report
   gives, for k = 1..``--k-max``, the success rate over pairs and the EMT work it needs against
   relaxing every placement with EMT (relaxations and force calls).

Energies are EMT's minus the per-element references of so2nn's demo data
(:func:`so2nn.data.emt.reference_energy`), the scale the training example's model learns.

The model: ``--checkpoint PATH`` (so2nn's or an official fairchem one), else the one
examples/train_oc20.py writes (runs/train_oc20/model.pt)::

    python examples/train_oc20.py            # a few minutes on a CPU: writes runs/train_oc20/model.pt
    python examples/adsorbml.py              # 4 pairs x 24 placements, a few minutes on a CPU
    python examples/adsorbml.py --metals Cu Ag Pt --adsorbates O OH CO --placements 40 --k-max 5

Outputs in ``--out``: ``results.csv`` (the table), ``placements.csv`` (every placement's model
and EMT energies and anomalies) and ``adsorbml.png`` (success rate and EMT work against k).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.neighborlist import natural_cutoffs, neighbor_list
from ase.optimize import FIRE

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
from so2nn.data.emt import ADSORBATES, METALS, reference_energy

TRAINED_MODEL = Path("runs/train_oc20/model.pt")  # where examples/train_oc20.py saves by default
SITES = ("ontop", "bridge", "fcc", "hcp")
HEIGHTS = {"ontop": 1.85, "bridge": 1.55, "fcc": 1.3, "hcp": 1.3}  # A above the surface layer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = p.add_argument_group("model")
    model.add_argument("--checkpoint", type=Path,
                       help=f"so2nn or fairchem checkpoint (default: {TRAINED_MODEL}, which "
                            "examples/train_oc20.py writes)")
    model.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    model.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="model precision")
    add_threads_argument(model)
    systems = p.add_argument_group("systems")
    systems.add_argument("--metals", nargs="+", choices=METALS, default=["Cu", "Pt"], help="fcc(111) slab metals")
    systems.add_argument("--adsorbates", nargs="+", choices=sorted(ADSORBATES), default=["O", "CO"],
                         help="adsorbates (binding atom first)")
    systems.add_argument("--size", type=positive_int, nargs=2, default=[2, 2], metavar=("NX", "NY"),
                         help="surface cell of the three-layer slab, in surface atoms")
    systems.add_argument("--placements", type=positive_int, default=24,
                         help="initial placements per slab/adsorbate pair (AdsorbML: 20 or more)")
    systems.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the placements")
    relax = p.add_argument_group("relaxations")
    relax.add_argument("--fmax", type=positive_float, default=0.05,
                       help="converged below this force (eV/A), model and EMT")
    relax.add_argument("--steps", type=positive_int, default=200, help="FIRE steps at most per model relaxation")
    relax.add_argument("--emt-steps", type=positive_int, default=300, help="FIRE steps at most per EMT relaxation")
    relax.add_argument("--batch-size", type=positive_int, default=32, help="placements the model relaxes together")
    report = p.add_argument_group("report")
    report.add_argument("--k-max", type=positive_int, default=5, help="report k = 1..k-max best placements sent to EMT")
    report.add_argument("--threshold", type=positive_float, default=0.1,
                        help="success: within this of the lowest EMT energy over all placements (eV)")
    report.add_argument("--bond-scale", type=positive_float, default=1.25,
                        help="two atoms are bonded within this times the sum of their covalent radii")
    report.add_argument("--out", type=Path, default=Path("runs/adsorbml"), help="output directory")
    report.add_argument("--no-plot", action="store_true", help="do not draw adsorbml.png")
    args = p.parse_args(argv)
    if args.placements < 1 or args.k_max < 1 or args.steps < 1 or args.emt_steps < 1 or args.batch_size < 1:
        p.error("--placements, --k-max, --steps, --emt-steps and --batch-size must be >= 1")
    if min(args.size) < 2:
        p.error("--size must be at least 2 2 (every site type needs two surface atoms per direction)")
    if not (args.fmax > 0 and args.threshold > 0 and args.bond_scale > 0):
        p.error("--fmax, --threshold and --bond-scale must be > 0")
    with usage_errors(p):
        args.device = str(check_device(args.device))
    return args


def find_checkpoint(args) -> Path:
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise UsageError(f"--checkpoint: no checkpoint file at {args.checkpoint}")
        return args.checkpoint
    if TRAINED_MODEL.is_file():
        return TRAINED_MODEL
    raise UsageError(
        f"no model: pass --checkpoint PATH (an so2nn or fairchem checkpoint), or train one first with\n"
        f"  python examples/train_oc20.py\n"
        f"which writes {TRAINED_MODEL} (a few minutes on a CPU), then run this example again")


def clean_slab(metal: str, size: tuple[int, int]) -> Atoms:
    slab = fcc111(metal, size=(size[0], size[1], 3), vacuum=6.0, periodic=True)
    slab.set_tags(np.where(slab.get_tags() == 1, 1, 0))  # ASE numbers layers from the top: 1 is the surface
    return slab


def placements(metal: str, adsorbate: str, size: tuple[int, int], count: int, rng: np.random.Generator) -> list[Atoms]:
    """``count`` initial structures of ``adsorbate`` on the metal's fcc(111) slab (the heuristic
    of the module docstring), tagged and constrained as OC20."""
    symbols, positions = ADSORBATES[adsorbate]
    out = []
    for n in range(count):
        site = SITES[n % len(SITES)]
        atoms = clean_slab(metal, size)
        molecule = Atoms(symbols, positions=positions)
        if len(molecule) > 1:
            molecule.rotate(rng.uniform(0.0, 30.0), (np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a), 0.0))
            molecule.rotate(rng.uniform(0.0, 360.0), "z")
        offset = rng.integers(0, size) + rng.uniform(-0.2, 0.2, 2) / atoms.cell.lengths()[:2] * size
        add_adsorbate(atoms, molecule, HEIGHTS[site] + rng.uniform(0.1, 0.5), site, offset=offset)
        tags = np.concatenate([atoms.get_tags()[: len(atoms) - len(molecule)], np.full(len(molecule), 2)])
        atoms.set_tags(tags)
        atoms.set_constraint(FixAtoms(mask=tags == 0))
        atoms.info["site"] = site
        out.append(atoms)
    return out


def bonds(atoms: Atoms, scale: float) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, closer than ``scale`` times the sum of covalent radii."""
    i, j = neighbor_list("ij", atoms, [r * scale for r in natural_cutoffs(atoms)])
    return {(a, b) for a, b in zip(i.tolist(), j.tolist()) if a < b}


def anomaly(initial: Atoms, relaxed: Atoms, scale: float) -> str:
    """AdsorbML's anomalies of a relaxation: "desorbed", "dissociated", "reconstructed" or ""."""
    tags = initial.get_tags()
    adsorbate = set(np.flatnonzero(tags == 2).tolist())
    after = bonds(relaxed, scale)
    slab_bonds = lambda b: {p for p in b if p[0] not in adsorbate and p[1] not in adsorbate}  # noqa: E731
    if slab_bonds(after) != slab_bonds(bonds(initial, scale)):
        return "reconstructed"
    if not any((a in adsorbate) != (b in adsorbate) for a, b in after):
        return "desorbed"
    if len(adsorbate) > 1:  # the adsorbate's atoms must form one connected molecule
        inner = [(a, b) for a, b in after if a in adsorbate and b in adsorbate]
        reached, frontier = {min(adsorbate)}, [min(adsorbate)]
        while frontier:
            k = frontier.pop()
            for a, b in inner:
                for x, y in ((a, b), (b, a)):
                    if x == k and y not in reached:
                        reached.add(y)
                        frontier.append(y)
        if reached != adsorbate:
            return "dissociated"
    return ""


def emt_relax(atoms: Atoms, fmax: float, steps: int) -> tuple[Atoms, float, int]:
    """EMT's relaxation of a copy of ``atoms``: (structure, energy minus references, force calls)."""
    atoms = atoms.copy()
    calls = 0

    class Counting(EMT):
        def calculate(self, *a, **k):
            nonlocal calls
            calls += 1
            super().calculate(*a, **k)

    atoms.calc = Counting()
    FIRE(atoms, logfile=None).run(fmax=fmax, steps=steps)
    return atoms, atoms.get_potential_energy() - reference_energy(atoms.numbers), calls


def progress(items, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="relaxation", file=sys.stdout)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with exit_on_interrupt(f"nothing written to {args.out} (it is written at the end); the same command runs it "
                           "again"), usage_errors():
        return run(args)


def run(args) -> dict:
    set_threads(args.threads)
    checkpoint = find_checkpoint(args)
    try:
        from so2nn.integrations.torch_sim import TorchSimModel, relax_batch
    except ImportError as error:
        raise UsageError(f"{error}") from None
    rng = np.random.default_rng(args.seed)
    pairs = [(m, a) for m in args.metals for a in args.adsorbates]
    starts = {pair: placements(*pair, tuple(args.size), args.placements, rng) for pair in pairs}
    everything = [atoms for pair in pairs for atoms in starts[pair]]
    try:
        model = TorchSimModel(checkpoint, device=args.device, dtype=args.dtype)
    except ValueError as error:
        raise UsageError(f"--checkpoint: {error}") from None
    c = model.model.config
    where = describe_threads() if model.device.type == "cpu" else ""
    print(f"model {checkpoint}: lmax={c.lmax} layers={c.num_layers}, {model.device} {where} {args.dtype}")
    print(f"{len(pairs)} slab/adsorbate pairs x {args.placements} placements = {len(everything)} structures")

    t0 = time.perf_counter()
    relaxed = relax_batch(model, everything, fmax=args.fmax, max_steps=args.steps, batch_size=args.batch_size,
                          progress=True)
    model_seconds = time.perf_counter() - t0
    print(f"model relaxations: {model_seconds:.1f} s, {sum(r.steps for r in relaxed)} FIRE steps, "
          f"{sum(r.converged for r in relaxed)}/{len(relaxed)} converged")
    by_pair, k = {}, 0
    for pair in pairs:
        by_pair[pair] = relaxed[k:k + args.placements]
        k += args.placements

    rows = []  # one per placement
    for pair in pairs:
        for n, (start, result) in enumerate(zip(starts[pair], by_pair[pair])):
            rows.append({"metal": pair[0], "adsorbate": pair[1], "placement": n, "site": start.info["site"],
                         "model_energy": result.energy, "model_converged": result.converged,
                         "model_anomaly": anomaly(start, result.atoms, args.bond_scale)})

    t0 = time.perf_counter()
    ground = {}  # every placement relaxed with EMT: the baseline that AdsorbML saves
    for row, start in progress(list(zip(rows, everything)), "EMT, every placement"):
        atoms, energy, calls = emt_relax(start, args.fmax, args.emt_steps)
        row.update(emt_energy=energy, emt_calls=calls, emt_anomaly=anomaly(start, atoms, args.bond_scale))
    for pair in pairs:
        valid = [r["emt_energy"] for r in rows if (r["metal"], r["adsorbate"]) == pair and not r["emt_anomaly"]]
        ground[pair] = min(valid) if valid else None
    baseline_calls = {pair: sum(r["emt_calls"] for r in rows if (r["metal"], r["adsorbate"]) == pair)
                      for pair in pairs}

    # AdsorbML: the best k valid model relaxations, relaxed again with EMT from the model's structure
    ranked = {}
    for pair in pairs:
        mine = [(r, res) for r, res in zip([r for r in rows if (r["metal"], r["adsorbate"]) == pair], by_pair[pair])
                if not r["model_anomaly"]]
        ranked[pair] = sorted(mine, key=lambda item: item[0]["model_energy"])[: args.k_max]
    for pair in progress(pairs, "EMT, the model's best"):
        for rank, (row, result) in enumerate(ranked[pair], start=1):
            start = starts[pair][row["placement"]]
            atoms, energy, calls = emt_relax(result.atoms, args.fmax, args.emt_steps)
            row.update(rank=rank, ml_emt_energy=energy, ml_emt_calls=calls,
                       ml_emt_anomaly=anomaly(start, atoms, args.bond_scale))
    emt_seconds = time.perf_counter() - t0

    table = []
    scored = [pair for pair in pairs if ground[pair] is not None]
    for kk in range(1, args.k_max + 1):
        success, calls, relaxations = 0, 0, 0
        for pair in scored:
            top = [row for row, _ in ranked[pair][:kk]]
            energies = [row["ml_emt_energy"] for row in top if not row["ml_emt_anomaly"]]
            success += bool(energies) and min(energies) <= ground[pair] + args.threshold
            calls += sum(row["ml_emt_calls"] for row in top)
            relaxations += len(top)
        total_calls = sum(baseline_calls[pair] for pair in scored)
        table.append({"k": kk, "success_rate": success / max(len(scored), 1), "emt_relaxations": relaxations,
                      "baseline_relaxations": args.placements * len(scored), "emt_calls": calls,
                      "baseline_calls": total_calls,
                      "calls_saved": 1.0 - calls / total_calls if total_calls else float("nan")})

    print("\nground truth (every placement relaxed with EMT, anomalies discarded), eV:")
    for pair in pairs:
        anomalies = sum(bool(r["emt_anomaly"]) for r in rows if (r["metal"], r["adsorbate"]) == pair)
        model_anomalies = sum(bool(r["model_anomaly"]) for r in rows if (r["metal"], r["adsorbate"]) == pair)
        truth = "no valid EMT relaxation" if ground[pair] is None else f"{ground[pair]:9.4f}"
        print(f"  {pair[1]:>4} on {pair[0]}(111): {truth}   anomalies: EMT {anomalies}, model {model_anomalies}"
              f" of {args.placements}")
    print(f"\nAdsorbML over {len(scored)} pairs (success: within {args.threshold} eV of the ground truth):")
    print(f"  {'k':>2}  {'success':>8}  {'EMT relaxations':>16}  {'EMT force calls':>18}  {'calls saved':>11}")
    for row in table:
        print(f"  {row['k']:>2}  {row['success_rate']:>8.1%}"
              f"  {row['emt_relaxations']:>7} of {row['baseline_relaxations']:<6}"
              f"  {row['emt_calls']:>8} of {row['baseline_calls']:<7}  {row['calls_saved']:>11.1%}")
    print(f"time: model {model_seconds:.1f} s (all placements, batched), EMT {emt_seconds:.1f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "results.csv", table)
    write_csv(args.out / "placements.csv", rows)
    if not args.no_plot:
        plot(args.out / "adsorbml.png", table, args.threshold)
    print(f"written: {args.out / 'results.csv'}, {args.out / 'placements.csv'}"
          + ("" if args.no_plot else f", {args.out / 'adsorbml.png'}"))
    return {"table": table, "placements": rows, "ground_truth": ground}


def write_csv(path: Path, rows: list[dict]) -> None:
    names = list(dict.fromkeys(name for row in rows for name in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def plot(path: Path, table: list[dict], threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = [row["k"] for row in table]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(k, [100 * row["success_rate"] for row in table], "o-", label=f"success (within {threshold} eV)")
    ax.plot(k, [100 * (1 - row["calls_saved"]) for row in table], "s--", label="EMT force calls used")
    ax.set_xlabel("k (best model placements relaxed with EMT)")
    ax.set_ylabel("% (of pairs / of relaxing every placement)")
    ax.set_xticks(k)
    ax.set_ylim(0, 105)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
