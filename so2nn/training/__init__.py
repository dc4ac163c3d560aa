"""Training so2nn models on S2EF energies and forces: the loop behind ``examples/train_oc20.py``.

:class:`Trainer` trains any model that offers :class:`~so2nn.models.AtomisticModel` with the
EquiformerV2 paper's recipe (energy MAE + per-atom force L2 loss,
AdamW, warm-up + cosine schedule, gradient clipping, EMA, target normalisation), on one CPU,
one GPU or many under ``torchrun``, with atomic checkpoints that resume exactly; a checkpoint
records the run's data (:func:`data_fingerprint`), model and recipe, and a resume that would
change them is refused.
"""

from ._distributed import DistributedContext
from ._ema import ExponentialMovingAverage
from ._metrics import S2EFMetrics
from ._provenance import data_fingerprint, fingerprint_differences
from ._schedule import warmup_cosine
from ._trainer import RESUMABLE, Trainer, TrainingConfig

__all__ = [
    "RESUMABLE",
    "DistributedContext",
    "ExponentialMovingAverage",
    "S2EFMetrics",
    "Trainer",
    "TrainingConfig",
    "data_fingerprint",
    "fingerprint_differences",
    "warmup_cosine",
]
