"""Progress of a long phase on standard error: tqdm's bar where tqdm is installed, else a line
every few seconds (so2nn does not depend on tqdm)."""

from __future__ import annotations

import sys
import time


class _Lines:
    """tqdm's ``update``/``set_postfix_str``/``close`` as a plain line at most every ``every`` seconds."""

    def __init__(self, total: int | None, desc: str, unit: str, every: float = 10.0) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.postfix = 0, ""
        self.start = self.last = time.perf_counter()

    def _print(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        print(f"{self.desc}: {self.n}{of} {self.unit}s, {time.perf_counter() - self.start:.0f} s"
              f"{', ' + self.postfix if self.postfix else ''}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.last >= self.every:
            self.last = time.perf_counter()
            self._print()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        if time.perf_counter() - self.start >= self.every:
            self._print()


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True):
    """A progress bar (``update(n)``, ``set_postfix_str(text)``, ``close()``), or None when not
    ``enabled``."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Lines(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
