"""so2nn's EquiformerV2 against the official one (fairchem-core 1.10.0), same weights, same graph.

Cases (random weights of the released architectures, fixed seed):

* ``31M``    the oc20-31M preset (8 layers, lmax 4, mmax 2) on a Cu(111) 4x4x4 slab with *OH
             (66 atoms, periodic, 12 A cutoff, 20 neighbours: 1320 edges);
* ``31Mx4``  the same model on a batch of 4 copies of the slab (each rattled differently);
* ``153M``   the oc20-153M preset (20 layers, lmax 6, mmax 3) on the slab, batch 1;
* ``31M-big`` (``--cases 31M-big``) a 296-atom Cu(111) 7x7x6 slab with *OH, for memory.

The reference is built first; its weights go to so2nn through the checkpoint import
(``EquiformerV2.from_fairchem``), and both get the same precomputed graph (the reference's
strict max-neighbour cut, ``graph_mode="reference"``). For each case it prints the median
time of

* eval: ``model.eval()`` under ``torch.no_grad()`` (the reference gets ``direct_forces = True``
  so that its forward does not turn autograd back on), and
* train: ``model.train()`` (dropout and drop-path on, as in training), forward and backward of
  ``4 * energy MAE + 100 * per-atom force L2 MAE`` against fixed random targets,

for each implementation, interleaved (reference, so2nn, reference, ...) so that both see the
same machine load, and their ratio. Peak memory is measured in a fresh process per
(implementation, case, mode): peak RSS on CPU (``VmHWM``, everything the process holds:
interpreter, torch, weights, activations), ``torch.cuda.max_memory_allocated`` on CUDA.
so2nn's achieved GFLOP/s uses the FLOPs counted by ``torch.utils.flop_counter`` over one call,
against the fp32 (or tf32/bf16) matmul peak of this machine measured in the same run.

Allocator: whatever the process runs with; ``--tcmalloc`` re-runs the script with
``LD_PRELOAD`` set to a libtcmalloc found on the system (both implementations and every memory
subprocess then use it). The allocator in use is printed.

Run (the reference lives in an environment of its own, which also sees so2nn; set it up once
with ``bash benchmarks/setup_reference.sh``, which creates ``.venv-reference/`` in the clone)::

    .venv-reference/bin/python benchmarks/equiformer_v2_vs_reference.py
    ... --cases 31M 31Mx4 153M --repeats 5 --threads 2          # the default
    ... --device cuda [--tf32 | --bf16] [--compile]            # GPU, fp32 / tf32 / bf16 autocast
    ... --checkpoint-activations                                # also so2nn with recomputation
    ... --no-reference                                          # so2nn alone (no fairchem needed)
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc111

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so2nn.graph import radius_graph  # noqa: E402
from so2nn.models import EquiformerV2, preset  # noqa: E402

CASES = {
    "31M": ("oc20-31M", (4, 4, 4), 1),
    "31Mx4": ("oc20-31M", (4, 4, 4), 4),
    "153M": ("oc20-153M", (4, 4, 4), 1),
    "31M-big": ("oc20-31M", (7, 7, 6), 1),
}
ENERGY_WEIGHT, FORCE_WEIGHT = 4.0, 100.0


# ---------------------------------------------------------------------------------------------
# the systems and the graph
# ---------------------------------------------------------------------------------------------
def slab(size, seed):
    """Cu(111) slab with *OH on an fcc site, periodic, rattled by 0.05 A."""
    atoms = fcc111("Cu", size, vacuum=8.0)
    add_adsorbate(atoms, Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]]), 1.5, "fcc")
    atoms.pbc = (True, True, True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def batch_inputs(size, copies, config):
    """so2nn keyword inputs of ``copies`` slabs, with the graph both implementations get."""
    return batch_inputs_of([slab(size, seed) for seed in range(copies)], config)


def batch_inputs_of(systems, config):
    """so2nn keyword inputs of the ``systems`` (ASE ``Atoms``), with the graph both implementations get."""
    copies = len(systems)
    pos = torch.tensor(np.concatenate([a.positions for a in systems]), dtype=torch.float32)
    numbers = torch.tensor(np.concatenate([a.numbers for a in systems]))
    cell = torch.tensor(np.stack([np.array(a.cell) for a in systems]), dtype=torch.float32)
    natoms = torch.tensor([len(a) for a in systems])
    batch = torch.repeat_interleave(torch.arange(copies), natoms)
    edge_index, offsets = radius_graph(pos, config.max_radius, cell, None, batch, config.max_neighbors,
                                       mode="reference")
    return dict(pos=pos, atomic_numbers=numbers, cell=cell, natoms=natoms, batch=batch,
                edge_index=edge_index, cell_offsets=offsets)


def reference_config(config):
    """The reference's constructor arguments for an so2nn config."""
    return dict(
        use_pbc=True, regress_forces=True, otf_graph=False, max_neighbors=config.max_neighbors,
        max_radius=config.max_radius, max_num_elements=config.max_num_elements, num_layers=config.num_layers,
        sphere_channels=config.sphere_channels, attn_hidden_channels=config.attn_hidden_channels,
        num_heads=config.num_heads, attn_alpha_channels=config.attn_alpha_channels,
        attn_value_channels=config.attn_value_channels, ffn_hidden_channels=config.ffn_hidden_channels,
        norm_type=config.norm_type, lmax_list=[config.lmax], mmax_list=[config.mmax],
        grid_resolution=config.grid_resolution, edge_channels=config.edge_channels,
        use_atom_edge_embedding=config.use_atom_edge_embedding, num_distance_basis=config.num_distance_basis,
        use_attn_renorm=config.use_attn_renorm, use_gate_act=False, use_grid_mlp=config.use_grid_mlp,
        use_sep_s2_act=True, alpha_drop=config.alpha_drop, drop_path_rate=config.drop_path_rate,
        proj_drop=config.proj_drop, weight_init="uniform", avg_num_nodes=config.avg_num_nodes,
        avg_degree=config.avg_degree,
    )


