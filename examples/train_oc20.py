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
``*.extxyz[.xz]`` + ``*.txt`` files, an ASE database, or any file ASE reads (an extxyz without
a sidecar, ``.traj``, ``vasprun.xml``, ``OUTCAR``; a directory or a quoted glob of them), the
targets named as MACE names them; ``--valid-fraction`` holds out part of it for validation::

    python examples/train_oc20.py --init eq2_31M_ec4_allmd.pt --data my_dft.extxyz --valid-fraction 0.1 \\
        --energy-key REF_energy --forces-key REF_forces --stress-key REF_stress

Outputs go to ``--out``:
``checkpoint.pt`` (resume with ``--resume``), ``model.pt`` (load with
``EquiformerV2.from_checkpoint``), ``train_log.csv``, ``val_log.csv``, ``metrics.json`` and
``summary.png`` (learning curves, energy and force parity plots).

Evaluate or predict with any checkpoint (so2nn's ``model.pt`` or ``checkpoint.pt``, or an
official fairchem EquiformerV2 checkpoint), without training::

    python examples/train_oc20.py --evaluate runs/train_oc20/model.pt --val-data s2ef/all/val_id
    python examples/train_oc20.py --predict eq2_31M_ec4_allmd.pt --val-data s2ef/all/test_id \\
        --predictions test_id.npz --device cuda

``--evaluate`` prints OC20's S2EF metrics (energy MAE, force MAE, force cosine, EFwT, and stress
MAEs where data and model have stress) against the baselines, as a training run's summary;
``--predict`` writes OC20's S2EF submission file (``ids``, ``energy``, ``forces``,
``chunk_idx``), saving partial results as it goes: the same command continues an interrupted one.
Without ``--val-data`` both use the embedded dataset's validation split.

``--resume`` continues the run in ``--out``: give the same command again with ``--resume``.
The checkpoint records the run's data (paths, sizes, modification times, record counts), model
and recipe, and a resume that would change them stops with a message naming each difference.
A resume may change ``--max-steps`` (to extend the run), ``--eval-every``,
``--checkpoint-every``, ``--log-every``, ``--eval-batch-size``, ``--num-workers``, ``--compile``,
``--stop-after``, ``--device``, ``--threads`` and the output options; for data moved or copied
elsewhere, add ``--allow-data-change``. Anything else is a new run: use another ``--out``.

``--init CHECKPOINT`` fine-tunes a checkpoint instead: an official fairchem one or any so2nn
``model.pt``/``checkpoint.pt`` (its EMA weights), with a fresh optimiser, schedule and step
count. The architecture is the checkpoint's: ``--set`` may change only dropout, drop-path, the
cutoff, ``max_neighbors``, the graph mode and the grid (the graph ones with a warning), or add a
head (``--set stress='{"head": "equivariant"}'``, or the flat ``--set stress_head='"equivariant"'``
of older configs); ``--freeze-backbone`` trains the heads only,
``--backbone-lr-factor`` lowers the backbone's learning rate, ``--reinit-head`` starts a head
afresh and ``--refit`` chooses the energy referencing (printed at the start). The recipe's
defaults are those of a run from scratch of the checkpoint's model: the tiny run's for a
checkpoint of the tiny model, the paper's otherwise, so that fine-tuning and training from
scratch compare at equal flags. ``--resume`` continues a fine-tuning run like any other (same
command plus ``--resume``).

``--compile`` trains through ``torch.compile(model, dynamic=True)``: the first step compiles
(its time is printed; inductor's cache on disk makes the next run's faster), the later ones run
the compiled code. Checkpoints hold the plain model's weights, so they load and resume with or
without it.

Threads: by default, as many as the cores that no other process keeps busy when the run starts
(one per core on a machine of its own); threads that wait for each other on a busy core make
every step many times slower. ``--threads N`` overrides it. Ctrl-C (or SIGTERM) stops after the
current step with a checkpoint, prints the command that continues the run, and exits with
status 130 (143 for SIGTERM); before the first step (while the data is generated, say) there is
no checkpoint, and it says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path

