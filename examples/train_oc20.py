"""Train EquiformerV2 on OC20 S2EF energies and forces.

Out of the box (no arguments) it trains a tiny EquiformerV2 on a small OC20-like dataset that
it generates once with ASE's EMT calculator (adsorbates on metal slabs, in OC20's LMDB
format), on the CPU, in a few minutes, and shows that the model learned: validation energy and
force errors against the baselines of predicting the training mean and zero forces.

On real OC20 data, on GPUs::

    python examples/train_oc20.py --data s2ef/2M/train --val-data s2ef/all/val_id \\
        --preset oc20-31M --device cuda --amp bf16 --batch-size 4
    torchrun --nproc_per_node=8 examples/train_oc20.py --data ... --val-data ... --preset oc20-31M \\
        --device cuda --amp bf16

``--data`` takes the preprocessed S2EF LMDBs (a file or a directory of shards), the raw
``*.extxyz[.xz]`` + ``*.txt`` files, or an ASE database. Outputs go to ``--out``:
``checkpoint.pt`` (resume with ``--resume``), ``model.pt`` (load with
``EquiformerV2.from_checkpoint``), ``train_log.csv``, ``val_log.csv``, ``metrics.json`` and
``summary.png`` (learning curves, energy and force parity plots).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from so2nn.data import open_dataset
from so2nn.data.emt import make_dataset
from so2nn.models import PRESETS, EquiformerV2Config, preset
from so2nn.training import Trainer, TrainingConfig

# Not a released model: a small EquiformerV2 (same architecture, fewer and narrower layers,
# lmax 2) that learns the embedded EMT data on a laptop CPU in minutes.
TINY = EquiformerV2Config(
    lmax=2, mmax=1, num_layers=2, sphere_channels=32, attn_hidden_channels=32, num_heads=4, attn_alpha_channels=16,
    attn_value_channels=8, ffn_hidden_channels=32, edge_channels=32, num_distance_basis=64, max_radius=5.0, max_neighbors=16,
    alpha_drop=0.0, drop_path_rate=0.0, grid_resolution=None,
    recompute_edge_activations=False,  # memory is no concern at this size: store, don't recompute
)

# Recipe of the tiny default run (the paper's recipe, scaled to a 2-core CPU and minutes).
TINY_TRAINING = dict(max_steps=1000, batch_size=8, lr=1e-3, warmup_steps=50, eval_every=250, checkpoint_every=250,
                     element_references=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, help="training data: S2EF LMDB file or directory of shards, extxyz+txt "
                      "directory, or ASE database (default: the embedded EMT dataset, generated once)")
    data.add_argument("--val-data", type=Path, help="validation data, same formats (required with --data)")
    data.add_argument("--val-subset", type=int, help="evaluate on the first N validation items only")
    data.add_argument("--cache-dir", type=Path, default=Path("runs/data"), help="where the embedded dataset is generated")
    data.add_argument("--emt-systems", type=int, nargs=2, default=(150, 20), metavar=("TRAIN", "VAL"),
                      help="systems (10 frames each) in the embedded dataset's train and val splits")
    model = p.add_argument_group("model")
    model.add_argument("--preset", choices=["tiny", *PRESETS], help="model architecture (default: tiny on the "
                       "embedded data, oc20-31M with --data)")
    model.add_argument("--tiny", action="store_true", help="same as --preset tiny: a small model for CPUs")
    model.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                       help="override a model config entry, e.g. --set lmax=4 --set grid_resolution=24 (repeatable)")
    model.add_argument("--conservative-forces", action="store_true", help="forces = -dE/dpos instead of the direct head")
    train = p.add_argument_group("training (defaults: the EquiformerV2 paper's recipe; the tiny run uses "
                                 + ", ".join(f"{k}={v}" for k, v in TINY_TRAINING.items()) + ")")
    defaults = TrainingConfig()
    train.add_argument("--max-steps", type=int, help=f"optimisation steps (default {defaults.max_steps})")
    train.add_argument("--batch-size", type=int, help=f"systems per batch per process (default {defaults.batch_size})")
    train.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    train.add_argument("--lr", type=float, help=f"peak learning rate of AdamW (default {defaults.lr})")
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    train.add_argument("--warmup-steps", type=int, help=f"linear warm-up steps (default {defaults.warmup_steps})")
    train.add_argument("--clip-grad-norm", type=float, default=defaults.clip_grad_norm)
    train.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    train.add_argument("--energy-coefficient", type=float, default=defaults.energy_coefficient, help="lambda_E")
    train.add_argument("--force-coefficient", type=float, default=defaults.force_coefficient, help="lambda_F")
    train.add_argument("--all-atoms", action="store_true", help="train and evaluate forces on fixed atoms too "
                       "(default: free atoms only, OC20's convention)")
    train.add_argument("--no-normalize", action="store_true", help="do not normalise energies and forces")
    train.add_argument("--element-references", action=argparse.BooleanOptionalAction, default=None,
                       help="fit per-element linear energy references on the training set (default: on for the tiny "
                       "run, off for presets, as the paper trained OC20)")
    train.add_argument("--eval-every", type=int, help=f"steps between validations (default {defaults.eval_every})")
    train.add_argument("--checkpoint-every", type=int, help=f"steps between checkpoints (default {defaults.checkpoint_every})")
    train.add_argument("--log-every", type=int, default=defaults.log_every)
    train.add_argument("--seed", type=int, default=defaults.seed)
    run = p.add_argument_group("run")
    run.add_argument("--out", type=Path, default=Path("runs/train_oc20"), help="output directory")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    run.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                     help="mixed precision (fp16 uses loss scaling)")
    run.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes")
    run.add_argument("--threads", type=int, help="torch CPU threads")
    run.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    run.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many steps of this run")
    run.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (needs tensorboard)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-plot", action="store_true", help="skip summary.png")
    args = p.parse_args(argv)
    if args.tiny:
        args.preset = "tiny"
    if args.data is not None and args.val_data is None:
        p.error("--data needs --val-data")
    return args


def model_config(args) -> EquiformerV2Config:
    name = args.preset or ("tiny" if args.data is None else "oc20-31M")
    config = TINY if name == "tiny" else preset(name)
    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in EquiformerV2Config.__dataclass_fields__:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(EquiformerV2Config.__dataclass_fields__)}")
        changes[key] = json.loads(value) if value not in ("None", "none") else None
    if args.conservative_forces:
        changes["direct_forces"] = False
    return config.replace(**changes)


def training_config(args) -> TrainingConfig:
    tiny = (args.preset or ("tiny" if args.data is None else None)) == "tiny"
    values = dict(TINY_TRAINING) if tiny else {}
    flags = dict(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                 eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                 element_references=args.element_references)
    values.update({k: v for k, v in flags.items() if v is not None})
    return TrainingConfig(
        **values, eval_batch_size=args.eval_batch_size, weight_decay=args.weight_decay,
        clip_grad_norm=args.clip_grad_norm, ema_decay=args.ema_decay, energy_coefficient=args.energy_coefficient,
        force_coefficient=args.force_coefficient, train_on_free_atoms=not args.all_atoms,
        eval_on_free_atoms=not args.all_atoms, normalize_targets=not args.no_normalize, log_every=args.log_every,
        amp=args.amp, seed=args.seed, num_workers=args.num_workers,
    )


def datasets(args):
    if args.data is None:
        train_path, val_path = make_dataset(args.cache_dir, *args.emt_systems)
    else:
        train_path, val_path = args.data, args.val_data
    train, val = open_dataset(train_path), open_dataset(val_path)
    if args.val_subset is not None:
        val = torch.utils.data.Subset(val, range(min(args.val_subset, len(val))))
    return train, val


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, val = datasets(args)
    common = dict(device=args.device, progress=not args.no_progress, tensorboard=args.tensorboard)
    if args.resume:
        checkpoint = args.out / "checkpoint.pt"
        if not checkpoint.is_file():
            raise SystemExit(f"--resume: no checkpoint at {checkpoint}")
        changes = {k: v for k, v in dict(max_steps=args.max_steps).items() if v is not None}
        trainer = Trainer.resume(checkpoint, train, val, args.out, **common, **changes)
    else:
        trainer = Trainer(model_config(args), train, val, training_config(args), args.out, **common)
    main_process = trainer.dist.is_main
    if main_process:
        c = trainer.model.config
        print(f"EquiformerV2 lmax={c.lmax} mmax={c.mmax} layers={c.num_layers} channels={c.sphere_channels}: "
              f"{trainer.model.num_params:,} parameters; {len(train)} training / {len(val)} validation structures; "
              f"device {trainer.device}, {trainer.dist.world_size} process(es)", flush=True)
    start = time.perf_counter()
    metrics = trainer.fit(stop_after=args.stop_after)
    if main_process:
        elapsed = time.perf_counter() - start
        if trainer.step < trainer.config.max_steps:
            print(f"stopped at step {trainer.step} of {trainer.config.max_steps} after {elapsed:.0f} s; "
                  f"continue with --resume (checkpoint: {args.out / 'checkpoint.pt'})")
        else:
            print(f"trained {trainer.step} steps in {elapsed:.0f} s")
            print(f"validation (EMA weights): energy MAE {metrics['energy_mae']:.4f} eV "
                  f"vs {metrics['energy_mae_mean_baseline']:.4f} for predicting the training mean; "
                  f"force MAE {metrics['forces_mae']:.4f} eV/A vs {metrics['forces_mae_zero_baseline']:.4f} "
                  f"for predicting zero; force cosine {metrics['forces_cos']:.3f}; EFwT {100 * metrics['efwt']:.1f}%")
            if not args.no_plot:
                print(f"learning curves and parity plots: {trainer.plot()}")
            print(f"model: {args.out / 'model.pt'}")
    trainer.close()
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
