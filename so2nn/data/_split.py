"""A validation split drawn from the training data, when there is no validation file."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset, Subset

__all__ = ["ValidationSplit", "split_dataset"]


@dataclass(frozen=True)
class ValidationSplit:
    """Which frames of a dataset of ``length`` frames are held out for validation.

    Drawn once (:meth:`draw`, seeded) and then kept: a training run records it in its
    checkpoint (:func:`~so2nn.training.data_fingerprint` stores :meth:`to_dict` of the parts'
    split), so that a resume validates on the same frames and fits nothing on them.

    Example:
        >>> split = ValidationSplit.draw(10, valid_fraction=0.2, seed=0)
        >>> split.val_indices, split.train_indices
        ((2, 8), (0, 1, 3, 4, 5, 6, 7, 9))
        >>> ValidationSplit.from_dict(split.to_dict()) == split
        True
    """

    valid_fraction: float
    seed: int
    length: int
    val_indices: tuple[int, ...]

    @classmethod
    def draw(cls, length: int, valid_fraction: float, seed: int = 0) -> ValidationSplit:
        """Hold out ``round(valid_fraction * length)`` frames (at least one), drawn with ``seed``.

        The draw is NumPy's legacy ``RandomState`` permutation, whose stream NumPy keeps fixed
        across versions: the same ``(length, valid_fraction, seed)`` gives the same split anywhere.

        Raises:
            ValueError: a fraction outside (0, 1), or too few frames to leave both parts non-empty.
        """
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be between 0 and 1 (exclusive), got {valid_fraction}")
        count = max(1, round(valid_fraction * length))
        if count >= length:
            raise ValueError(f"a validation split of {valid_fraction} of {length} frames "
                             f"leaves no training frames")
        held_out = np.random.RandomState(seed).permutation(length)[:count]
        return cls(float(valid_fraction), int(seed), int(length), tuple(sorted(int(i) for i in held_out)))

    @property
    def train_indices(self) -> tuple[int, ...]:
        held_out = np.zeros(self.length, dtype=bool)
        held_out[list(self.val_indices)] = True
        return tuple(int(i) for i in np.flatnonzero(~held_out))

    def apply(self, dataset: Dataset) -> tuple[Subset, Subset]:
        """``(training part, validation part)`` of ``dataset``, each a ``Subset`` that carries
        this split as its ``split`` attribute.

        Raises:
            ValueError: ``dataset`` has another number of frames than the split was drawn for.
        """
        if len(dataset) != self.length:
            raise ValueError(f"the validation split was drawn for {self.length} frames, the data has "
                             f"{len(dataset)}: the data changed since the split was made")
        train, val = Subset(dataset, list(self.train_indices)), Subset(dataset, list(self.val_indices))
        train.split = val.split = self
        return train, val

    def to_dict(self) -> dict:
        """Plain values, for a checkpoint."""
        return {"valid_fraction": self.valid_fraction, "seed": self.seed, "length": self.length,
                "val_indices": list(self.val_indices)}

    @classmethod
    def from_dict(cls, record: dict) -> ValidationSplit:
        return cls(float(record["valid_fraction"]), int(record["seed"]), int(record["length"]),
                   tuple(int(i) for i in record["val_indices"]))


def split_dataset(dataset: Dataset, valid_fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """A seeded training/validation split of ``dataset``: :meth:`ValidationSplit.draw` then
    :meth:`~ValidationSplit.apply`.

    Give the training part to a :class:`~so2nn.training.Trainer`: its statistics and element
    references are fitted on that part only.

    Example:
        >>> train, val = split_dataset(list(range(100)), valid_fraction=0.1, seed=3)
        >>> len(train), len(val), set(train.indices).isdisjoint(val.indices), val.split.seed
        (90, 10, True, 3)
    """
    return ValidationSplit.draw(len(dataset), valid_fraction, seed).apply(dataset)
