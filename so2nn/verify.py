r"""Check a downloaded EquiformerV2 checkpoint: so2nn against the reference, on built-in structures.

.. code-block:: bash

    python -m so2nn.verify CHECKPOINT [--dtype float32|float64] [--device cpu|cuda]
                                      [--use-ema | --no-ema] [--trust] [--rolls N]

so2nn loads the checkpoint (:func:`~so2nn.models.load_model`, the same reading as
:class:`~so2nn.calculators.So2nnCalculator`) and evaluates three structures built with ASE (no
files): a Cu(111) slab with \*OH, a bulk crystal (a strained, rattled fcc Cu cell) and an
ethanol molecule (in a periodic box when the checkpoint was trained with periodic boundaries).

Where fairchem-core 1.10 is importable (``bash benchmarks/setup_reference.sh`` makes such an
environment in a clone, ``.venv-reference/``), the reference is built from the same file as
fairchem's ``OCPCalculator`` builds it (trainer, normalisers, element references) and called
through its trainer's ``predict``, the step ``OCPCalculator.calculate`` takes, with the inputs in
the chosen dtype. The reference rolls its edge frames at random, so it differs from call to call:
it is called ``--rolls`` times per structure, and for energy, forces and stress the command prints

* ``spread``: the largest difference between two of the reference's calls, and
* ``so2nn``: the largest difference between so2nn and any of the reference's calls,

both in eV, eV/A and eV/A^3 (max over atoms and components), then one verdict line. so2nn
matches when its distance is within twice the reference's own spread, or within rounding
(1e-4 of the largest value in float32, 1e-9 in float64) where the spread is smaller. The exit
status is 0 when it matches (or when there is no reference to compare with), 1 when it does
not, 2 for an unusable file.

Without fairchem it prints so2nn's outputs and how to install the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from so2nn.cli import UsageError, add_threads_argument, check_device, set_threads

__all__ = ["FairchemReference", "compare", "main", "structures"]

# so2nn may sit this much further from the reference's calls than they sit from each other. A
# spread measured from a few calls is itself noisy: on the parity fixtures' models, where so2nn
# agrees with the reference to 1e-15 once the frames are matched, its float64 distance from 4
# random-frame calls measured up to 1.8 times their spread.
TOLERANCE = 2.0
# Differences this small (relative to the largest value) are rounding, whatever the spread; a
# wrong weight, normaliser or graph shows at 1e-3 and beyond.
RELATIVE_FLOOR = {torch.float32: 1e-4, torch.float64: 1e-9}
UNITS = {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3"}
INSTALL_HINT = ("to compare with the reference (fairchem-core 1.10.0), set up its environment once in a clone "
                "of so2nn with `bash benchmarks/setup_reference.sh` and run "
                "`.venv-reference/bin/python -m so2nn.verify CHECKPOINT` there")


def structures(periodic: bool = True) -> dict:
    """The built-in test structures (ASE ``Atoms``), deterministic.

    ``periodic=False`` (a checkpoint trained without periodic boundaries) leaves the molecule
    without a cell; the slab and the crystal are always periodic.

    Example:
        >>> {name: len(atoms) for name, atoms in structures().items()}
        {'slab+OH': 29, 'bulk Cu': 16, 'ethanol': 9}
    """
    from ase.build import add_adsorbate, bulk, fcc111, molecule

    slab = fcc111("Cu", (3, 3, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.4, "fcc")
    add_adsorbate(slab, "H", 2.4, "fcc")
    slab.pbc = True
    slab.rattle(0.05, seed=1)
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    # a sheared, strained cell: the stress has all six components
    crystal.set_cell(np.array(crystal.cell) @ np.array([[1.02, 0.03, 0.0], [0.0, 0.99, 0.02], [0.01, 0.0, 1.01]]),
                     scale_atoms=True)
    crystal.rattle(0.05, seed=2)
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=3)
    if periodic:
        ethanol.center(vacuum=6.0)
        ethanol.pbc = True
    for atoms in (slab, crystal, ethanol):
        if atoms.pbc.all():
            atoms.wrap()  # the reference's calculator wraps positions into the cell
        _as_float32_numbers(atoms)
    return {"slab+OH": slab, "bulk Cu": crystal, "ethanol": ethanol}


def _as_float32_numbers(atoms) -> None:
    """Round the cell to multiples of 2^-10 A and the positions to float32 numbers (kept in
    float64). The reference computes the periodic images' offsets (integer cell offsets times the
    cell) in float32 whatever its dtype; for such a cell that product is exact, so a float64
    comparison compares the models, not that rounding."""
    atoms.set_cell(np.round(np.array(atoms.cell) * 1024) / 1024)
    atoms.positions = atoms.positions.astype(np.float32).astype(np.float64)


def so2nn_outputs(calculator, atoms) -> dict[str, np.ndarray]:
    """Energy ``[1]``, forces ``[N, 3]`` and (where the model gives it) stress ``[3, 3]`` of so2nn's ASE calculator."""
    from ase.stress import voigt_6_to_full_3x3_stress

    atoms = atoms.copy()
    atoms.calc = calculator
    out = {"energy": np.array([atoms.get_potential_energy()]), "forces": atoms.get_forces()}
    if "stress" in calculator.implemented_properties:
        out["stress"] = voigt_6_to_full_3x3_stress(atoms.get_stress())
    return out