import torch

import so2nn
from so2nn.cli import (
    UsageError,
    add_threads_argument,
    check_device,
    describe_threads,
    exit_on_interrupt,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    set_threads,
    usage_errors,
)
from so2nn.data import ValidationSplit, open_dataset
from so2nn.data.emt import make_bulk_dataset, make_dataset
from so2nn.models import FLAT_STRESS_KEYS, PRESETS, EquiformerV2Config, load_checkpoint, load_model, preset
from so2nn.training import (
    DEFAULT_STRESS_COEFFICIENT,
    Trainer,
    TrainingConfig,
    evaluate_model,
    recorded_split,
    referencing_table,
    write_predictions,
)

# Not a released model: a small EquiformerV2 (same architecture, fewer and narrower layers,
# lmax 2) that learns the embedded EMT data on a laptop CPU in minutes.
TINY = EquiformerV2Config(
    lmax=2, mmax=1, num_layers=2, sphere_channels=32, attn_hidden_channels=32, num_heads=4, attn_alpha_channels=16,
    attn_value_channels=8, ffn_hidden_channels=32, edge_channels=32, num_distance_basis=64, max_radius=5.0,
    max_neighbors=16, alpha_drop=0.0, drop_path_rate=0.0, grid_resolution=None,
    recompute_edge_activations=False,  # memory is no concern at this size: store, don't recompute
)