def build_models(case, with_reference, checkpoint_activations=False):
    """(reference or None, so2nn model, inputs) with identical weights, on the CPU, float32."""
    name, size, copies = CASES[case]
    config = preset(name, graph_mode="reference")
    inputs = batch_inputs(size, copies, config)
    torch.manual_seed(0)
    if with_reference:
        import logging

        logging.disable(logging.WARNING)  # the deprecation warning of the monolithic class
        from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2 as Reference

        kwargs = reference_config(config)
        reference = Reference(**kwargs)
        reference.direct_forces = True  # true no-grad eval (its forward re-enables grad otherwise)
        params = dict(reference.named_parameters())
        weights = {k: v.detach() for k, v in reference.state_dict().items() if k in params}
        checkpoint = {"state_dict": weights, "config": {"model": {"name": "equiformer_v2", **kwargs}}}
        ours = EquiformerV2.from_fairchem(checkpoint, graph_mode="reference",
                                          checkpoint_activations=checkpoint_activations)
    else:
        reference = None
        ours = EquiformerV2(config.replace(checkpoint_activations=checkpoint_activations))
    return reference, ours, inputs


def reference_data(inputs):
    from torch_geometric.data import Batch, Data

    data = []
    counts = torch.bincount(inputs["batch"][inputs["edge_index"][1]], minlength=len(inputs["natoms"]))
    start = 0
    edge_start = 0
    for b, n in enumerate(inputs["natoms"].tolist()):
        ne = int(counts[b])
        data.append(Data(
            pos=inputs["pos"][start:start + n], atomic_numbers=inputs["atomic_numbers"][start:start + n].float(),
            cell=inputs["cell"][b:b + 1], natoms=torch.tensor([n]),
            edge_index=inputs["edge_index"][:, edge_start:edge_start + ne] - start,
            cell_offsets=inputs["cell_offsets"][edge_start:edge_start + ne].float(), neighbors=torch.tensor([ne]),
            tags=torch.ones(n, dtype=torch.long), fixed=torch.zeros(n),
        ))
        start += n
        edge_start += ne
    return Batch.from_data_list(data)


