"""What so2nn's command-line programs share: CPU threads that suit a shared machine, a device
check that names what exists, and user errors reported as argparse reports them (one line on
standard error, exit status 2, no traceback).

The examples and ``python -m so2nn.verify`` use it; scripts of your own may too::

    parser = argparse.ArgumentParser()
    add_threads_argument(parser)
    parser.add_argument("--device")
    args = parser.parse_args()
    with usage_errors(parser):
        device = check_device(args.device)        # UsageError: one line, exit status 2
        threads = set_threads(args.threads)

Threads. torch's default is one thread per core, the fastest on a machine of its own. When
another job keeps a core busy, torch's threads wait for each other at every parallel region
and a step becomes many times slower (the README's table of threads has the measurements).
:func:`free_cores` counts the cores this process may use that no other process keeps busy, and
:func:`set_threads` uses that many unless told otherwise (``--threads``, or ``OMP_NUM_THREADS``
in the environment). The count is taken once, when the program starts.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable

import torch

__all__ = ["UsageError", "add_threads_argument", "check_device", "describe_threads", "exit_on_interrupt", "fraction",
           "free_cores", "non_negative_float", "non_negative_int", "positive_float", "positive_int", "set_threads",
           "usage_errors"]


class UsageError(ValueError):
    """A mistake in what the user asked for (an option, a file, a device), reported by
    :func:`usage_errors` as one line and exit status 2."""


@contextlib.contextmanager
def usage_errors(parser: argparse.ArgumentParser | None = None):
    """Report a :class:`UsageError` raised inside as argparse reports a bad option: ``prog:
    error: message`` on standard error (after the usage line, with ``parser``) and exit status
    2. Any other exception passes through."""
    try:
        yield
    except UsageError as error:
        if parser is not None:
            parser.error(str(error))
        print(f"{os.path.basename(sys.argv[0]) or 'so2nn'}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@contextlib.contextmanager
def exit_on_interrupt(what_is_kept: str | Callable[[], str]):
    """Ctrl-C (SIGINT) inside ends the program as shells expect of an interrupted command: one line,
    ``interrupted (SIGINT): <what_is_kept>``, and exit status 130, without a traceback.
    ``what_is_kept`` (or a function returning it, read when the interrupt comes) tells the user
    what was saved and how to continue."""
    try:
        yield
    except KeyboardInterrupt:
        message = what_is_kept() if callable(what_is_kept) else what_is_kept
        print(f"\ninterrupted (SIGINT): {message}", flush=True)
        raise SystemExit(128 + signal.SIGINT) from None


def _bounded(kind, test, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    parse.__doc__ = f"An argparse ``type``: the text as {what}, or argparse's one-line error."
    return parse


#: argparse types: an int >= 1, an int >= 0, a finite float > 0, a finite float >= 0, a float
#: strictly between 0 and 1.
positive_int = _bounded(int, lambda v: v >= 1, "a positive integer (>= 1)")
non_negative_int = _bounded(int, lambda v: v >= 0, "a non-negative integer (>= 0)")
positive_float = _bounded(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
non_negative_float = _bounded(float, lambda v: v >= 0 and math.isfinite(v), "a non-negative number (>= 0)")
fraction = _bounded(float, lambda v: 0 < v < 1, "a fraction between 0 and 1 (exclusive)")


def _usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, and a container's CPU quota (cgroup v2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _idle_cores(cpus: set[int], seconds: float = 0.2) -> float | None:
    """How many of ``cpus`` sat idle over the next ``seconds``: the sum of their idle shares in
    /proc/stat (Linux), or None where it cannot be read."""
    def read() -> dict[int, tuple[int, int]]:
        times = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    values = [int(v) for v in fields[:8]]
                    times[int(name[3:])] = (values[3] + values[4], sum(values))  # idle + iowait, all
        return times

    try:
        before = read()
        time.sleep(seconds)
        after = read()
    except (OSError, ValueError):
        return None
    shares = [(after[c][0] - before[c][0]) / (after[c][1] - before[c][1])
              for c in before if c in after and after[c][1] > before[c][1]]
    return sum(shares) if shares else None


def free_cores() -> int:
    """The cores this process may use that other processes do not keep busy: at least 1.

    The cores are this process's CPU affinity (and a container's CPU quota); the free ones the
    sum of their idle shares over a fifth of a second (/proc/stat), rounded to the nearest whole
    core. Where /proc/stat cannot be read, the cores minus the one-minute load average (which
    lags: it still counts a job that ended a minute ago, and this process's own start-up). On
    an idle 2-core machine: 2; with one other CPU-bound process on it: 1.

    Example:
        >>> 1 <= free_cores() <= (os.cpu_count() or 1)
        True
    """
    cores = _usable_cores()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    free = _idle_cores(cpus)
    if free is None:
        try:
            free = cores - os.getloadavg()[0]
        except (AttributeError, OSError):
            free = cores
    return max(1, min(cores, math.floor(free + 0.5)))


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads and return their number: ``threads`` when given; else the
    environment's ``OMP_NUM_THREADS`` where it is set (as torchrun sets it), torch having read
    it; else :func:`free_cores`.

    Example:
        >>> before = torch.get_num_threads()
        >>> set_threads(1)
        1
        >>> _ = set_threads(before)
    """
    if threads is None:
        threads = torch.get_num_threads() if os.environ.get("OMP_NUM_THREADS") else free_cores()
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads


def describe_threads() -> str:
    """One phrase for a run's first lines: ``"1 thread (2 cores, load 1.3)"``."""
    threads = torch.get_num_threads()
    try:
        load = f", load {os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        load = ""
    return f"{threads} thread{'s' if threads != 1 else ''} ({_usable_cores()} cores{load})"


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's CPU threads (default: the cores free when the program starts)."""
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: the cores that no other process keeps busy when the run "
                             "starts, see so2nn.cli.free_cores; on a machine of its own, one per core)")


def check_device(name: str | None) -> torch.device:
    """The torch device named ``name`` (None: ``cuda`` where a GPU is visible, else ``cpu``), or
    a :class:`UsageError` that names the devices there are.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        so2nn.cli.UsageError: --device 'gpu' is not a torch device name; this machine has: cpu...
    """
    available = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        available.append("mps")
    there = f"this machine has: {', '.join(available)}"
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device name; {there}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise UsageError(f"--device {name}: {why}; {there}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: there is no GPU {device.index}; {there}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: no Apple GPU here; {there}")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: so2nn's programs run on cpu or cuda; {there}")
    return device