class FairchemReference:
    """The reference (fairchem-core 1.10) built from a checkpoint file as its ``OCPCalculator``
    builds it, called through its trainer's ``predict`` (de-normalised, element references added,
    stress recombined from its parts) on inputs in ``dtype``. In float64 its constant buffers
    (grids, Wigner helpers) are made in float64 too, not taken from the checkpoint's float32 ones.

    ``frames="so2nn"`` in :meth:`predict` replaces the reference's random edge frames by so2nn's
    (:func:`so2nn.so3.edge_frames`), so that the two give the same numbers to rounding;
    :meth:`graph` is the graph the reference builds for a structure.
    """

    def __init__(self, checkpoint: str | os.PathLike, dtype: torch.dtype = torch.float32, use_ema: bool = True,
                 seed: int = 0, device: str = "cpu") -> None:
        import logging
        import warnings

        from fairchem.core.common.relaxation.ase_utils import OCPCalculator

        self.dtype = dtype
        with _default_dtype(dtype), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its notices on legacy normaliser states
            logging.disable(logging.WARNING)  # its config dump and deprecation notices
            try:
                calculator = OCPCalculator(checkpoint_path=str(checkpoint), cpu=torch.device(device).type == "cpu",
                                           seed=seed)
            finally:
                logging.disable(logging.NOTSET)
        self.trainer = calculator.trainer
        model = self.trainer.model
        if dtype != torch.float32:
            self._rebuild_constants(dtype)
        # the module that builds the graph and the edge frames: the backbone of a backbone + heads model
        self.graph_module = getattr(model, "backbone", model)
        # OCPCalculator's trainer loads the raw weights (inference-only trainers build no EMA);
        # the EMA shadow goes in with fairchem's own EMA class, as its trainer's predict applies it.
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        self.has_ema = bool(state.get("ema"))
        if use_ema and self.has_ema:
            from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage

            ema = ExponentialMovingAverage(model.parameters(), decay=0.999)  # as its trainer builds it
            ema.load_state_dict(state["ema"])
            ema.copy_to()

    def _rebuild_constants(self, dtype: torch.dtype) -> None:
        # The checkpoint's buffers (grids, Wigner helpers, index maps, Gaussian centres) were made
        # in float32 when it was trained; loaded into a float64 model they keep their float32
        # rounding (1e-6 relative on forces). Constants of a model built in float64 replace them;
        # the weights stay the checkpoint's.
        import copy

        from fairchem.core.common.registry import registry

        config = copy.deepcopy(self.trainer.config["model"])
        with _default_dtype(dtype):
            fresh = registry.get_model_class(config.pop("name"))(**config)
        buffers = dict(fresh.named_buffers())
        for name, buffer in self.trainer.model.named_buffers():
            if name in buffers and buffer.is_floating_point():
                buffer.data = buffers[name].to(buffer.device)

    def batch(self, atoms, dtype: torch.dtype | None = None):
        """The reference's input batch for one ``Atoms`` (its calculator's fields, in ``dtype``,
        default ``self.dtype``)."""
        from fairchem.core.datasets import data_list_collater
        from torch_geometric.data import Data

        dtype = self.dtype if dtype is None else dtype
        data = Data(
            pos=torch.tensor(atoms.positions, dtype=dtype),
            cell=torch.tensor(np.array(atoms.cell.complete()), dtype=dtype).view(1, 3, 3),
            atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.uint8), natoms=len(atoms),
            tags=torch.tensor(atoms.get_tags(), dtype=torch.int), fixed=torch.zeros(len(atoms), dtype=torch.int),
            pbc=torch.tensor(atoms.pbc, dtype=torch.bool).view(1, 3),
        )
        return data_list_collater([data], otf_graph=True).to(self.trainer.device)

    def graph(self, atoms) -> tuple[torch.Tensor, torch.Tensor]:
        """``(edge_index [2, E], cell_offsets [E, 3])`` the reference builds for ``atoms`` with its
        checkpoint's settings (cutoff, neighbour cap, strict or non-strict rule).

        Built in float32 whatever ``self.dtype``: the reference's periodic neighbour search only
        runs in float32 (it makes its image offsets in float32), so a float64 reference gets this
        graph precomputed."""
        module = self.graph_module
        with _default_dtype(torch.float32), torch.no_grad():
            graph = module.generate_graph(self.batch(atoms, torch.float32), otf_graph=True,
                                          enforce_max_neighbors_strictly=module.enforce_max_neighbors_strictly)
        return graph.edge_index.cpu(), graph.cell_offsets.round().long().cpu()

    def predict(self, atoms, frames: str = "own") -> dict[str, torch.Tensor]:
        """The trainer's predictions (``energy [1]``, ``forces [N, 3]``, ``stress [1, 3, 3]`` where
        the checkpoint has it), with its own random frames or with so2nn's (``frames="so2nn"``)."""
        if frames not in ("own", "so2nn"):
            raise ValueError(f"frames must be 'own' or 'so2nn', got {frames!r}")
        module = self.graph_module
        batch = self.batch(atoms)
        otf_graph = module.otf_graph
        if self.dtype != torch.float32:
            edge_index, offsets = self.graph(atoms)
            batch.edge_index, batch.cell_offsets = edge_index.to(batch.pos.device), offsets.to(batch.pos)
            batch.neighbors = torch.tensor([edge_index.shape[1]], device=batch.pos.device)
            module.otf_graph = False
        if frames == "so2nn":
            from so2nn.so3 import edge_frames

            module._init_edge_rot_mat = lambda data, edge_index, vec: edge_frames(vec)
        try:
            with _default_dtype(self.dtype):
                out = self.trainer.predict(batch, per_image=False, disable_tqdm=True)
        finally:
            module.__dict__.pop("_init_edge_rot_mat", None)
            module.otf_graph = otf_graph
        result = {"energy": out["energy"].detach().reshape(-1).cpu(), "forces": out["forces"].detach().cpu()}
        if "stress" in out:
            result["stress"] = out["stress"].detach().reshape(-1, 3, 3).cpu()
        return result


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    # The reference makes some constants (grids, Gaussian centres, the stress change of basis)
    # in the default dtype; a float64 comparison needs them made in float64.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def compare(ours: dict, calls: list[dict], dtype: torch.dtype) -> dict[str, tuple[float, float, bool]]:
    """For each output: (so2nn's largest distance from a reference call, the reference's largest
    call-to-call difference, whether so2nn is within ``TOLERANCE`` of that spread)."""
    rows = {}
    for key, mine in ours.items():
        if key not in calls[0]:
            continue
        refs = [np.asarray(c[key], dtype=np.float64).reshape(np.shape(mine)) for c in calls]
        spread = max((float(np.abs(a - b).max()) for a, b in combinations(refs, 2)), default=0.0)
        distance = max(float(np.abs(np.asarray(mine) - r).max()) for r in refs)
        floor = RELATIVE_FLOOR[dtype] * max(float(np.abs(r).max()) for r in refs)
        rows[key] = (distance, spread, distance <= max(TOLERANCE * spread, floor))
    return rows


