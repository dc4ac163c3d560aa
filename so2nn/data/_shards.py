"""Many files read as one dataset: stable file order and global -> (file, record) indexing."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from pathlib import Path

from torch.utils.data import Dataset

__all__ = ["ShardedDataset", "natural_sorted"]


def natural_sorted(paths: Iterable[Path]) -> list[Path]:
    """Paths sorted by name with digit runs compared as numbers: ``2.extxyz`` before ``10.extxyz``.

    Example:
        >>> [p.name for p in natural_sorted([Path("10.lmdb"), Path("2.lmdb"), Path("data.0001.lmdb")])]
        ['2.lmdb', '10.lmdb', 'data.0001.lmdb']
    """

    def key(path: Path):
        parts = re.split(r"(\d+)", path.name)
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts]

    return sorted(paths, key=key)


class ShardedDataset(Dataset):
    """A dataset made of files holding ``lengths[k]`` records each, indexed end to end."""

    #: what the reader's messages call one record of a file
    record_name = "record"

    def __init__(self, files: list[Path], lengths: list[int]):
        self.files = list(files)
        self.lengths = list(lengths)
        self._ends = []
        total = 0
        for length in self.lengths:
            total += length
            self._ends.append(total)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def offset(self, shard: int) -> int:
        """Global index of the first record of file ``shard``."""
        return self._ends[shard - 1] if shard else 0

    def describe(self, index: int) -> str:
        """Where item ``index`` comes from, as the reader's messages name it (``"FILE: record K"``)."""
        shard, local = self.locate(index)
        return f"{self.files[shard]}: {self.record_name} {local}"

    def locate(self, index: int) -> tuple[int, int]:
        """``(file number, record index in that file)`` of a global ``index`` (negative: from the end)."""
        if not isinstance(index, int):
            index = int(index)
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError(f"index {index} out of range for a dataset of {size} frames")
        shard = bisect.bisect_right(self._ends, index)
        return shard, index - self.offset(shard)
