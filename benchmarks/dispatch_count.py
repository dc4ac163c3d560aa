"""How many aten operations one EquiformerV2 call dispatches, and how many wait for the host.

On a GPU each dispatched operation is (about) one kernel launch that the CPU issues, and a
31M train step at small batch sizes is bound by issuing them, not by the GPU's arithmetic. So
the count (every dispatch costs the host a few microseconds; "work" leaves out views, which
launch nothing), measured on the CPU with :class:`so2nn.testing.DispatchCounter`, predicts the GPU's
launch-bound time; host synchronisations (values read back, data-dependent shapes) each stall
the stream and make CUDA-graph capture impossible.

Cases: the oc20-31M preset with random weights on a 14-atom Cu(111) 2x2x3 slab with *OH
(the graph precomputed, ``graph_mode="reference"``), eval (``torch.no_grad``) and a train step
(forward and backward of the benchmark's energy + force loss, ``zero_grad(set_to_none=True)``
first), for so2nn with each kernel policy and for the reference (fairchem-core 1.10.0) when it is
installed. The row "as on a GPU" runs the CPU tensors through the choices the policy makes for
CUDA tensors (:func:`so2nn.kernels.choose_as`): what a GPU dispatches, counted here::

    python benchmarks/dispatch_count.py                       # so2nn only
    .venv-reference/bin/python benchmarks/dispatch_count.py   # with the reference beside it
    ... --device cuda --by-op 15                              # on a GPU; the most frequent ops
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import equiformer_v2_vs_reference as bench  # noqa: E402

from so2nn.kernels import choose_as  # noqa: E402
from so2nn.testing import DispatchCounter  # noqa: E402

bench.CASES["31M-14"] = ("oc20-31M", (2, 2, 3), 1)


def count(runner, mode, chosen_as=None):
    with choose_as(chosen_as) if chosen_as else contextlib.nullcontext():
        runner.eval() if mode == "eval" else runner.train_step()  # warm-up (lazy constants)
        with DispatchCounter() as counter:
            runner.eval() if mode == "eval" else runner.train_step()
    return counter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="31M-14", choices=sorted(bench.CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--by-op", type=int, default=0, metavar="K", help="also print the K most frequent ops")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    try:
        reference, ours, inputs = bench.build_models(args.case, not args.no_reference)
    except ImportError:
        reference, ours, inputs = bench.build_models(args.case, False)
    rows = []
    reference_kernels = type(ours)(ours.config.replace(kernels="reference"))
    reference_kernels.load_state_dict(ours.state_dict())
    rows.append((f"so2nn, kernels='auto' ({device.type})", bench.Runner(ours, inputs, False, device, None), None))
    if device.type == "cpu":  # what the same model dispatches on a GPU
        rows.append(("so2nn, kernels='auto', as on a GPU", bench.Runner(ours, inputs, False, device, None), "cuda"))
    rows.append(("so2nn, kernels='reference'", bench.Runner(reference_kernels, inputs, False, device, None), None))
    if reference is not None:
        rows.append(("reference (fairchem 1.10.0)", bench.Runner(reference, inputs, True, device, None), None))
    print(f"{args.case}: {len(inputs['pos'])} atoms, {inputs['edge_index'].shape[1]} edges, {device}")
    print(f"{'':36s} {'train ops':>10s} {'(work)':>7s} {'syncs':>6s} {'eval ops':>10s} {'(work)':>7s} {'syncs':>6s}")
    for name, runner, chosen_as in rows:
        train, evaluation = count(runner, "train", chosen_as), count(runner, "eval", chosen_as)
        print(f"{name:36s} {train.total:10d} {train.launches:7d} {train.host_syncs:6d} {evaluation.total:10d} "
              f"{evaluation.launches:7d} {evaluation.host_syncs:6d}")
        if args.by_op:
            for label, counter in (("train", train), ("eval", evaluation)):
                common = ", ".join(f"{op.removeprefix('aten.')} {n}" for op, n in counter.ops.most_common(args.by_op))
                print(f"    {label}: {common}")
                if counter.sync_ops:
                    print(f"    {label} syncs: {dict(counter.sync_ops)}")


if __name__ == "__main__":
    main()
