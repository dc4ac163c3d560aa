"""Fine-tuning against training from scratch at equal steps, one cell of the matrix per call.

A small EquiformerV2 (one layer; ``--model tiny``: the tiny preset's size) is trained on one kind
of the embedded EMT data (``--source``: slabs with adsorbates, or bulk crystals), then fine-tuned
on the other kind (with ``Trainer.from_pretrained``: its defaults, re-fitted element references
and mean, the checkpoint's scales) and, for as many steps with the same recipe, the same
architecture is trained on it from scratch. ``--overlap disjoint`` pretrains on Cu, Ag, Au and
fine-tunes on Ni, Pd, Pt, Al; ``same`` uses all seven metals for both. One JSON line per cell:
validation force MAE (eV/A) of the fine-tuned run at its start (``fine0``) and end (``fine``),
of the run from scratch at its end (``scratch``), energy and stress MAEs, and the statistics of
the checkpoint and the new training set.

    python benchmarks/finetune_matrix.py --forces direct --source slab --overlap disjoint
    python benchmarks/finetune_matrix.py --stress-head --fine-tune-changes '{"lr": 2e-4, "warmup_steps": 100}'

One thread; a cell takes one to three minutes on a free CPU core. The data and pretrained
checkpoints are cached under ``runs/finetune-matrix``.
"""
import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore")
from so2nn.data import LmdbDataset  # noqa: E402
from so2nn.data.emt import make_bulk_dataset, make_dataset  # noqa: E402
from so2nn.models import EquiformerV2Config  # noqa: E402
from so2nn.training import Trainer, TrainingConfig  # noqa: E402

ROOT = Path("runs/finetune-matrix")
SMALL = dict(lmax=2, mmax=1, num_layers=1, sphere_channels=16, attn_hidden_channels=16, num_heads=2,
             attn_alpha_channels=8, attn_value_channels=4, ffn_hidden_channels=16, edge_channels=16,
             num_distance_basis=32, max_radius=5.0, max_neighbors=12, alpha_drop=0.0, drop_path_rate=0.0,
             grid_resolution=None)
TINY = dict(lmax=2, mmax=1, num_layers=2, sphere_channels=32, attn_hidden_channels=32, num_heads=4,
            attn_alpha_channels=16, attn_value_channels=8, ffn_hidden_channels=32, edge_channels=32,
            num_distance_basis=64, max_radius=5.0, max_neighbors=16, alpha_drop=0.0, drop_path_rate=0.0,
            grid_resolution=None, recompute_edge_activations=False)
A, B = ["Cu", "Ag", "Au"], ["Ni", "Pd", "Pt", "Al"]
ALL = A + B


def data(kind, metals, n, seed):
    cache = ROOT / "data"
    if kind == "slab":
        t, v = make_dataset(cache, n, 4, frames_per_system=5, relax_steps=3, seed=seed, metals=metals,
                            sizes=((2, 2, 3),))
    else:
        t, v = make_bulk_dataset(cache, n, 5, frames_per_system=4, seed=seed, metals=metals,
                                 cells=["primitive-2x2x2", "cubic-2x2x1"])
    return LmdbDataset(t), LmdbDataset(v)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--forces", choices=["direct", "gradient"], default="direct")
    p.add_argument("--source", choices=["slab", "bulk"], default="slab")
    p.add_argument("--overlap", choices=["same", "disjoint"], default="same")
    p.add_argument("--stress-head", action="store_true")
    p.add_argument("--model", choices=["small", "tiny"], default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pre-steps", type=int, default=200)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=4, help="batch size of the fine-tuning and scratch runs "
                   "(pretraining: 4)")
    p.add_argument("--refit", default="references")
    p.add_argument("--fine-tune-changes", default="{}", help="TrainingConfig changes (JSON) for the fine-tuning "
                   "run only")
    p.add_argument("--use-ema", type=int, default=1)
    p.add_argument("--reinit-head", action="append", default=[], help="a head of the fine-tuned model to start afresh")
    p.add_argument("--no-scratch", action="store_true", help="the fine-tuning run only")
    p.add_argument("--tag", default="", help="a label for the JSON line")
    a = p.parse_args()
    target = "bulk" if a.source == "slab" else "slab"
    src_metals, dst_metals = (ALL, ALL) if a.overlap == "same" else (A, B)
    src, dst = data(a.source, src_metals, 40, 10 + a.seed), data(target, dst_metals, 25, 20 + a.seed)
    base = dict(SMALL if a.model == "small" else TINY, direct_forces=a.forces == "direct")
    config = EquiformerV2Config(**base)
    quiet = dict(eval_every=10**6, checkpoint_every=10**6, log_every=10**6, seed=a.seed, element_references=True)
    pre = ROOT / f"pre-{a.model}-{a.forces}-{a.source}-{a.overlap}-{a.seed}-{a.pre_steps}"
    t0 = time.time()
    if not (pre / "model.pt").exists():
        Trainer(config, *src, TrainingConfig(max_steps=a.pre_steps, batch_size=4, lr=1e-3, warmup_steps=20,
                                             **quiet), pre, progress=False).fit()
    t1 = time.time()
    changes = {"stress_head": "equivariant"} if a.stress_head else {}
    recipe = TrainingConfig(max_steps=a.steps, batch_size=a.batch, lr=a.lr, warmup_steps=a.warmup, **quiet)
    ft_recipe = TrainingConfig(**{**recipe.__dict__, **json.loads(a.fine_tune_changes)})
    out = ROOT / f"run-{os.getpid()}"
    fine = Trainer.from_pretrained(pre / "model.pt", *dst, ft_recipe, out / "fine", progress=False, refit=a.refit,
                                   use_ema=bool(a.use_ema), reinit_heads=a.reinit_head, **changes)
    f0 = fine.evaluate()
    f1 = fine.fit()
    res = {"cell": f"{a.forces}/{a.source}->{target}/{a.overlap}{'/stress' if a.stress_head else ''}/s{a.seed}",
           "tag": a.tag, "fine0": round(f0["forces_mae"], 4), "fine": round(f1["forces_mae"], 4),
           "fineE": round(f1["energy_mae"], 4)}
    st = fine.finetune["statistics"]
    res["fstd_ckpt/data"] = (round(st["checkpoint"]["forces_std"], 3), round(st["training_set"]["forces_std"], 3))
    res["estd_ckpt/data"] = (round(st["checkpoint"]["energy_std"], 3), round(st["training_set"]["energy_std"], 3))
    if "stress_mae" in f1:
        res["fineS"] = round(1000 * f1["stress_mae"], 2)
    if not a.no_scratch:
        scratch = Trainer(EquiformerV2Config(**base, **changes), *dst, recipe, out / "scratch", progress=False)
        s1 = scratch.fit()
        res.update(scratch=round(s1["forces_mae"], 4), scratchE=round(s1["energy_mae"], 4))
        if "stress_mae" in s1:
            res["scratchS"] = round(1000 * s1["stress_mae"], 2)
    res["secs"] = (round(t1 - t0), round(time.time() - t1))
    print(json.dumps(res), flush=True)
    with open(ROOT / "results.jsonl", "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    sys.exit(main())
