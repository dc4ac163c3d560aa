"""Time and peak memory of ``so2nn.graph.radius_graph`` on bulk copper, from 864 to 100,000 atoms.

Each case runs in a fresh Python process: it imports torch and so2nn, builds rattled fcc Cu
(a = 3.61 A, float32), resets the peak-RSS counter of the process (``/proc/self/clear_refs``),
builds the graph once and reports the peak resident memory above what the process held
just before (``VmHWM`` minus ``VmRSS``, from ``/proc/self/status``); then it times the call
(median of ``--repeats``). For comparison it times vesin's bare pair search on the same
positions (what ``radius_graph`` starts from) and, at the small sizes, the previous dense
all-pairs algorithm (kept in ``tests/graph/test_radius.py`` as the tests' reference). The
cap's rule is the tie-stable default; the two reference rules (``mode="reference"``, the strict
cut, and ``"reference_nonstrict"``) are timed at 4,000 atoms.

Usage (from the repository root; Linux, for ``/proc``)::

    python benchmarks/neighbour_list.py                      # the table of RESULTS.md
    python benchmarks/neighbour_list.py --dense-atoms 864 2048 4000
    python benchmarks/neighbour_list.py --worker --impl so2nn --repeat 30 30 30 --cutoff 6
    python benchmarks/neighbour_list.py --worker --repeat 10 10 10 --mode reference_nonstrict
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's so2nn, not another installed copy
# (repeat of the 4-atom cubic cell, cutoff): 864, 4,000, 32,000 and 100,000 atoms at 6 A; 4,000 at 12 A
CASES = [((6, 6, 6), 6.0), ((10, 10, 10), 6.0), ((20, 20, 20), 6.0), ((25, 25, 40), 6.0), ((10, 10, 10), 12.0)]
DENSE_REPEATS = {864: (6, 6, 6), 2048: (8, 8, 8), 4000: (10, 10, 10)}
# the reference rules of the cap, at 4,000 atoms
MODE_CASES = [(mode, (10, 10, 10), cutoff) for mode in ("reference", "reference_nonstrict") for cutoff in (6.0, 12.0)]


def _status(field: str) -> int:
    """A memory field of ``/proc/self/status``, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(impl: str, repeat: tuple[int, int, int], cutoff: float, cap: int, repeats: int, threads: int,
           mode: str = "tie_stable") -> dict:
    import numpy as np
    import torch
    import vesin
    from ase.build import bulk

    import so2nn
    from so2nn.graph import radius_graph

    assert Path(so2nn.__file__).resolve().is_relative_to(ROOT), so2nn.__file__
    if impl == "dense":
        sys.path.insert(0, str(ROOT / "tests" / "graph"))
        from test_radius import dense_radius_graph as graph  # the previous dense algorithm
    else:
        graph = radius_graph
    torch.set_num_threads(threads)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * repeat
    atoms.rattle(0.05, seed=0)
    pos = torch.tensor(atoms.positions, dtype=torch.float32)
    cell = torch.tensor(np.array(atoms.cell), dtype=torch.float32)

    def call():
        return graph(pos, cutoff, cell, None, None, cap, mode)

    try:  # reset the peak (VmHWM) to the current RSS: the peak then counts this call only
        Path("/proc/self/clear_refs").write_text("5")
        baseline = _status("VmHWM")
    except OSError:
        baseline = _status("VmRSS")
    edge_index, _ = call()
    peak = _status("VmHWM") - baseline
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    search = vesin.NeighborList(cutoff=cutoff, full_list=True)
    points, box = atoms.positions.astype(np.float64), np.array(atoms.cell)
    search_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        search.compute(points, box, True, "ijS")
        search_times.append(time.perf_counter() - start)
    return {"impl": impl, "mode": mode, "atoms": len(atoms), "cutoff": cutoff, "cap": cap,
            "edges": int(edge_index.shape[1]),
            "seconds": statistics.median(times), "peak_bytes": peak, "vesin_seconds": statistics.median(search_times)}


def run_case(impl: str, repeat, cutoff: float, cap: int, repeats: int, threads: int, mode: str) -> dict:
    command = [sys.executable, __file__, "--worker", "--impl", impl, "--repeat", *map(str, repeat),
               "--cutoff", str(cutoff), "--cap", str(cap), "--repeats", str(repeats), "--threads", str(threads),
               "--mode", mode]
    out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help="run one case in this process, print JSON")
    parser.add_argument("--impl", choices=["so2nn", "dense"], default="so2nn")
    parser.add_argument("--repeat", type=int, nargs=3, default=[10, 10, 10], help="copies of the cubic cell")
    parser.add_argument("--cutoff", type=float, default=6.0)
    parser.add_argument("--cap", type=int, default=20, help="max_num_neighbors")
    parser.add_argument("--mode", choices=["tie_stable", "reference", "reference_nonstrict"], default="tie_stable",
                        help="the cap's rule (radius_graph's mode) of a --worker run")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--dense-atoms", type=int, nargs="*", default=[864, 2048], choices=sorted(DENSE_REPEATS),
                        help="sizes at which to time the previous dense algorithm too")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.impl, tuple(args.repeat), args.cutoff, args.cap, args.repeats, args.threads,
                                args.mode)))
        return
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, float32, cap {args.cap} (tie-stable unless named)")
    print("| implementation | atoms | cutoff | edges | time | peak memory above baseline | vesin search alone |")
    print("|---|---|---|---|---|---|---|")
    runs = [("so2nn", "tie_stable", repeat, cutoff) for repeat, cutoff in CASES]
    runs += [("so2nn", mode, repeat, cutoff) for mode, repeat, cutoff in MODE_CASES]
    runs += [("dense", "tie_stable", DENSE_REPEATS[n], 6.0) for n in args.dense_atoms]
    for impl, mode, repeat, cutoff in runs:
        r = run_case(impl, repeat, cutoff, args.cap, args.repeats if impl == "so2nn" else 1, args.threads, mode)
        name = "radius_graph (cell lists)" if impl == "so2nn" else "previous dense algorithm"
        name += f', mode="{mode}"' if mode != "tie_stable" else ""
        print(f"| {name} | {r['atoms']:,} | {r['cutoff']:g} A | {r['edges']:,} | {r['seconds']:.3f} s "
              f"| {r['peak_bytes'] / 2**30:.3f} GiB | {r['vesin_seconds']:.3f} s |", flush=True)


if __name__ == "__main__":
    main()