# Recipe of the tiny default run (the paper's recipe, scaled to a 2-core CPU and minutes).
TINY_TRAINING = dict(max_steps=1000, batch_size=8, lr=1e-3, warmup_steps=50, eval_every=250, checkpoint_every=250,
                     element_references=True)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each default said once: appended as "(default: X)" unless the help text already says it,
    or there is none to say (None: decided at run time, as the help text explains; off switches)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == [] \
                or action.default == argparse.SUPPRESS:
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, (tuple, list)) else action.default
        return f"{text} (default: {default})".strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[-3:]).replace("``", ""))
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, help="training data: S2EF LMDB file or directory of shards, extxyz+txt "
                      "directory, ASE database, or any file ASE reads (extxyz, .traj, vasprun.xml, OUTCAR; a "
                      "directory or a quoted glob of them) (default: the embedded EMT dataset, generated "
                      "once)")
    data.add_argument("--val-data", type=Path, help="validation data, same formats (with --data: this or "
                      "--valid-fraction)")
    data.add_argument("--valid-fraction", type=fraction, metavar="F", help="hold out this fraction of --data "
                      "(drawn with --seed) for validation; recorded in the checkpoint, so --resume uses the "
                      "same")
    for target, where in (("energy", "atoms.info"), ("forces", "atoms.arrays"), ("stress", "atoms.info"),
                          ("virial", "atoms.info")):
        data.add_argument(f"--{target}-key", metavar="KEY", help=f"files read through ASE: the {target} is "
                          f"{where}[KEY] (or the calculator's result KEY; without a key: the calculator's "
                          f"{target}{'' if target != 'virial' else ', or info[virial]'})")
    data.add_argument("--no-stress", action="store_true", help="files read through ASE: read no stress or virial "
                      "(a file with stress on some frames only: a dataset has stress on every frame or on none)")
    data.add_argument("--data-format", metavar="FORMAT", help="files read through ASE: ASE's name of their "
                      "format, where ASE cannot tell it (e.g. vasp-out)")
    data.add_argument("--val-subset", type=positive_int, help="evaluate on the first N validation items only")
    data.add_argument("--cache-dir", type=Path, default=Path("runs/data"),
                      help="where the embedded dataset is generated")
    data.add_argument("--emt-systems", type=positive_int, nargs=2, default=(150, 20), metavar=("TRAIN", "VAL"),
                      help="systems in the embedded dataset's train and val splits (10 frames each for slabs, "
                      "8 for bulk)")
    data.add_argument("--embedded", choices=["slabs", "bulk"], default="slabs",
                      help="the embedded EMT dataset: adsorbates on slabs (OC20-like), or bulk crystals and alloys "
                      "with stress")
    model = p.add_argument_group("model")
    model.add_argument("--preset", choices=["tiny", *PRESETS], help="model architecture (default: tiny on the "
                       "embedded data, oc20-31M with --data)")
    model.add_argument("--tiny", action="store_true", help="same as --preset tiny: a small model for CPUs")
    model.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                       help="override a model config entry, e.g. --set lmax=4 --set grid_resolution=24 (repeatable)")
    model.add_argument("--init", type=Path, metavar="CHECKPOINT", help="fine-tune this checkpoint (fairchem's or "
                       "so2nn's): its architecture and weights, a fresh optimiser and schedule (see below)")
    model.add_argument("--freeze-backbone", action="store_true", help="with --init: train the heads only")
    model.add_argument("--backbone-lr-factor", type=positive_float, default=1.0,
                       help="the backbone's learning rate as a fraction of --lr (e.g. 0.1 with --init)")
    model.add_argument("--reinit-head", action="append", default=[], metavar="NAME",
                       help="with --init: start this head (energy, forces, stress) from fresh weights (repeatable)")
    model.add_argument("--refit", choices=["references", "none", "all"], default="references",
                       help="with --init: re-fit the element references and energy mean on --data, keeping the "
                       "checkpoint's scales (references), keep all the checkpoint's statistics (none), or re-fit "
                       "them all (all)")
    model.add_argument("--conservative-forces", action="store_true",
                       help="forces = -dE/dpos instead of the direct head")
    train = p.add_argument_group("training (defaults: the EquiformerV2 paper's recipe; the tiny default run's, "
                                 "scaled to a CPU and minutes, where they differ, also for --init of a tiny model)")
    defaults = TrainingConfig()
    tiny = TINY_TRAINING

    def default(name):
        return f"(default: {getattr(defaults, name)}; the tiny run: {tiny[name]})"

    train.add_argument("--max-steps", type=positive_int, help=f"optimisation steps {default('max_steps')}")
    train.add_argument("--batch-size", type=positive_int, help=f"systems per batch per process {default('batch_size')}")
    train.add_argument("--eval-batch-size", type=positive_int, default=defaults.eval_batch_size,
                       help="systems per validation batch")
    train.add_argument("--lr", type=positive_float, help=f"peak learning rate of AdamW {default('lr')}")
    train.add_argument("--weight-decay", type=non_negative_float, default=defaults.weight_decay,
                       help="AdamW weight decay")
    train.add_argument("--warmup-steps", type=non_negative_int, help=f"linear warm-up steps {default('warmup_steps')}")
    train.add_argument("--clip-grad-norm", type=positive_float, default=defaults.clip_grad_norm,
                       help="gradient norm clip")
    train.add_argument("--ema-decay", type=float, default=defaults.ema_decay,
                       help="decay of the weights' moving average")
    train.add_argument("--energy-coefficient", type=non_negative_float, default=defaults.energy_coefficient,
                       help="lambda_E")
    train.add_argument("--force-coefficient", type=non_negative_float, default=defaults.force_coefficient,
                       help="lambda_F")
    train.add_argument("--energy-per-atom", action="store_true", help="energy loss per atom, |E - E'| / N "
                       "(the OMat24 recipe; default: per system)")
    train.add_argument("--stress-loss", choices=["decomposed", "plain"], default=defaults.stress_loss,
                       help="with stress in the data and the model: isotropic + anisotropic stress MAE (the OMat24 "
                       "recipe), or a plain stress MAE (natural for conservative models)")
    for name, what in (("stress-coefficient", "plain stress MAE"),
                       ("stress-isotropic-coefficient", "isotropic stress MAE (tr/3)"),
                       ("stress-anisotropic-coefficient", "anisotropic (traceless) stress MAE")):
        train.add_argument(f"--{name}", type=non_negative_float, help=f"coefficient of the {what} (default: "
                           f"{DEFAULT_STRESS_COEFFICIENT}; setting it requires stress in the data and the model)")
    train.add_argument("--all-atoms", action="store_true", help="train and evaluate forces on fixed atoms too "
                       "(default: free atoms only, OC20's convention)")
    train.add_argument("--no-normalize", action="store_true", help="do not normalise energies and forces")
    train.add_argument("--element-references", action=argparse.BooleanOptionalAction, default=None,
                       help="fit per-element linear energy references on the training set (default: on for the tiny "
                       "run, off for presets, as the paper trained OC20)")
    train.add_argument("--eval-every", type=positive_int, help=f"steps between validations {default('eval_every')}")
    train.add_argument("--checkpoint-every", type=positive_int,
                       help=f"steps between checkpoints {default('checkpoint_every')}")
    train.add_argument("--log-every", type=positive_int, default=defaults.log_every,
                       help="steps between rows of train_log.csv")
    train.add_argument("--seed", type=int, default=defaults.seed, help="seed of the weights, data order and dropout")
    run = p.add_argument_group("run")
    run.add_argument("--out", type=Path, default=Path("runs/train_oc20"), help="output directory")
    run.add_argument("--device", help="cpu or cuda (default: cuda when a GPU is available, else cpu)")
    run.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                     help="mixed precision (fp16 uses loss scaling)")
    run.add_argument("--num-workers", type=non_negative_int, default=0, help="data-loader worker processes")
    run.add_argument("--compile", action="store_true", help="train through torch.compile(model, "
                     "dynamic=True) (the first step compiles; its time is printed)")
    add_threads_argument(run)
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt "
                     "(same command plus --resume; see below)")
    run.add_argument("--allow-data-change", action="store_true",
                     help="--resume on data whose files differ from the run's (moved or copied)")
    run.add_argument("--stop-after", type=positive_int,
                     help="stop (with a checkpoint) after this many steps of this process")
    run.add_argument("--evaluate", type=Path, metavar="CHECKPOINT", help="evaluate this checkpoint on --val-data "
                     "(default: the embedded validation split) and stop; no training")
    run.add_argument("--predict", type=Path, metavar="CHECKPOINT", help="write this checkpoint's predictions for "
                     "--val-data in OC20's S2EF submission format (see --predictions) and stop; resumable")
    run.add_argument("--predictions", type=Path, help="the .npz that --predict writes (default: "
                     "OUT/predictions.npz)")
    run.add_argument("--prediction-dtype", choices=["float16", "float32"], default="float16",
                     help="precision of the predicted energies and forces (OC20's submissions: float16)")
    run.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (needs tensorboard)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-plot", action="store_true", help="skip summary.png")
    return p