def _print_outputs(name: str, out: dict) -> None:
    line = f"  {name:10s} energy {float(out['energy'][0]):14.6f} eV   max|F| {np.abs(out['forces']).max():10.6f} eV/A"
    if "stress" in out:
        line += f"   stress diag {np.diag(out['stress']).round(6).tolist()} eV/A^3"
    print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m so2nn.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="an EquiformerV2 checkpoint file (fairchem's or so2nn's)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu", help="torch device for so2nn and the reference (default: cpu)")
    ema = parser.add_mutually_exclusive_group()
    ema.add_argument("--use-ema", dest="use_ema", action="store_true", default=True,
                     help="use the checkpoint's EMA weights where it has them (the default)")
    ema.add_argument("--no-ema", dest="use_ema", action="store_false", help="use its raw weights")
    parser.add_argument("--trust", action="store_true",
                        help="allow arbitrary Python objects when reading the file (only for files you trust)")
    parser.add_argument("--rolls", type=int, default=6, help="calls of the reference per structure (default: 6)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.rolls < 2:
        parser.error("--rolls must be at least 2 (the reference's spread needs two calls)")
    path = Path(args.checkpoint)
    if not path.is_file():
        print(f"{parser.prog}: error: no checkpoint file at {args.checkpoint}", file=sys.stderr)
        return 2
    try:
        check_device(args.device)
        set_threads(args.threads)
    except UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)

    from so2nn.calculators import So2nnCalculator

    try:
        calculator = So2nnCalculator(path, device=args.device, dtype=dtype, use_ema=args.use_ema, trust=args.trust)
    except ValueError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    model = calculator.model
    config = model.config
    print(f"so2nn: {type(model).__name__} from {path.name}: lmax {config.lmax}, mmax {config.mmax}, "
          f"{config.num_layers} layers, outputs {sorted(model.output_names)}, graph_mode {config.graph_mode!r}, "
          f"{args.dtype} on {args.device}")
    systems = structures(periodic=config.use_pbc)
    ours = {name: so2nn_outputs(calculator, atoms) for name, atoms in systems.items()}

    try:
        import fairchem.core
    except ImportError:
        print("fairchem-core is not importable here: so2nn's outputs only")
        for name, out in ours.items():
            _print_outputs(name, out)
        print(INSTALL_HINT)
        return 0

    reference = FairchemReference(path, dtype, use_ema=args.use_ema, device=args.device)
    print(f"reference: fairchem-core {fairchem.core.__version__}, {args.rolls} calls per structure "
          f"(its own random edge frames); EMA weights {'used' if args.use_ema and reference.has_ema else 'not used'}")
    print(f"  {'structure':10s} {'output':7s} {'so2nn':>10s} {'spread':>10s}  (max abs difference; so2nn vs the "
          "reference's calls, and its calls among themselves)")
    failures = []
    for name, atoms in systems.items():
        calls = [reference.predict(atoms) for _ in range(args.rolls)]
        calls = [{k: v.numpy()[0] if k in ("energy", "stress") else v.numpy() for k, v in c.items()} for c in calls]
        ours_here = {k: v[0] if k == "energy" else v for k, v in ours[name].items()}
        for key, (distance, spread, ok) in compare(ours_here, calls, dtype).items():
            print(f"  {name:10s} {key:7s} {distance:10.2e} {spread:10.2e}  {UNITS[key]}{'' if ok else '   <- outside'}")
            if not ok:
                failures.append(f"{name} {key}")
        missing = sorted(set(calls[0]) - set(ours_here))
        if missing:
            failures.append(f"{name}: so2nn gives no {', '.join(missing)}")
    if failures:
        print(f"verdict: MISMATCH: {'; '.join(failures)}")
        return 1
    print(f"verdict: so2nn matches the reference within its own call-to-call spread ({args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
