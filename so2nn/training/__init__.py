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
"""

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
from ._metrics import S2EFMetrics, decompose_stress
from ._predict import evaluate_model, write_predictions
from ._provenance import data_fingerprint, fingerprint_differences
from ._schedule import warmup_cosine
from ._trainer import DEFAULT_STRESS_COEFFICIENT, RESUMABLE, Trainer, TrainingConfig

__all__ = [
    "DEFAULT_STRESS_COEFFICIENT",
    "FAR_SCALE",
    "FAR_SCALE_GRADIENT",
    "FINE_TUNING_SETTINGS",
    "REFIT_CHOICES",
    "RESUMABLE",
    "DistributedContext",
    "ExponentialMovingAverage",
    "S2EFMetrics",
    "Trainer",
    "TrainingConfig",
    "data_fingerprint",
    "decompose_stress",
    "evaluate_model",
    "fingerprint_differences",
    "pretrained_model",
    "referenced_statistics",
    "referencing_notes",
    "referencing_table",
    "warmup_cosine",
    "write_predictions",
]
