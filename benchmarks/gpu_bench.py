"""so2nn against the reference EquiformerV2 (fairchem-core 1.10.0) on one GPU: the table of
``benchmarks/RESULTS.md``'s GPU section, one JSON line per cell as it is measured.

Cells (random weights of the released architectures, the same weights and graphs for both,
``equiformer_v2_vs_reference.py``'s slabs), in priority order until ``BUDGET_S`` runs out:
eval and train step, eager, at batch 8 in bf16 (with the kernel-policy variants) and peak
training memory (one model on the GPU at a time); the dispatch counts; a 100-step MD run through
the ASE calculator with CUDA graphs over size buckets (the edge count changes; warm-up apart);
batch 8 in fp32, batch 1; CUDA graphs at batch 1 at a fixed shape (``mode="reduce-overhead"``);
153M at batch 2; so2nn compiled (one dynamic graph) at batch 8. Each line holds medians of
``REPEATS`` interleaved calls.

    python benchmarks/gpu_bench.py             # writes $OUT/gpu.jsonl (default ./gpu-results)
    DEVICE=cpu BUDGET_S=60 python benchmarks/gpu_bench.py   # a dry run on the CPU (small cases)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import equiformer_v2_vs_reference as bench  # noqa: E402

from so2nn.models import compile_model  # noqa: E402
from so2nn.testing import DispatchCounter  # noqa: E402

OUT = Path(os.environ.get("OUT") or "gpu-results")
OUT.mkdir(parents=True, exist_ok=True)
LOG = OUT / "gpu.jsonl"
DEADLINE = time.time() + float(os.environ.get("BUDGET_S", "300"))
DEVICE = torch.device(os.environ.get("DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
CUDA = DEVICE.type == "cuda"
REPEATS = int(os.environ.get("REPEATS", "10"))

bench.CASES.update({"31Mx8": ("oc20-31M", (4, 4, 4), 8), "153Mx2": ("oc20-153M", (4, 4, 4), 2),
                    "31M-14": ("oc20-31M", (2, 2, 3), 1)})
if not CUDA:  # a dry run: every case small
    bench.CASES.update({k: ("oc20-31M", (2, 2, 3), 1) for k in ("31M", "31Mx8", "153Mx2")})

try:
    import logging

    logging.disable(logging.WARNING)
    from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2 as _Reference  # noqa: F401

    HAVE_REFERENCE, REFERENCE_ERROR = True, None
except Exception as error:  # noqa: BLE001 (any import failure: measure so2nn alone)
    HAVE_REFERENCE, REFERENCE_ERROR = False, f"{type(error).__name__}: {error}"


def emit(record):
    with LOG.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def sync():
    if CUDA:
        torch.cuda.synchronize()


def timed(fn):
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def precision(name):
    torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    return torch.bfloat16 if name == "bf16" and CUDA else None


class Runner(bench.Runner):
    """The benchmark's runner, calling so2nn with ``validate=False`` (its inputs are checked once)."""

    def __init__(self, model, inputs, is_reference, autocast_dtype, validate=True):
        super().__init__(model, inputs, is_reference, DEVICE, autocast_dtype)
        if not is_reference and not validate:
            self.kwargs = {**self.kwargs, "validate": False}