def parse_args(argv=None, p: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    p = build_parser() if p is None else p
    args = p.parse_args(argv)
    if args.tiny:
        args.preset = "tiny"
    if args.data is not None and (args.val_data is None) == (args.valid_fraction is None):
        p.error("--data needs --val-data or --valid-fraction (one of them)")
    if args.no_stress and (args.stress_key or args.virial_key):
        p.error("--no-stress reads no stress: give no --stress-key or --virial-key with it")
    if args.valid_fraction is not None and (args.data is None or args.evaluate or args.predict):
        p.error("--valid-fraction splits --data for training: give it with --data, without "
                "--evaluate/--predict")
    if args.init is not None and (args.preset is not None or args.conservative_forces):
        p.error("--init takes the checkpoint's architecture: no --preset, --tiny or --conservative-forces")
    if args.init is None and (args.freeze_backbone or args.reinit_head or args.refit != "references"):
        p.error("--freeze-backbone, --reinit-head and --refit go with --init")
    if args.evaluate is not None and args.predict is not None:
        p.error("--evaluate and --predict are separate runs: give one")
    with usage_errors(p):
        args.device = str(check_device(args.device))
        args.init_is_tiny = args.init is not None and checkpoint_is_tiny(args.init)
    return args


def config_changes(args) -> dict:
    """The --set entries, as config changes."""
    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        keys = {*EquiformerV2Config.__dataclass_fields__, *FLAT_STRESS_KEYS}  # the flat stress_* keys of older configs
        if not sep or key not in keys:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(keys)}")
        try:
            changes[key] = json.loads(value) if value not in ("None", "none") else None
        except json.JSONDecodeError:
            raise UsageError(f"--set {item!r}: {value!r} is not a JSON value (strings need quotes: "
                             f"--set {key}='\"{value}\"')") from None
    return changes


