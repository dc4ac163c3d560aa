"""FIRE steps per second over many slab+adsorbate systems: so2nn batched through torch-sim, so2nn
one structure at a time through ASE, and the reference implementation (fairchem-core 1.10) both
ways, side by side in one run.

Rows (structure-steps per second = systems x FIRE steps / wall time; a fixed number of steps
with an unreachable ``fmax``, so random weights serve):

* ``so2nn torch-sim``: :func:`so2nn.integrations.torch_sim.relax_batch`, every system in one
  batch (``--systems``, default 32);
* ``so2nn ASE``: :class:`so2nn.calculators.So2nnCalculator` and ASE's FIRE, one system at a time;
* ``reference ASE``: fairchem's ``OCPCalculator`` and ASE's FIRE, one at a time
  (``--reference-systems``, default 8);
* ``reference torch-sim``: torch-sim 0.3's own ``FairChemModel`` (fairchem 1.x checkpoints),
  the reference systems in one batch.

Every row uses the 31M architecture (``oc20-31M``) with the same random weights (the reference's,
imported into so2nn), float32, on the CPU with ``--threads`` threads (default 2), and the
reference's strict neighbour rule (``graph_mode="reference"``), so that all see the same graphs.
The systems are fcc(111) slabs of Cu, Ag, Pt and Pd with O, OH or CO, 46 to 74 atoms, OC20's
subsurface fixed. The gain from batching (torch-sim against ASE rows) and the gain from so2nn's
kernels (so2nn against reference rows) are read apart.

The reference rows run in the reference environment (``bash benchmarks/setup_reference.sh``,
which installs torch-sim 0.3 there too), started by this script as a subprocess. Run from the clone's root on an idle
machine::

    python benchmarks/torch_sim_throughput.py                    # all four rows
    python benchmarks/torch_sim_throughput.py --steps 20 --systems 64 --threads 4
    python benchmarks/torch_sim_throughput.py --no-reference      # so2nn rows only
    python benchmarks/torch_sim_throughput.py --quick             # a seconds-long check that it runs

``--quick`` uses a two-layer lmax-2 model, two systems and two steps: it checks the script, not
the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [(3, 3, 5), (4, 3, 4), (4, 3, 5), (4, 4, 4), (3, 4, 6)]  # 45 to 72 metal atoms
METALS = ["Cu", "Ag", "Pt", "Pd"]
ADSORBATES = ["O", "OH", "CO"]
UNREACHABLE_FMAX = 1e-9  # every system takes exactly --steps FIRE steps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--systems", type=int, default=32, help="systems of the so2nn rows")
    p.add_argument("--reference-systems", type=int, default=8, help="systems of the reference rows")
    p.add_argument("--steps", type=int, default=10, help="FIRE steps per system")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--reference-python", type=Path, default=ROOT / ".venv-reference" / "bin" / "python",
                   help="the reference environment's interpreter")
    p.add_argument("--no-reference", action="store_true", help="only the so2nn rows")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 systems, 2 steps: checks that it runs")
    p.add_argument("--worker", choices=["reference"], help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.systems, args.reference_systems, args.steps = 2, 2, 2
    if min(args.systems, args.reference_systems, args.steps, args.threads) < 1:
        p.error("--systems, --reference-systems, --steps and --threads must be >= 1")
    return args


def systems(count: int):
    """``count`` slab+adsorbate systems, 46 to 74 atoms, tagged and constrained as OC20."""
    from ase import Atoms
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms

    from so2nn.data.emt import ADSORBATES as SHAPES

    out = []
    for n in range(count):
        size = SIZES[n % len(SIZES)]
        atoms = fcc111(METALS[n % len(METALS)], size=size, vacuum=8.0, periodic=True)
        layer = atoms.get_tags()
        symbols, positions = SHAPES[ADSORBATES[n % len(ADSORBATES)]]
        add_adsorbate(atoms, Atoms(symbols, positions=positions), 1.6, ("fcc", "ontop", "bridge")[n % 3])
        tags = np.concatenate([np.where(layer == 1, 1, 0), np.full(len(symbols), 2)])
        tags[np.flatnonzero(layer == 2)] = 1  # the top two layers free, as OC20 leaves them
        atoms.set_tags(tags)
        atoms.set_constraint(FixAtoms(mask=tags == 0))
        atoms.rattle(0.03, seed=n)
        out.append(atoms)
    return out


def config(quick: bool):
    from so2nn.models import preset

    if quick:
        return preset("oc20-31M", graph_mode="reference").replace(lmax=2, mmax=1, num_layers=2, sphere_channels=32,
                                                                  ffn_hidden_channels=32, attn_hidden_channels=16)
    return preset("oc20-31M", graph_mode="reference")


def reference_checkpoint(path: Path, quick: bool) -> None:
    """A fairchem 1.x checkpoint of the reference EquiformerV2 with random weights (seed 0)."""
    import torch
    from equiformer_v2_vs_reference import reference_config
    from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2 as Reference

    kwargs = reference_config(config(quick))
    torch.manual_seed(0)
    model = Reference(**kwargs)
    # every key, buffers too, as the released checkpoints hold them (fairchem loads strictly)
    state = {f"module.{k}": v.detach() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "normalizers": {}, "config": {
        "model": "equiformer_v2", "model_attributes": {k: v for k, v in kwargs.items() if k != "otf_graph"},
        "trainer": "ocp", "task": {"dataset": "ase_db"}, "optim": {}, "dataset": {"src": ""}, "outputs": {},
        "loss_functions": [], "evaluation_metrics": {}, "logger": "tensorboard", "amp": False, "gpus": 0,
    }}, path)


def timed_fire(calculator, atoms_list, steps: int) -> float:
    """Seconds of ASE FIRE, ``steps`` steps per system, one system at a time, one calculator
    (built beforehand) for all."""
    from ase.optimize import FIRE

    start = time.perf_counter()
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.calc = calculator
        FIRE(atoms, logfile=None).run(fmax=UNREACHABLE_FMAX, steps=steps)
    return time.perf_counter() - start


def so2nn_rows(args, checkpoint: Path | None) -> list[dict]:
    import torch

    from so2nn.calculators import So2nnCalculator
    from so2nn.integrations.torch_sim import TorchSimModel, relax_batch
    from so2nn.models import EquiformerV2

    if checkpoint is not None:  # the reference's random weights
        model = EquiformerV2.from_fairchem(str(checkpoint), trust=True, graph_mode="reference")
    else:
        torch.manual_seed(0)
        model = EquiformerV2(config(args.quick))
    model = model.float().eval()
    atoms = systems(args.systems)
    sim = TorchSimModel(model, device="cpu", dtype=torch.float32)
    relax_batch(sim, atoms[:1], fmax=UNREACHABLE_FMAX, max_steps=1)  # warm-up
    start = time.perf_counter()
    results = relax_batch(sim, atoms, fmax=UNREACHABLE_FMAX, max_steps=args.steps)
    batched = time.perf_counter() - start
    assert all(r.steps == args.steps for r in results)
    calculator = So2nnCalculator(model, device="cpu", dtype=torch.float32)
    timed_fire(calculator, atoms[:1], 1)  # warm-up
    ase = timed_fire(calculator, atoms, args.steps)
    return [row("so2nn torch-sim (batched)", len(atoms), args.steps, batched),
            row("so2nn ASE (one at a time)", len(atoms), args.steps, ase)]


def row(name: str, count: int, steps: int, seconds: float) -> dict:
    return {"row": name, "systems": count, "steps": steps, "seconds": seconds,
            "structure_steps_per_s": count * steps / seconds}


def reference_worker(args) -> None:
    """The reference rows, in the reference environment: one JSON line per row."""
    import logging

    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    atoms = systems(args.reference_systems)
    out = []
    try:
        from fairchem.core.common.relaxation.ase_utils import OCPCalculator

        calculator = OCPCalculator(checkpoint_path=str(args.checkpoint), cpu=True)
        timed_fire(calculator, atoms[:1], 1)  # warm-up
        seconds = timed_fire(calculator, atoms, args.steps)
        out.append(row("reference ASE (one at a time)", len(atoms), args.steps, seconds))
    except Exception as error:  # noqa: BLE001 - reported in the table, not hidden
        out.append({"row": "reference ASE (one at a time)", "error": f"{type(error).__name__}: {error}"[:300]})
    try:
        import torch_sim as ts
        from torch_sim.models.fairchem import FairChemModel

        model = FairChemModel(str(args.checkpoint), cpu=True)  # float32, its default
        init, step = ts.optimizers.fire(model, md_flavor="ase_fire")
        state = init(ts.io.atoms_to_state(atoms[:1], torch.device("cpu"), torch.float32))
        step(state)  # warm-up
        start = time.perf_counter()
        state = init(ts.io.atoms_to_state(atoms, torch.device("cpu"), torch.float32))
        for _ in range(args.steps):
            state = step(state)
        out.append(row("reference torch-sim FairChemModel (batched)", len(atoms), args.steps,
                       time.perf_counter() - start))
    except Exception as error:  # noqa: BLE001
        out.append({"row": "reference torch-sim FairChemModel (batched)",
                    "error": f"{type(error).__name__}: {error}"[:300]})
    print(json.dumps(out))


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.worker == "reference":
        reference_worker(args)
        return []
    import torch

    torch.set_num_threads(args.threads)
    rows, checkpoint = [], None
    with tempfile.TemporaryDirectory() as folder:
        if not args.no_reference:
            checkpoint = Path(folder) / "reference.pt"
            command = [str(args.reference_python), "-c",
                       "import sys; sys.path[:0] = sys.argv[1:3]; import torch_sim_throughput as t; "
                       f"t.reference_checkpoint(__import__('pathlib').Path(sys.argv[3]), {args.quick})",
                       str(ROOT), str(Path(__file__).resolve().parent), str(checkpoint)]
            made = subprocess.run(command, capture_output=True, text=True)
            if made.returncode != 0:
                raise SystemExit(f"building the reference model failed (is {args.reference_python} the reference "
                                 f"environment? see benchmarks/setup_reference.sh):\n{made.stderr[-2000:]}")
        rows += so2nn_rows(args, checkpoint)
        if not args.no_reference:
            command = [str(args.reference_python), str(Path(__file__).resolve()), "--worker", "reference",
                       "--checkpoint", str(checkpoint), "--reference-systems", str(args.reference_systems),
                       "--steps", str(args.steps), "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
            # this clone's stand-ins first (setup_reference.sh also puts them on the environment's path)
            shims = str(ROOT / "benchmarks" / "reference_shims")
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [shims, os.environ.get("PYTHONPATH")]))}
            worker = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
            if worker.returncode != 0:
                rows.append({"row": "reference rows", "error": worker.stderr[-500:]})
            else:
                rows += json.loads(worker.stdout.strip().splitlines()[-1])
    sizes = [len(a) for a in systems(max(args.systems, args.reference_systems))]
    print(f"FIRE throughput, {'quick model' if args.quick else 'oc20-31M'}, float32, CPU, {args.threads} threads, "
          f"graph_mode='reference', systems of {min(sizes)}-{max(sizes)} atoms, {args.steps} steps each")
    print(f"  {'row':<46} {'systems':>7} {'seconds':>9} {'structure-steps/s':>18}")
    for r in rows:
        if "error" in r:
            print(f"  {r['row']:<46} failed: {r['error']}")
        else:
            print(f"  {r['row']:<46} {r['systems']:>7} {r['seconds']:>9.2f} {r['structure_steps_per_s']:>18.3f}")
    return rows


if __name__ == "__main__":
    main()