def peak(runner, mode):
    if not CUDA:
        return 0.0
    sync()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        runner.eval() if mode == "eval" else runner.train_step()
    sync()
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def cell(case, prec, *, memory=True, compiled=False, variants=False):
    if time.time() > DEADLINE:
        emit({"cell": f"{case}/{prec}", "skipped": "out of time"})
        return
    start = time.time()
    autocast = precision(prec)
    reference, ours, inputs = bench.build_models(case, HAVE_REFERENCE)
    record = {"cell": f"{case}/{prec}", "atoms": len(inputs["pos"]), "edges": inputs["edge_index"].shape[1],
              "batch": len(inputs["natoms"])}
    runners = {"so2nn": Runner(ours, inputs, False, autocast, validate=False)}
    if reference is not None:
        runners["ref"] = Runner(reference, inputs, True, autocast)
        with torch.no_grad():
            a, b = runners["so2nn"].eval(), runners["ref"].eval()
        record["force_diff_rel"] = float((a["forces"].float() - b["forces"].float()).abs().max()
                                         / b["forces"].float().abs().max())
    if variants:  # the kernel policy's alternatives on this device
        for name, changes in {"kernels_reference": dict(kernels="reference"),
                              "recompute_on_cpu_kernels": dict(kernels="auto")}.items():
            other = type(ours)(ours.config.replace(**changes))
            other.load_state_dict(ours.state_dict())
            runners[name] = Runner(other, inputs, False, autocast, validate=False)
    if compiled:
        t = time.time()
        runners["so2nn_compiled"] = Runner(compile_model(ours), inputs, False, autocast, validate=False)
        for _ in range(2):
            runners["so2nn_compiled"].eval()
            runners["so2nn_compiled"].train_step()
        record["compile_warmup_s"] = round(time.time() - t, 1)
    for runner in runners.values():
        for _ in range(2):
            runner.eval()
            runner.train_step()
    times = {(n, m): [] for n in runners for m in ("eval", "train")}
    for _ in range(REPEATS):
        for m in ("eval", "train"):
            for n, r in runners.items():
                times[n, m].append(timed(r.eval if m == "eval" else r.train_step))
    for (n, m), values in times.items():
        record[f"{n}_{m}_s"] = round(statistics.median(values), 5)
    if "ref" in runners:
        for n in runners:
            if n != "ref":
                for m in ("eval", "train"):
                    record[f"speedup_{n}_{m}"] = round(record[f"ref_{m}_s"] / record[f"{n}_{m}_s"], 3)
    if memory and CUDA:
        models = {n: r for n, r in runners.items() if n in ("so2nn", "ref")}
        for n, r in models.items():
            for o in models.values():
                o.model.cpu()
            r.model.to(DEVICE)
            record[f"{n}_train_peak_GiB"] = peak(r, "train")
        if "ref" in models:
            record["mem_ratio_train"] = round(record["so2nn_train_peak_GiB"] / record["ref_train_peak_GiB"], 3)
        for r in models.values():
            r.model.to(DEVICE)
    record["cell_s"] = round(time.time() - start, 1)
    emit(record)
    del runners
    if CUDA:
        torch.cuda.empty_cache()


def cuda_graphs(case="31M"):
    """Batch 1, fp32: so2nn compiled with mode="reduce-overhead" (CUDA graphs, a fixed shape)."""
    if time.time() > DEADLINE:
        return
    precision("fp32")
    reference, ours, inputs = bench.build_models(case, HAVE_REFERENCE)
    ours.eval()
    record = {"cell": f"{case}/fp32/cuda-graphs"}
    eager = Runner(ours, inputs, False, None, validate=False)
    t = time.time()
    graphs = Runner(compile_model(ours, mode="reduce-overhead" if CUDA else "default"), inputs, False, None,
                    validate=False)
    for _ in range(3):
        graphs.eval()
    record["warmup_s"] = round(time.time() - t, 1)
    runners = {"so2nn": eager, "so2nn_graphs": graphs}
    if reference is not None:
        runners["ref"] = Runner(reference, inputs, True, None)
        runners["ref"].eval()
    times = {n: [] for n in runners}
    for _ in range(max(REPEATS, 20)):
        for n, r in runners.items():
            times[n].append(timed(r.eval))
    for n, values in times.items():
        record[f"{n}_eval_s"] = round(statistics.median(values), 5)
    if reference is not None:
        record["speedup_graphs"] = round(record["ref_eval_s"] / record["so2nn_graphs_eval_s"], 2)
        record["speedup_eager"] = round(record["ref_eval_s"] / record["so2nn_eval_s"], 2)
    emit(record)


