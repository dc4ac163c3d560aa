"""Training an so2nn model on S2EF data (energies and forces), as the EquiformerV2 paper trained it."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch_geometric.data import Batch

from ..data import target_statistics
from ..models import (
    AtomisticModel,
    ModelConfig,
    TargetStatistics,
    atomic_save,
    build_model,
    compile_model,
    load_checkpoint,
    model_checkpoint,
    model_class,
    upgrade_checkpoint,
)
from ._config import RunStatistics, TrainingConfig
from ._distributed import DistributedContext
from ._ema import ExponentialMovingAverage
from ._finetune import parameter_groups, pretrained_model, referenced_statistics
from ._logging import TRAIN_LOG, VAL_LOG, RunLog, read_log
from ._loss import s2ef_loss
from ._metrics import S2EFMetrics
from ._plots import plot_summary, predictions
from ._predict import EvaluationStopped, accumulate_metrics
from ._provenance import check_resume, data_fingerprint
from ._schedule import warmup_cosine

__all__ = ["Trainer"]

CHECKPOINT, MODEL = "checkpoint.pt", "model.pt"


def _collate(items) -> Batch:
    return Batch.from_data_list(items)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains an so2nn model (any :class:`~so2nn.models.AtomisticModel`) on S2EF data and never
    loses work.

    * AdamW, linear warm-up + cosine learning rate, gradient clipping, an EMA of the weights
      (evaluated and exported), energy/force normalisation from training statistics;
    * mixed precision (``amp="bf16"``, or ``"fp16"`` with loss scaling);
    * DistributedDataParallel when started by ``torchrun`` (distributed sampler; rank 0 logs
      and writes checkpoints);
    * checkpoints (model, EMA, optimiser, scheduler, step, data position, every process's RNG
      state, configs) written atomically; :meth:`resume` continues exactly where it stopped, and
      SIGINT/SIGTERM stop after the current step with a checkpoint.

    Outputs in ``out_dir``: ``checkpoint.pt`` (full training state), ``model.pt`` (type, config,
    raw and EMA weights, for :func:`~so2nn.models.load_model`), ``train_log.csv``,
    ``val_log.csv``, ``metrics.json`` and, from :meth:`plot`, ``summary.png``.

    Args:
        model: the model to train, or the config of a registered model type to build one from
            (seeded with ``config.seed``). With ``config.normalize_targets`` the training set's
            statistics are given to it (:meth:`~so2nn.models.AtomisticModel.with_target_statistics`);
            otherwise it keeps its own.
        train_set, val_set: datasets of PyG ``Data`` with ``pos``, ``atomic_numbers``, ``cell``,
            ``energy [1]``, ``forces [N, 3]`` and optionally ``fixed``, ``tags``, ``pbc``.
        config: :class:`TrainingConfig`.
        out_dir: where checkpoints and logs go.
        device: ``"cpu"`` or ``"cuda"`` (under torchrun, each process's own GPU).
        progress: show a progress bar (main process only).
        tensorboard: log to TensorBoard too, under ``out_dir/tensorboard``.
        statistics: the run's :class:`RunStatistics`, when they are known (:meth:`resume` and
            :meth:`from_pretrained` give them, with a model that has its target statistics
            already). By default they are computed from ``train_set``, and the model gets the
            training set's target statistics as ``config.normalize_targets`` and
            ``config.element_references`` say.
        finetune: the record of where a fine-tuning run started (:meth:`from_pretrained`
            builds it), written into every checkpoint and ``model.pt`` of the run.

    A complete run (data, training, a resume, the exported model) is the training tutorial
    of the docs, ``docs/tutorials/train_oc20.md``, whose code the test suite runs.
    """

    #: Steps and wall-clock seconds of the last :meth:`fit` of this process.
    fit_steps: int = 0
    fit_seconds: float = 0.0
    #: Wall-clock seconds of training of the whole run, over every process that ran it
    #: (recorded in each checkpoint, so a resumed run carries its history).
    run_seconds: float = 0.0
    _clock: tuple[float, float] | None = None  # (fit start, run_seconds then) while fit runs
    #: The signal (SIGINT, SIGTERM) that stopped the last :meth:`fit` early, or None.
    stop_signal: int | None = None

    def __init__(self, model, train_set, val_set, config: TrainingConfig, out_dir,
                 device: str = "cpu", progress: bool = True, tensorboard: bool = False, *,
                 statistics: RunStatistics | None = None, finetune: dict | None = None) -> None:
        self.config = config
        self.train_set, self.val_set = train_set, val_set
        self.out_dir = Path(out_dir)
        self.dist = DistributedContext.from_env(device)
        self.device = self.dist.device(device)
        self.progress = progress and self.dist.is_main
        if len(train_set) < config.batch_size * self.dist.world_size:
            raise ValueError(
                f"the training set has {len(train_set)} items, fewer than one batch per process "
                f"({config.batch_size} x {self.dist.world_size})"
            )
        if not isinstance(model, torch.nn.Module):
            torch.manual_seed(config.seed)
            model = build_model(model)
        if not isinstance(model, AtomisticModel):
            raise TypeError(f"{type(model).__name__} does not offer the so2nn model protocol (AtomisticModel)")
        if "forces" not in model.output_names:  # the loss and the metrics are those of energies and forces
            raise ValueError(f"the trainer fits energies and forces, and the model's outputs "
                             f"{tuple(model.output_names)} have no 'forces' (an energy-only model)")
        #: Where a fine-tuning run started (:meth:`from_pretrained`), recorded in its checkpoints.
        self.finetune = finetune
        if statistics is None:
            statistics, model = self._training_set_statistics(model, train_set, config)
        #: The baseline "predict the training mean" of the validation (raw training energies).
        self.train_energy_mean = statistics.train_energy_mean
        #: The stress loss's scale (None: the training data has no stress).
        self.stress_std = statistics.stress_std
        #: Whether the loss and the validation include stress (the data has it, the model outputs it).
        self.use_stress = self._check_stress(model)
        self.model = model.to(self.device)
        self.ema = ExponentialMovingAverage(self.model, config.ema_decay)
        self.ddp_model = self.model
        if self.dist.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if config.compile:  # the training forward only: checkpoints and the EMA read the plain self.model
            self.ddp_model = compile_model(self.ddp_model, fullgraph=False, backend=config.compile_backend)
        self._compiled_step_done = False
        groups = parameter_groups(self.model, config.freeze_backbone, config.backbone_lr_factor, config.lr)
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: warmup_cosine(step, config.max_steps, config.warmup_steps, config.warmup_factor,
                                       config.min_lr_factor),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._stop_requested = False
        self.log = RunLog(self.out_dir, self.dist.is_main, tensorboard)
        # Each process draws dropout masks from its own stream; the data order comes from the
        # sampler's (seed, epoch), never from the global generator.
        torch.manual_seed(config.seed + self.dist.rank)

    @staticmethod
    def _training_set_statistics(model, train_set,
                                 config: TrainingConfig) -> tuple[RunStatistics, AtomisticModel]:
        """The run's statistics from the training set, and the model with its target statistics
        as ``config`` asks (the training set's, or its own)."""
        elements = model.config.max_num_elements if config.element_references else None
        stats = target_statistics(train_set, free_atoms_only=False, max_items=10_000, seed=config.seed,
                                  element_references=elements)
        own = model.target_statistics
        if config.normalize_targets or config.element_references:
            model = model.with_target_statistics(TargetStatistics(
                *((stats["energy_mean"], stats["energy_std"], stats["forces_rms"]) if config.normalize_targets
                  else (own.energy_mean, own.energy_std, own.forces_std)),
                tuple(stats["element_references"]) if config.element_references else own.element_references,
            ))
        # the baseline "predict the training mean" uses the raw energies
        statistics = RunStatistics(stats.get("raw_energy_mean", stats["energy_mean"]), stats.get("stress_std"))
        return statistics, model

    def _check_stress(self, model) -> bool:
        data, outputs = self.stress_std is not None, "stress" in model.output_names
        if self.config.stress_coefficient_set and not (data and outputs):
            missing = " and ".join(what for what, has in (("the training data", data), ("the model", outputs))
                                   if not has)
            raise ValueError(f"a stress coefficient is set but {missing} has no stress"
                             + (" (the model's outputs: " + ", ".join(model.output_names) + ")" if not outputs
                                else ""))
        if data and not outputs and self.dist.is_main:
            warnings.warn(f"the training data has stress but the model does not output it (its outputs: "
                          f"{', '.join(model.output_names)}): training on energy and forces only", stacklevel=3)
        if data and self.stress_std <= 0.0:
            raise ValueError(f"the training stress has standard deviation {self.stress_std}: cannot scale "
                             f"the stress loss by it")
        return data and outputs

    # -- construction from a checkpoint -------------------------------------------------------

    @classmethod
    def resume(cls, checkpoint, train_set, val_set, out_dir, device: str = "cpu", progress: bool = True,
               tensorboard: bool = False, config: TrainingConfig | None = None,
               model_config: ModelConfig | None = None, allow_data_change: bool = False,
               **config_changes) -> Trainer:
        """Continue a run from its ``checkpoint.pt`` (path or dict): the same run, or an error.

        The checkpoint records the run's data (:func:`~so2nn.training.data_fingerprint` of the
        training and validation sets: files, sizes, modification times, record counts), its
        :class:`TrainingConfig` and its model config. A resume on other data, or with a
        setting that changes what a step computes, raises a ValueError naming each difference.

        Args:
            config: the training config this resume asks for (e.g. rebuilt from a command
                line), compared with the run's; by default the run's own.
            model_config: the model config asked for, compared with the run's (entries the
                Trainer derives from the data, such as the normalisation, are not compared).
            allow_data_change: accept data whose fingerprint differs (the same data moved or
                copied elsewhere, say); the difference is then a warning.
            config_changes: changes to the run's config; only the :data:`RESUMABLE` settings
                (``max_steps``, ``eval_every``, ``checkpoint_every``, ``log_every``,
                ``eval_batch_size``, ``num_workers``, ``compile``, ``compile_backend``) may differ
                from the run's. To change
                anything else, start a new run (another ``out_dir``).
        """
        state = load_checkpoint(checkpoint)
        if state.get("format") != "so2nn" or "optimizer" not in state:
            raise ValueError("not a so2nn training checkpoint (no optimiser state): cannot resume from it")
        state = upgrade_checkpoint(state)
        recorded = TrainingConfig(**state["training_config"])
        config = dataclasses.replace(config if config is not None else recorded, **config_changes)
        where = checkpoint if not isinstance(checkpoint, dict) else "the checkpoint"
        run_model = check_resume(state, config, model_config, train_set, val_set, allow_data_change, where)
        model = model_class(state["model_type"]).from_config(run_model)
        trainer = cls(model, train_set, val_set, config, out_dir, device, progress, tensorboard,
                      statistics=RunStatistics(state["train_energy_mean"], state.get("stress_std")),
                      finetune=state.get("finetune"))
        trainer._load_state(state)
        return trainer

    @classmethod
    def from_pretrained(cls, checkpoint, train_set, val_set, config: TrainingConfig, out_dir, device: str = "cpu",
                        progress: bool = True, tensorboard: bool = False, *, use_ema: bool = True,
                        trust: bool = False, refit: str = "references", reinit_heads=(),
                        **config_changes) -> Trainer:
        """A new run that fine-tunes a checkpoint's model (so2nn's or an official fairchem one).

        Unlike :meth:`resume`, only the weights come from the checkpoint (its EMA weights when
        present and ``use_ema``): the optimiser, schedule and step count start fresh, with
        ``config`` (whose ``freeze_backbone`` trains the heads only, and ``backbone_lr_factor``
        gives the backbone a lower learning rate). The architecture is the checkpoint's;
        ``config_changes`` and ``reinit_heads`` are those of
        :func:`~so2nn.training.pretrained_model` (dropout, drop-path, cutoff, neighbours, graph
        mode and grid resolution may change; a head may be added, e.g.
        ``stress_head="equivariant"``, or re-initialised; anything else raises).

        The energy referencing is explicit (``refit``, see
        :func:`~so2nn.training.referenced_statistics`): by default the element references and
        the energy mean are re-fitted on ``train_set`` and the checkpoint's scales kept;
        ``"none"`` keeps all the checkpoint's statistics, ``"all"`` re-fits them all. The
        config's ``normalize_targets`` and ``element_references`` do not apply. The run's
        checkpoints and ``model.pt`` record in ``"finetune"`` the source (path, SHA-256),
        what was frozen, changed and re-fitted, and the statistics
        (:func:`~so2nn.training.referencing_table` prints them); ``model.pt`` loads with
        ``from_checkpoint`` like any other, and :meth:`resume` continues the run exactly.
        """
        model, provenance = pretrained_model(checkpoint, use_ema=use_ema, trust=trust, reinit_heads=reinit_heads,
                                             seed=config.seed, **config_changes)
        data = target_statistics(train_set, free_atoms_only=False, max_items=10_000, seed=config.seed,
                                 element_references=model.config.max_num_elements)
        used, statistics = referenced_statistics(model.target_statistics, data, refit)
        if refit != "none":
            model = model.with_target_statistics(used)
        record = {"source": provenance, "frozen": ["backbone"] if config.freeze_backbone else [],
                  "backbone_lr_factor": config.backbone_lr_factor, "statistics": statistics}
        return cls(model, train_set, val_set, config, out_dir, device, progress, tensorboard,
                   statistics=RunStatistics(statistics["raw_energy_mean"], statistics.get("stress_std")),
                   finetune=record)

    def _load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state(state["ema_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.run_seconds = float(state.get("run_seconds", 0.0))
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            raise ValueError(f"the checkpoint was written by {len(rng)} processes, this run has {self.dist.world_size}")
        _set_rng_state(rng[self.dist.rank])
        self.log.truncate(self.step)  # drop log rows written after the checkpoint (a run killed mid-interval)

    # -- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` (all processes' RNG states are gathered; rank 0 writes)."""
        rng = self.dist.gather_objects(_rng_state())
        if self.dist.is_main:
            state = model_checkpoint(
                self.model,
                self.ema.module.state_dict(),
                ema_state=self.ema.state(),
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                step=self.step,
                epoch=self.epoch,
                batch_in_epoch=self.batch_in_epoch,
                rng=rng,
                training_config=dataclasses.asdict(self.config),
                train_energy_mean=self.train_energy_mean,
                stress_std=self.stress_std,
                data={"train": data_fingerprint(self.train_set), "val": data_fingerprint(self.val_set)},
                run_seconds=self.run_seconds if self._clock is None else
                self._clock[1] + time.perf_counter() - self._clock[0],
                **self._finetune_record(),
            )
            atomic_save(state, self.out_dir / CHECKPOINT)
        self.dist.barrier()

    def _finetune_record(self) -> dict:
        return {} if self.finetune is None else {"finetune": self.finetune}

    def save_model(self) -> Path:
        """Write ``model.pt``: config, raw and EMA weights (no optimiser state)."""
        path = self.out_dir / MODEL
        if self.dist.is_main:
            # the training mean rides along: evaluating the exported model reports the same baseline
            atomic_save(model_checkpoint(self.model, self.ema.module.state_dict(),
                                         train_energy_mean=self.train_energy_mean, **self._finetune_record()), path)
        return path

    # -- the loop -------------------------------------------------------------------------------

    def _batches(self):
        """This epoch's batches for this process, from the current position on."""
        sampler = DistributedSampler(self.train_set, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                     shuffle=True, seed=self.config.seed, drop_last=True)
        sampler.set_epoch(self.epoch)
        indices = list(sampler)
        size = self.config.batch_size
        chunks = [indices[i:i + size] for i in range(0, len(indices) - size + 1, size)]
        return DataLoader(self.train_set, batch_sampler=chunks[self.batch_in_epoch:], collate_fn=_collate,
                          num_workers=self.config.num_workers, generator=torch.Generator().manual_seed(0))

    def _autocast(self):
        if self.config.amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _loss(self, out: dict, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted loss and its terms (:func:`~so2nn.training.s2ef_loss`)."""
        return s2ef_loss(out, batch, self.config, self.model.target_statistics,
                         self.stress_std if self.use_stress else None)

    def train_step(self, batch: Batch) -> dict[str, float]:
        start = time.perf_counter()
        self.ddp_model.train()
        batch = batch.to(self.device)
        with self._autocast():
            out = self.ddp_model(batch)
        loss, terms = self._loss(out, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.step}: lower the learning rate "
                                     "or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():
            # fp16: a step whose gradients overflowed is skipped by the scaler; the schedule still
            # follows the iterations (as the reference's trainer does), which torch warns about
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        self.ema.update(self.model)
        if self.config.compile and not self._compiled_step_done:
            self._compiled_step_done = True
            if self.dist.is_main:
                loss.item()  # the step has run
                seconds = time.perf_counter() - start
                print(f"so2nn: compiled the model for training: first step {seconds:.1f} s",
                      file=sys.stderr, flush=True)
        return {"loss": loss.item(), **{name: term.item() for name, term in terms.items()},
                "grad_norm": float(grad_norm), "lr": self.optimizer.param_groups[0]["lr"],
                "atoms": int(batch.pos.shape[0])}

    def fit(self, stop_after: int | None = None) -> dict[str, float]:
        """Train until ``max_steps`` (or ``stop_after`` more steps, for preemptible jobs), with a
        checkpoint every ``checkpoint_every`` steps and at the end. Returns the last validation
        metrics (of the EMA weights)."""
        cfg = self.config
        last_step = cfg.max_steps if stop_after is None else min(cfg.max_steps, self.step + stop_after)
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        metrics: dict[str, float] = {}
        first_step, self._clock = self.step, (time.perf_counter(), self.run_seconds)
        if self.step == 0:
            metrics = self._validate(metrics)  # the starting point of the learning curve
        try:
            tick, atoms = time.perf_counter(), 0
            while self.step < last_step and not self._stop_requested:
                for batch in self._batches():
                    stats = self.train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    atoms += stats["atoms"]
                    if self.step % cfg.log_every == 0 or self.step == last_step:
                        elapsed = time.perf_counter() - tick
                        stats["atoms_per_s"] = atoms * self.dist.world_size / max(elapsed, 1e-9)
                        stats["steps_per_s"] = cfg.log_every / max(elapsed, 1e-9)
                        tick, atoms = time.perf_counter(), 0
                        self.log.write(TRAIN_LOG, {"step": self.step, "epoch": self.epoch, **stats})
                        if bar is not None:
                            bar.set_postfix(loss=f"{stats['loss']:.3f}", atoms_s=f"{stats['atoms_per_s']:.0f}")
                    if bar is not None:
                        bar.update(1)
                    if self.step % cfg.eval_every == 0:
                        metrics = self._validate(metrics)
                    stop = self._agree_to_stop()
                    if self.step % cfg.checkpoint_every == 0 or stop or self.step >= last_step:
                        self.save_checkpoint()
                    if stop or self.step >= last_step:
                        break
                else:
                    self.epoch += 1
                    self.batch_in_epoch = 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
        if self.step >= cfg.max_steps:
            if self.step % cfg.eval_every != 0:
                metrics = self.evaluate()
            self.save_model()
            if self.dist.is_main:
                (self.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        started, before = self._clock
        self.fit_steps, self.fit_seconds = self.step - first_step, time.perf_counter() - started
        self.run_seconds, self._clock = before + self.fit_seconds, None
        return metrics

    def summary(self) -> str:
        """What the last :meth:`fit` of this process did, and the run in total, in one line.

        After a resume the two differ: e.g. ``110 steps in 14 s in this process; the run: step
        160 of 160, 20 s of training in total``.
        """
        return (f"{self.fit_steps} steps in {self.fit_seconds:.0f} s in this process; the run: step {self.step} "
                f"of {self.config.max_steps}, {self.run_seconds:.0f} s of training in total")

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True
        self.stop_signal = signum

    def _agree_to_stop(self) -> bool:
        if not self.dist.distributed:
            return self._stop_requested
        flag = self.dist.sum(torch.tensor([float(self._stop_requested)]))
        self._stop_requested = bool(flag.item() > 0)
        return self._stop_requested

    def _validate(self, metrics: dict[str, float]) -> dict[str, float]:
        """The validation inside :meth:`fit`; a Ctrl-C or SIGTERM stops it between two batches (the
        step's checkpoint is then saved with no validation row for it), or, in a distributed run,
        where every process must finish it, after it."""
        try:
            return self.evaluate(stop=None if self.dist.distributed else lambda: self._stop_requested)
        except EvaluationStopped:
            return metrics

    @torch.no_grad()
    def evaluate(self, dataset=None, model=None, *, stop=None) -> dict[str, float]:
        """OC20's S2EF metrics of ``model`` (default: the EMA weights) on ``dataset`` (default:
        the validation set), sharded over processes; logged to ``val_log.csv``. With stress in
        the data and the model's outputs, the stress MAEs too (:class:`S2EFMetrics`). ``stop``:
        asked after every batch, True ends the validation early (``EvaluationStopped``)."""
        dataset = self.val_set if dataset is None else dataset
        model = self.ema.module if model is None else model
        model.eval()
        metrics = S2EFMetrics(energy_baseline=self.train_energy_mean)
        shard = list(range(self.dist.rank, len(dataset), self.dist.world_size))
        accumulate_metrics(model, dataset, shard, self.config.eval_batch_size, self.device, metrics,
                           self.config.eval_on_free_atoms, self._autocast, progress=self.progress, stop=stop)
        result = metrics.compute(reduce=self.dist.sum)
        self.log.write(VAL_LOG, {"step": self.step, **result})
        return result

    def predictions(self, dataset=None) -> dict[str, torch.Tensor]:
        """EMA-model predictions and targets on ``dataset`` (default: validation), for plots
        (:func:`~so2nn.training.predictions`)."""
        dataset = self.val_set if dataset is None else dataset
        return predictions(self.ema.module, dataset, self.config.eval_batch_size, self.device)

    def plot(self, path=None) -> Path:
        """Learning curves and energy/force parity plots of the validation set, as a PNG
        (:func:`~so2nn.training.plot_summary`; default ``out_dir/summary.png``)."""
        path = self.out_dir / "summary.png" if path is None else Path(path)
        train, val = read_log(self.out_dir / TRAIN_LOG), read_log(self.out_dir / VAL_LOG)
        return plot_summary(train, val, self.predictions(), path)

    def close(self) -> None:
        self.log.close()
        self.dist.close()