# ---------------------------------------------------------------------------------------------
# one eval / one train step
# ---------------------------------------------------------------------------------------------
class Runner:
    """Calls one implementation on one case: ``eval()`` and ``train_step()``."""

    def __init__(self, model, inputs, is_reference, device, autocast_dtype):
        self.model, self.is_reference, self.device = model.to(device), is_reference, device
        self.autocast_dtype = autocast_dtype
        inputs = {k: v.to(device) for k, v in inputs.items()}
        # edges are sorted by system in both graphs (radius_graph is per system)
        self.args = (reference_data(inputs).to(device),) if is_reference else ()
        self.kwargs = {} if is_reference else inputs
        generator = torch.Generator().manual_seed(1)
        self.energy_target = torch.randn(len(inputs["natoms"]), generator=generator).to(device)
        self.force_target = torch.randn(len(inputs["pos"]), 3, generator=generator).to(device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def eval(self):
        self.model.eval()
        with torch.no_grad(), self._autocast():
            out = self.model(*self.args, **self.kwargs)
        return out

    def loss(self, out):
        energy = (out["energy"].float().reshape(-1) - self.energy_target).abs().mean()
        forces = (out["forces"].float() - self.force_target).norm(dim=1).mean()
        return ENERGY_WEIGHT * energy + FORCE_WEIGHT * forces

    def train_step(self):
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.model(*self.args, **self.kwargs)
        loss = self.loss(out)
        loss.backward()
        return loss


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def matmul_peak(device, dtype, n=2048, repeats=5):
    """Best GFLOP/s of an ``n x n`` matmul (the machine's practical peak for this dtype)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def count_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------
# memory: one fresh process per measurement
# ---------------------------------------------------------------------------------------------
def memory_worker(args):
    """Run in a subprocess: build, run ``mode`` twice, print peak memory (bytes) as JSON."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    set_precision(args)
    reference, ours, inputs = build_models(args.case, args.impl == "reference", args.ckpt)
    model = reference if args.impl == "reference" else ours
    if args.impl == "reference":
        del ours
    else:
        del reference
    if args.compile and args.impl != "reference":
        model = torch.compile(model)
    runner = Runner(model, inputs, args.impl == "reference", device, autocast_dtype(args))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        runner.eval() if args.mode == "eval" else runner.train_step()
    synchronize(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss()
    print("PEAK " + json.dumps({"peak_bytes": peak}))


def peak_rss():
    """Peak resident memory of this process, in bytes.

    ``VmHWM`` of /proc/self/status: the high-water mark of this address space. (``ru_maxrss``
    is not used: Linux carries it over fork and exec, so a subprocess would report at least
    its parent's peak.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux; bytes on macOS


def measure_memory(args, impl, case, mode, ckpt=False):
    command = [sys.executable, __file__, "--worker", "--impl", impl, "--case", case, "--mode", mode,
               "--device", args.device, "--threads", str(args.threads)]
    command += ["--tf32"] * args.tf32 + ["--bf16"] * args.bf16 + ["--compile"] * args.compile + ["--ckpt"] * ckpt
    result = subprocess.run(command, capture_output=True, text=True)
    for line in result.stdout.splitlines():
        if line.startswith("PEAK "):
            return json.loads(line[5:])["peak_bytes"]
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    return f"failed ({tail[0][:80]})"


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------
def allocator():
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if name in preload:
            return f"{name} (LD_PRELOAD={preload})"
    return "glibc malloc (system default)" if not preload else f"LD_PRELOAD={preload}"


def find_tcmalloc():
    patterns = ["/usr/lib/x86_64-linux-gnu/libtcmalloc*.so*", "/usr/lib/libtcmalloc*.so*",
                "/usr/local/lib/libtcmalloc*.so*", str(Path(sys.prefix) / "lib" / "libtcmalloc*.so*")]
    found = sorted(p for pattern in patterns for p in glob.glob(pattern) if "debug" not in p)
    return found[0] if found else None


def set_precision(args):
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_dtype(args):
    return torch.bfloat16 if args.bf16 else None


def fmt_bytes(value):
    return f"{value / 2**30:.2f} GiB" if isinstance(value, (int, float)) else str(value)


def run_case(args, case, device, peak):
    reference, ours, inputs = build_models(case, not args.no_reference)
    num_edges, num_atoms = inputs["edge_index"].shape[1], len(inputs["pos"])
    print(f"\n== {case}: {CASES[case][0]}, {num_atoms} atoms, {num_edges} edges, batch {len(inputs['natoms'])}, "
          f"{ours.num_params / 1e6:.1f}M parameters")
    runners = {"so2nn": Runner(ours, inputs, False, device, autocast_dtype(args))}
    if reference is not None:
        runners["reference"] = Runner(reference, inputs, True, device, autocast_dtype(args))
        with torch.no_grad():
            a, b = runners["so2nn"].eval(), runners["reference"].eval()
        diff = float((a["forces"].float() - b["forces"].float()).abs().max() / b["forces"].float().abs().max())
        print(f"   same numbers: forces max |diff| / max |F| = {diff:.1e} (the reference rolls its frames at random)")
    if args.compile:
        compiled = Runner(torch.compile(ours), inputs, False, device, autocast_dtype(args))
        start = time.perf_counter()
        compiled.eval(), compiled.train_step()
        print(f"   torch.compile warm-up (eval + train): {time.perf_counter() - start:.0f} s")
        runners["so2nn compiled"] = compiled
    times = {(name, mode): [] for name in runners for mode in ("eval", "train")}
    for runner in runners.values():  # warm-up
        runner.eval(), runner.train_step()
    for _ in range(args.repeats):
        for mode in ("eval", "train"):
            for name, runner in runners.items():
                times[name, mode].append(timed(runner.eval if mode == "eval" else runner.train_step, device))
    flops = {"eval": count_flops(runners["so2nn"].eval), "train": count_flops(runners["so2nn"].train_step)}
    rows = []
    for mode in ("eval", "train"):
        ours_t = statistics.median(times["so2nn", mode])
        line = f"   {mode:5s}  so2nn {ours_t:7.3f} s"
        result = {"case": case, "mode": mode, "so2nn_s": ours_t, "gflop": flops[mode] / 1e9,
                  "gflops": flops[mode] / ours_t / 1e9}
        if "reference" in runners:
            ref_t = statistics.median(times["reference", mode])
            line += f"   reference {ref_t:7.3f} s   speed-up {ref_t / ours_t:5.2f}x"
            result.update(reference_s=ref_t, speedup=ref_t / ours_t)
        if "so2nn compiled" in runners:
            comp_t = statistics.median(times["so2nn compiled", mode])
            line += f"   compiled {comp_t:7.3f} s"
            result.update(compiled_s=comp_t)
        line += (f"   | {flops[mode] / 1e9:6.0f} GFLOP, {flops[mode] / ours_t / 1e9:5.0f} GFLOP/s "
                 f"= {100 * flops[mode] / ours_t / 1e9 / peak:3.0f}% of matmul peak")
        print(line, flush=True)
        rows.append(result)
    del runners, reference, ours
    if not args.no_memory:
        for mode in ("eval", "train"):
            mem_ours = measure_memory(args, "so2nn", case, mode)
            line = f"   peak memory {mode:5s}: so2nn {fmt_bytes(mem_ours)}"
            row = next(r for r in rows if r["mode"] == mode)
            row["so2nn_peak_bytes"] = mem_ours
            if not args.no_reference:
                mem_ref = measure_memory(args, "reference", case, mode)
                row["reference_peak_bytes"] = mem_ref
                line += f"   reference {fmt_bytes(mem_ref)}"
                if isinstance(mem_ref, int) and isinstance(mem_ours, int):
                    line += f"   ratio {mem_ours / mem_ref:.2f}"
            if args.checkpoint_activations and mode == "train":
                mem_ckpt = measure_memory(args, "so2nn", case, mode, ckpt=True)
                row["so2nn_checkpointed_peak_bytes"] = mem_ckpt
                line += f"   so2nn checkpoint_activations {fmt_bytes(mem_ckpt)}"
            print(line, flush=True)
    if args.checkpoint_activations:
        _, ckpt_model, _ = build_models(case, False, checkpoint_activations=True)
        ours_plain = build_models(case, False)[1]
        ckpt_model.load_state_dict(ours_plain.state_dict())
        plain = Runner(ours_plain, inputs, False, device, autocast_dtype(args))
        ckpt = Runner(ckpt_model, inputs, False, device, autocast_dtype(args))
        plain.train_step(), ckpt.train_step()
        t_plain, t_ckpt = [], []
        for _ in range(args.repeats):
            t_plain.append(timed(plain.train_step, device))
            t_ckpt.append(timed(ckpt.train_step, device))
        print(f"   checkpoint_activations train step: {statistics.median(t_ckpt):.3f} s "
              f"(without: {statistics.median(t_plain):.3f} s)", flush=True)
        rows[-1].update(checkpointed_train_s=statistics.median(t_ckpt), plain_train_s=statistics.median(t_plain))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["31M", "31Mx4", "153M"], choices=sorted(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tf32", action="store_true", help="CUDA: TF32 matmuls")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (both implementations)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(so2nn model)")
    parser.add_argument("--checkpoint-activations", action="store_true",
                        help="also so2nn with checkpoint_activations=True (train memory and time)")
    parser.add_argument("--no-reference", action="store_true", help="so2nn only (fairchem not needed)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--tcmalloc", action="store_true", help="re-run under LD_PRELOAD=libtcmalloc if found")
    parser.add_argument("--json", help="write the results here")
    # internal: the memory subprocess
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return memory_worker(args)
    if args.tcmalloc and "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
        library = find_tcmalloc()
        if library is None:
            print("--tcmalloc: no libtcmalloc found on this system; running with the default allocator")
        else:
            env = {**os.environ, "LD_PRELOAD": library}
            os.execve(sys.executable, [sys.executable, *sys.argv], env)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    if args.bf16 and device.type == "cpu":
        print("note: bf16 autocast on CPU")
    torch.set_num_threads(args.threads)
    set_precision(args)
    precision = "bf16 autocast" if args.bf16 else ("tf32" if args.tf32 else "fp32")
    peak_dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = matmul_peak(device, peak_dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; precision {precision}; allocator: {allocator()}")
    print(f"matmul peak ({peak_dtype}, 2048^3, best of 5): {peak:.0f} GFLOP/s")
    results = []
    for case in args.cases:
        results += run_case(args, case, device, peak)
    if args.json:
        meta = dict(device=name, torch=torch.__version__, precision=precision, allocator=allocator(), peak_gflops=peak,
                    command=" ".join(sys.argv))
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