def model_config(args) -> EquiformerV2Config:
    name = args.preset or ("tiny" if args.data is None else "oc20-31M")
    config = TINY if name == "tiny" else preset(name)
    changes = config_changes(args)
    if args.conservative_forces:
        changes["direct_forces"] = False
    return config.replace(**changes)


#: The entries that make a model the tiny one (its size): a checkpoint with these fine-tunes with
#: the tiny run's recipe, as the same model trained from scratch would.
TINY_SIZE = ("lmax", "mmax", "num_layers", "sphere_channels", "attn_hidden_channels", "num_heads",
             "attn_alpha_channels", "attn_value_channels", "ffn_hidden_channels", "edge_channels",
             "num_distance_basis")


def checkpoint_is_tiny(path: Path) -> bool:
    """Whether the checkpoint at ``path`` holds a model of the tiny architecture (so2nn's only)."""
    try:
        state = load_checkpoint(path)
    except (ValueError, FileNotFoundError, OSError):
        return False  # Trainer.from_pretrained says what is wrong with it
    config = state.get("config") if state.get("format") == "so2nn" else None
    return isinstance(config, dict) and all(config.get(k) == getattr(TINY, k) for k in TINY_SIZE)


def uses_tiny_recipe(args) -> bool:
    """Whether the run's recipe defaults are the tiny run's: a run from scratch of the tiny model,
    and a fine-tuning run of a checkpoint of it (the same defaults, so that the two compare at
    equal flags)."""
    if args.init is not None:
        return args.init_is_tiny
    return (args.preset or ("tiny" if args.data is None else None)) == "tiny"


def training_config(args) -> TrainingConfig:
    values = dict(TINY_TRAINING) if uses_tiny_recipe(args) else {}
    flags = dict(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                 eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                 element_references=args.element_references)
    values.update({k: v for k, v in flags.items() if v is not None})
    return TrainingConfig(
        **values, eval_batch_size=args.eval_batch_size, weight_decay=args.weight_decay,
        clip_grad_norm=args.clip_grad_norm, ema_decay=args.ema_decay, energy_coefficient=args.energy_coefficient,
        force_coefficient=args.force_coefficient, train_on_free_atoms=not args.all_atoms,
        energy_per_atom=args.energy_per_atom, stress_loss=args.stress_loss, stress_coefficient=args.stress_coefficient,
        stress_isotropic_coefficient=args.stress_isotropic_coefficient,
        stress_anisotropic_coefficient=args.stress_anisotropic_coefficient,
        eval_on_free_atoms=not args.all_atoms, normalize_targets=not args.no_normalize, log_every=args.log_every,
        amp=args.amp, seed=args.seed, num_workers=args.num_workers, freeze_backbone=args.freeze_backbone,
        backbone_lr_factor=args.backbone_lr_factor, compile=args.compile,
    )


def embedded_paths(args):
    generate = make_bulk_dataset if args.embedded == "bulk" else make_dataset
    if args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise UsageError(f"--cache-dir {args.cache_dir} is a file, not a directory: give a directory for the "
                         f"embedded dataset")
    try:
        return generate(args.cache_dir, *args.emt_systems, progress=not args.no_progress)
    except OSError as error:  # not a directory, no permission, a full disk: where it is written
        raise UsageError(f"--cache-dir {args.cache_dir}: cannot write the embedded dataset there "
                         f"({error.strerror or error}{': ' + str(error.filename) if error.filename else ''})") from None


def open_data(flag: str, path, **options):
    """``open_dataset(path)``, its errors (no file, no records, an unknown format) said as the
    user's mistake in ``flag``."""
    try:
        dataset = open_dataset(path, **options)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as error:
        raise UsageError(f"{flag}: {error}") from None
    if len(dataset) == 0:
        raise UsageError(f"{flag} {path}: the dataset has no structures")
    return dataset