def md_run(case="31M", steps=None):
    """Batch 1, fp32, as molecular dynamics runs it: ``steps`` Langevin steps (1 fs, 600 K, so that
    atoms move and the edge count changes) of the benchmark's slab through the ASE calculator,
    so2nn with CUDA graphs over size buckets (``cuda_graphs=True``; on the CPU, a dry run compiled
    with ``aot_eager``) and eager, and the reference's model call on every frame of the same
    trajectory (its graph precomputed, as in the other cells: so2nn's time includes building the
    graph, the reference's does not). Steps that compiled a new bucket are the warm-up, reported apart."""
    if time.time() > DEADLINE:
        return
    from ase import units
    from ase.md.langevin import Langevin

    from so2nn.calculators import So2nnCalculator

    steps = steps or (100 if CUDA else 4)
    precision("fp32")
    reference, ours, _ = bench.build_models(case, HAVE_REFERENCE)
    ours.eval()
    name, size, _ = bench.CASES[case]
    record = {"cell": f"{case}/fp32/md", "steps": steps}
    options = dict(cuda_graphs=True) if CUDA else dict(compile=True, compile_backend="aot_eager")
    frames = []
    for label, calc in (("so2nn_graphs", So2nnCalculator(ours, device=DEVICE, **options)),
                        ("so2nn", So2nnCalculator(ours, device=DEVICE))):
        atoms = bench.slab(size, 0)
        atoms.calc = calc
        dynamics = Langevin(atoms, 1 * units.fs, temperature_K=600, friction=0.02, rng=np.random.default_rng(0))
        times, warmup, shapes = [], [], 0
        for _ in range(steps):
            start = time.perf_counter()
            dynamics.run(1)
            sync()
            elapsed = time.perf_counter() - start
            compiled = getattr(calc, "_compiled", None)
            now = compiled.shapes if compiled is not None else 0
            (warmup if now > shapes else times).append(elapsed)
            shapes = now
            if label == "so2nn_graphs":
                frames.append(atoms.positions.copy())
        record[f"{label}_step_s"] = round(statistics.mean(times), 5) if times else None
        record[f"{label}_warmup_s"] = round(sum(warmup), 1)
        record[f"{label}_buckets"] = shapes
    config = ours.config
    edges = []
    ref_times = []
    for positions in frames:
        atoms = bench.slab(size, 0)
        atoms.positions = positions
        inputs = bench.batch_inputs_of([atoms], config)
        edges.append(int(inputs["edge_index"].shape[1]))
        if reference is not None:
            runner = Runner(reference, inputs, True, None)
            runner.eval()
            ref_times.append(timed(runner.eval))
    record["edges_min"], record["edges_max"] = min(edges), max(edges)
    if ref_times:
        record["ref_step_s"] = round(statistics.mean(ref_times), 5)
        for label in ("so2nn_graphs", "so2nn"):
            if record.get(f"{label}_step_s"):
                record[f"speedup_{label}"] = round(record["ref_step_s"] / record[f"{label}_step_s"], 2)
    emit(record)


def dispatch_counts(case="31M-14"):
    if time.time() > DEADLINE:
        return
    reference, ours, inputs = bench.build_models(case, HAVE_REFERENCE)
    runners = {"so2nn": Runner(ours, inputs, False, None, validate=False)}
    if reference is not None:
        runners["ref"] = Runner(reference, inputs, True, None)
    record = {"counts": case, "device": DEVICE.type}
    for n, r in runners.items():
        for m in ("eval", "train"):
            fn = r.eval if m == "eval" else r.train_step
            fn()
            with DispatchCounter() as counter:
                fn()
            record[f"{n}_{m}_ops"], record[f"{n}_{m}_syncs"] = counter.total, counter.host_syncs
    emit(record)


PLAN = [  # the targets first: training at batch 8, MD with CUDA graphs over buckets; the long compiles last
    lambda: cell("31Mx8", "bf16", variants=True),
    lambda: dispatch_counts(),
    lambda: md_run("31M"),
    lambda: cell("31Mx8", "fp32"),
    lambda: cell("31M", "fp32"),
    lambda: cuda_graphs("31M"),
    lambda: cell("153Mx2", "bf16"),
    lambda: cell("31Mx8", "bf16", memory=False, compiled=True),
]

if __name__ == "__main__":
    info = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "have_reference": HAVE_REFERENCE, "reference_error": REFERENCE_ERROR}
    emit(info)
    for step in PLAN:
        try:
            step()
        except Exception as error:  # noqa: BLE001 (a failed cell is logged; the next one runs)
            emit({"error": f"{type(error).__name__}: {error}"[:500], "traceback": traceback.format_exc()[-1500:]})
