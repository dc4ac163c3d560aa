"""Training so2nn models on S2EF energies and forces: the loop behind ``examples/train_oc20.py``.

:class:`Trainer` trains any model that offers :class:`~so2nn.models.AtomisticModel` with the
EquiformerV2 paper's recipe (energy MAE + per-atom force L2 loss,
AdamW, warm-up + cosine schedule, gradient clipping, EMA, target normalisation), on one CPU,
one GPU or many under ``torchrun``, with atomic checkpoints that resume exactly; a checkpoint
records the run's data (:func:`data_fingerprint`), model and recipe, and a resume that would
change them is refused. :meth:`Trainer.from_pretrained` fine-tunes a checkpoint's model
(so2nn's or fairchem's) with explicit energy referencing and records where it started.
:func:`evaluate_model` and :func:`write_predictions` evaluate any model on a dataset and write
its predictions in OC20's S2EF submission format (resumable).

The rooms: the loop (:class:`Trainer`) and its settings (:class:`TrainingConfig`,
:class:`RunStatistics`); the loss, one function per term (:func:`s2ef_loss`,
:func:`energy_loss`, :func:`force_loss`, :func:`stress_loss`, :func:`decomposed_stress_loss`);
the logs (:class:`RunLog`) and plots (:func:`predictions`, :func:`plot_summary`); provenance
and the checks of a resume (:func:`data_fingerprint`, :func:`check_resume`); fine-tuning;
evaluation and predictions, which share one batching loop with the Trainer's validation.
"""

from ._config import DEFAULT_STRESS_COEFFICIENT, RESUMABLE, RunStatistics, TrainingConfig
from ._distributed import DistributedContext
from ._ema import ExponentialMovingAverage
from ._finetune import (
    FAR_SCALE,
    FAR_SCALE_GRADIENT,
    FINE_TUNING_SETTINGS,
    REFIT_CHOICES,
    pretrained_model,
    referenced_statistics,
    referencing_notes,
    referencing_table,
)
from ._logging import RunLog
from ._loss import decomposed_stress_loss, energy_loss, force_loss, s2ef_loss, stress_loss
from ._metrics import S2EFMetrics, decompose_stress
from ._plots import plot_summary, predictions
from ._predict import evaluate_model, write_predictions
from ._provenance import check_resume, data_fingerprint, fingerprint_differences, recorded_split
from ._schedule import warmup_cosine
from ._trainer import Trainer

__all__ = [
    "DEFAULT_STRESS_COEFFICIENT",
    "FAR_SCALE",
    "FAR_SCALE_GRADIENT",
    "FINE_TUNING_SETTINGS",
    "REFIT_CHOICES",
    "RESUMABLE",
    "DistributedContext",
    "ExponentialMovingAverage",
    "RunLog",
    "RunStatistics",
    "S2EFMetrics",
    "Trainer",
    "TrainingConfig",
    "check_resume",
    "data_fingerprint",
    "decompose_stress",
    "decomposed_stress_loss",
    "energy_loss",
    "evaluate_model",
    "fingerprint_differences",
    "force_loss",
    "plot_summary",
    "predictions",
    "pretrained_model",
    "recorded_split",
    "referenced_statistics",
    "referencing_notes",
    "referencing_table",
    "s2ef_loss",
    "stress_loss",
    "warmup_cosine",
    "write_predictions",
]