def data_options(args) -> dict:
    """The target keys and the format, for files read through ASE."""
    return dict(energy_key=args.energy_key, forces_key=args.forces_key, stress_key=args.stress_key,
                virial_key=args.virial_key, format=args.data_format, read_stress=not args.no_stress)


def datasets(args):
    if args.data is None:
        train_path, val_path = embedded_paths(args)
        return open_dataset(train_path), _subset(args, open_dataset(val_path))
    options = data_options(args)
    if args.valid_fraction is None:
        return (open_data("--data", args.data, **options),
                _subset(args, open_data("--val-data", args.val_data, **options)))
    train, val = split(args, open_data("--data", args.data, **options))
    return train, _subset(args, val)


def _subset(args, val):
    if args.val_subset is not None:
        val = torch.utils.data.Subset(val, range(min(args.val_subset, len(val))))
    return val


def split(args, data):
    """--valid-fraction: a new run draws the split; a resume takes the run's own from its checkpoint."""
    checkpoint = args.out / "checkpoint.pt"
    recorded = recorded_split(checkpoint) if args.resume and checkpoint.is_file() else None
    if recorded is None:
        return ValidationSplit.draw(len(data), args.valid_fraction, args.seed).apply(data)
    if (recorded.valid_fraction, recorded.seed) != (args.valid_fraction, args.seed):
        raise UsageError(f"--resume: the run held out --valid-fraction {recorded.valid_fraction} with --seed "
                         f"{recorded.seed}, not {args.valid_fraction} with {args.seed}: give the run's")
    try:
        return recorded.apply(data)
    except ValueError as error:
        raise UsageError(f"--resume: {error}") from None


def validation_summary(metrics: dict) -> str:
    """The summary line of a validation (training's last, or --evaluate's)."""
    line = (f"energy MAE {metrics['energy_mae']:.4f} eV vs {metrics['energy_mae_mean_baseline']:.4f} for predicting "
            f"the training mean; force MAE {metrics['forces_mae']:.4f} eV/A "
            f"vs {metrics['forces_mae_zero_baseline']:.4f} "
            f"for predicting zero; force cosine {metrics['forces_cos']:.3f}; EFwT {100 * metrics['efwt']:.1f}%")
    if "stress_mae" in metrics:
        line += (f"; stress MAE {1000 * metrics['stress_mae']:.2f} meV/A^3 (isotropic "
                 f"{1000 * metrics['stress_isotropic_mae']:.2f}, "
                 f"anisotropic {1000 * metrics['stress_anisotropic_mae']:.2f})"
                 f" vs {1000 * metrics['stress_mae_zero_baseline']:.2f} for predicting zero")
    return line


