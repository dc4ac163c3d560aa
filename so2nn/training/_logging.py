"""A training run's logs: ``train_log.csv`` and ``val_log.csv`` in its output directory, and
optionally TensorBoard scalars beside them."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["TRAIN_LOG", "VAL_LOG", "RunLog", "read_log"]

TRAIN_LOG, VAL_LOG = "train_log.csv", "val_log.csv"


class RunLog:
    """Rows of a run's CSV logs (one column per key of the first row), written by the main
    process only; with ``tensorboard``, every value but ``step`` and ``epoch`` also as a scalar
    ``train/<key>`` or ``val/<key>`` under ``out_dir/tensorboard``.

    Example:
        >>> import tempfile
        >>> log = RunLog(tempfile.mkdtemp())
        >>> log.write(TRAIN_LOG, {"step": 1, "loss": 2.0}); log.write(TRAIN_LOG, {"step": 2, "loss": 1.5})
        >>> log.truncate(1); read_log(log.out_dir / TRAIN_LOG)
        {'step': [1.0], 'loss': [2.0]}
    """

    def __init__(self, out_dir, is_main: bool = True, tensorboard: bool = False) -> None:
        self.out_dir, self.is_main = Path(out_dir), is_main
        self._writer = None
        if tensorboard and is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ValueError(
                    "tensorboard logging needs the tensorboard package: pip install tensorboard"
                ) from error
            self._writer = SummaryWriter(self.out_dir / "tensorboard")

    def write(self, name: str, row: dict) -> None:
        """Append ``row`` to the log ``name`` (:data:`TRAIN_LOG` or :data:`VAL_LOG`)."""
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / name
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._writer is not None:
            prefix = "train" if name == TRAIN_LOG else "val"
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self._writer.add_scalar(f"{prefix}/{key}", value, row["step"])

    def truncate(self, step: int) -> None:
        """Drop the rows after ``step`` (those a run killed after its last checkpoint wrote)."""
        if not self.is_main:
            return
        for name in (TRAIN_LOG, VAL_LOG):
            path = self.out_dir / name
            if not path.exists():
                continue
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            with open(path, "w", newline="") as f:
                if rows:
                    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(r for r in rows if int(r["step"]) <= step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_log(path: Path) -> dict[str, list[float]]:
    """A CSV log as columns of floats (empty when the file is missing or has no rows)."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in rows[0]} if rows else {}