def where(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu, {describe_threads()}"


def describe_model(model) -> str:
    c = model.config
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    parameters = sum(p.numel() for p in model.parameters())
    if isinstance(c, EquiformerV2Config):
        return (f"EquiformerV2 lmax={c.lmax} mmax={c.mmax} layers={c.num_layers} channels={c.sphere_channels}, "
                f"{parameters:,} parameters, {dtype}")
    return f"{type(model).__name__}, {parameters:,} parameters, {dtype}"


def evaluate_or_predict(args) -> dict:
    """--evaluate / --predict: one checkpoint on the validation split, no training."""
    checkpoint = args.evaluate or args.predict
    if not checkpoint.is_file():
        raise UsageError(f"{'--evaluate' if args.evaluate else '--predict'}: no checkpoint at {checkpoint}")
    try:
        state = load_checkpoint(checkpoint)
        model = load_model(state)
    except ValueError as error:
        raise UsageError(f"{'--evaluate' if args.evaluate else '--predict'}: {error}") from None
    device = torch.device(args.device)
    val_path = args.val_data if args.val_data is not None else embedded_paths(args)[1]
    val = _subset(args, open_data("--val-data", val_path, **data_options(args),
                                  **({} if args.evaluate else {"with_targets": False})))
    print(f"so2nn {so2nn.__version__}: {describe_model(model)} from {checkpoint}", flush=True)
    print(f"device {where(device)}", flush=True)
    if args.evaluate:
        # the baseline "predict the training mean": the run's, recorded in so2nn's checkpoints;
        # else the model's own energy mean
        baseline = state.get("train_energy_mean")
        source = "the training run's" if baseline is not None else "the model's"
        baseline = float(model.target_statistics.energy_mean if baseline is None else baseline)
        print(f"data: {describe('validation', val)}; energy baseline {baseline:.4f} eV ({source} mean)", flush=True)
        metrics = evaluate_model(model, val, args.eval_batch_size, device, free_atoms_only=not args.all_atoms,
                                 energy_baseline=baseline, progress=not args.no_progress)
        print(f"evaluated {checkpoint}: {validation_summary(metrics)}")
        return metrics
    path = args.predictions if args.predictions is not None else args.out / "predictions.npz"
    print(f"data: {describe('prediction', val)}; predictions to {path}", flush=True)
    try:
        written = write_predictions(model, val, path, args.eval_batch_size, device, dtype=args.prediction_dtype,
                                    progress=not args.no_progress, stop_after=args.stop_after)
    except ValueError as error:
        if "partial predictions" not in str(error):
            raise
        raise UsageError(f"--predictions: {error}") from None
    if written is None:
        print(f"stopped after {args.stop_after} batches; continue with the same command (partial results in "
              f"{path.with_name(path.stem + '.partial.npz')})")
        return {"predictions": None}
    print(f"predictions of {len(val)} systems: {written}")
    return {"predictions": str(written)}


def describe(name: str, dataset) -> str:
    source = getattr(dataset, "path", None) or getattr(getattr(dataset, "dataset", None), "path", None)
    split = getattr(dataset, "split", None)
    part = f", {'held out' if name == 'validation' else 'the rest'} of {split.length} (seed {split.seed})" \
        if split is not None else ""
    return f"{name} {source or type(dataset).__name__} ({len(dataset)} structures{part})"


def main(argv=None) -> dict:
    """Run the command line ``argv``; a user's mistake exits with status 2 and one line (argparse's
    way), an interrupted training run with 128 + the signal's number after its checkpoint."""
    parser = build_parser()
    args = parse_args(argv, parser)
    # how this run was started, for the command that continues it
    args.command_line = sys.argv if argv is None else [os.path.relpath(__file__), *argv]
    # what a Ctrl-C outside the training loop (which stops itself after a step, with a checkpoint)
    # leaves behind, said by run() as it goes
    args.interrupted = "no checkpoint was saved; the same command starts the run again"
    with usage_errors(parser), exit_on_interrupt(lambda: args.interrupted):
        return run(args)


def run(args) -> dict:
    set_threads(args.threads)
    if args.evaluate is not None:
        args.interrupted = "the same command evaluates again"
    if args.predict is not None:
        args.interrupted = ("the predictions saved so far (every few batches) are kept; the same command "
                            "continues from them")
    if args.evaluate is not None or args.predict is not None:
        return evaluate_or_predict(args)
    train, val = datasets(args)
    common = dict(device=args.device, progress=not args.no_progress, tensorboard=args.tensorboard)
    if args.resume:
        checkpoint = args.out / "checkpoint.pt"
        if not checkpoint.is_file():
            raise UsageError(f"--resume: no checkpoint at {checkpoint}")
        try:
            # a fine-tuning run's architecture is its source checkpoint's: not compared with a preset
            trainer = Trainer.resume(checkpoint, train, val, args.out, **common, config=training_config(args),
                                     model_config=None if args.init else model_config(args),
                                     allow_data_change=args.allow_data_change)
        except ValueError as error:
            raise UsageError(f"--resume: {error}") from None
    elif args.init is not None:
        try:
            trainer = Trainer.from_pretrained(args.init, train, val, training_config(args), args.out, **common,
                                              refit=args.refit, reinit_heads=args.reinit_head, **config_changes(args))
        except (ValueError, FileNotFoundError) as error:
            raise UsageError(f"--init: {error}") from None
    else:
        try:
            trainer = Trainer(model_config(args), train, val, training_config(args), args.out, **common)
        except ValueError as error:  # the recipe against the data (a batch larger than the data, ...)
            raise UsageError(str(error)) from None
    main_process = trainer.dist.is_main
    if main_process:  # what this run runs on, before it runs
        cfg = trainer.config
        print(f"so2nn {so2nn.__version__}: {describe_model(trainer.model)}", flush=True)
        print(f"device {where(trainer.device)}, {trainer.dist.world_size} process(es), AMP {cfg.amp}", flush=True)
        print(f"data: {describe('training', train)}; {describe('validation', val)}", flush=True)
        if trainer.finetune is not None:
            source, frozen = trainer.finetune["source"], trainer.finetune["frozen"]
            reinitialised = source["reinitialised_heads"]
            print(f"fine-tuning {source['path']} (sha256 {source['sha256'][:12]}, {source['format']}): "
                  f"{'backbone frozen' if frozen else 'backbone lr x' + str(trainer.finetune['backbone_lr_factor'])}"
                  f"{', new heads ' + ', '.join(source['added_heads']) if source['added_heads'] else ''}"
                  f"{', re-initialised ' + ', '.join(reinitialised) if reinitialised else ''}",
                  flush=True)
            gradient = not getattr(trainer.model.config, "direct_forces", True)
            print(referencing_table(trainer.finetune["statistics"], gradient_forces=gradient), flush=True)
        recipe = "the tiny run's" if uses_tiny_recipe(args) else "the EquiformerV2 paper's"
        print(f"{'resuming at step ' + str(trainer.step) if args.resume else 'starting'}: {cfg.max_steps} steps of "
              f"batch {cfg.batch_size}, peak lr {cfg.lr}, warm-up {cfg.warmup_steps} steps ({recipe} recipe where "
              f"no flag sets it); output in {args.out}", flush=True)
        if 2 * cfg.warmup_steps > cfg.max_steps:
            print(f"note: the warm-up ({cfg.warmup_steps} steps) is more than half of the run's {cfg.max_steps} "
                  f"steps: the learning rate stays below its peak for most of the run (--warmup-steps)", flush=True)
    # fit() stops itself on Ctrl-C; one that reaches here came in its final validation, after the
    # last step's checkpoint
    args.interrupted = (f"the checkpoint of the last step is saved ({args.out / 'checkpoint.pt'}); the same "
                        f"command plus --resume finishes the run")
    metrics = trainer.fit(stop_after=args.stop_after)
    args.interrupted = f"the trained model is saved ({args.out / 'model.pt'})"
    if main_process:
        if trainer.stop_signal and trainer.fit_steps == 0 and not args.resume:
            # stopped in the validation before the first step: no checkpoint to continue from
            print(f"interrupted ({signal.Signals(trainer.stop_signal).name}) before the first step: no "
                  f"checkpoint was saved; the same command starts the run again", flush=True)
        elif trainer.step < trainer.config.max_steps:
            why = f"interrupted ({signal.Signals(trainer.stop_signal).name})" if trainer.stop_signal else "stopped"
            line = ["python", *args.command_line]
            command = " ".join(shlex.quote(a) for a in line + ([] if "--resume" in line else ["--resume"]))
            print(f"{why} at step {trainer.step} of {trainer.config.max_steps}: {trainer.summary()}; "
                  f"continue with the same command plus --resume (checkpoint: {args.out / 'checkpoint.pt'}):\n"
                  f"  {command}", flush=True)
        else:
            print(f"trained {trainer.summary()}")
            print(f"validation (EMA weights): {validation_summary(metrics)}")
            if not args.no_plot:
                print(f"learning curves and parity plots: {trainer.plot()}")
            print(f"model: {args.out / 'model.pt'}")
    trainer.close()
    if trainer.stop_signal:  # as shells report a command a signal stopped: 128 + its number
        raise SystemExit(128 + trainer.stop_signal)
    return metrics


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
