"""Damaged files never crash the process.

Each format's file (written here by so2nn's writers, ASE or torch) is truncated at many
offsets and has single bytes flipped at seeded random places; every damaged copy is read in
full by a worker process (``corruption_worker.py``), which says whether the reader accepted it
(a flipped byte in an LMDB data page can go unnoticed: LMDB has no checksums) or rejected it
with a DataFormatError/ValueError naming the file. Anything else fails the test: another
exception, a message without the file's name, a signal (the worker dies; it is restarted and
the case counted) or a hang (no reply within the timeout).

The default run damages each format ``CASES`` ways; ``pytest -m slow`` runs ``SLOW_CASES``.
"""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import ase.db
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from so2nn.data import write_lmdb, write_s2ef_extxyz
from so2nn.models._checkpoint import atomic_save

CASES = 240  # per format: half truncations, half byte flips
SLOW_CASES = 4000
TIMEOUT_S = 120.0  # a reply slower than this is a hang (generous: a busy machine is not a hang)
STARTUP_TIMEOUT_S = 300.0
WORKER = Path(__file__).with_name("corruption_worker.py")


def _lmdb_items(frames):
    items = []
    for atoms in frames:
        items.append(Data(pos=torch.tensor(atoms.positions, dtype=torch.float32),
                          cell=torch.tensor(np.array(atoms.cell), dtype=torch.float32)[None],
                          atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.float32),
                          natoms=len(atoms), tags=torch.tensor(atoms.get_tags()),
                          fixed=torch.zeros(len(atoms)), y=float(atoms.get_potential_energy()),
                          force=torch.tensor(atoms.get_forces(apply_constraint=False), dtype=torch.float32),
                          sid=7, fid=1))
    return items


def _write_ase(path: Path, frames) -> None:
    with ase.db.connect(str(path), use_lock_file=False) as db:
        for k, atoms in enumerate(frames):
            db.write(atoms, sid=k)


def _fairchem_checkpoint():
    fixture = torch.load(Path(__file__).parents[1] / "models" / "fixtures" / "eqv2_31M_slab.pt", weights_only=True)
    return fixture["checkpoint"]


# format -> (write the valid source under a folder; return (what to open, the file to damage))
def _source(kind: str, root: Path, frames) -> tuple[Path, Path, str]:
    root.mkdir(parents=True, exist_ok=True)
    if kind == "lmdb":
        write_lmdb(root / "data.lmdb", _lmdb_items(frames))
        return root / "data.lmdb", root / "data.lmdb", "lmdb"
    if kind == "lmdb-shards":
        items = _lmdb_items(frames)
        write_lmdb(root / "data.0000.lmdb", items[:2])
        write_lmdb(root / "data.0001.lmdb", items[2:])
        return root, root / "data.0001.lmdb", "lmdb"
    if kind in ("extxyz", "extxyz-sidecar", "extxyz-xz"):
        name = "0.extxyz.xz" if kind == "extxyz-xz" else "0.extxyz"
        extxyz, txt = write_s2ef_extxyz(root / name, frames, [11, 11, 12, 12], [0, 1, 0, 1], [-1.0, -1.0, -2.0, -2.0])
        return extxyz, (txt if kind == "extxyz-sidecar" else extxyz), "dataset"
    if kind in ("ase-db", "ase-json", "aselmdb"):
        path = root / {"ase-db": "frames.db", "ase-json": "frames.json", "aselmdb": "frames.aselmdb"}[kind]
        _write_ase(path, frames)
        return path, path, "dataset"
    if kind == "checkpoint":
        state = {"format": "so2nn", "version": 1, "model": {"w": torch.randn(8, 8)},
                 "rng": [{"numpy": np.random.get_state(), "torch": torch.get_rng_state()}], "step": 3}
        atomic_save(state, root / "checkpoint.pt")
        return root / "checkpoint.pt", root / "checkpoint.pt", "checkpoint"
    if kind == "fairchem":
        torch.save(_fairchem_checkpoint(), root / "fairchem.pt")
        return root / "fairchem.pt", root / "fairchem.pt", "fairchem"
    raise AssertionError(kind)


KINDS = ["lmdb", "lmdb-shards", "extxyz", "extxyz-sidecar", "extxyz-xz", "ase-db", "ase-json", "aselmdb",
         "checkpoint", "fairchem"]


def _damages(size: int, count: int, seed: int):
    """``count`` damages of a ``size``-byte file: truncations (evenly spread, plus the last
    bytes: a download that stopped just short) and single-byte flips (a third of them in the
    first 8 KiB, where headers and LMDB's meta pages are)."""
    rng = np.random.default_rng(seed)
    truncations = sorted({*np.linspace(0, size - 1, max(count // 2 - 4, 1)).astype(int).tolist(),
                          size - 1, size - 2, size - 16, int(size * 0.999)})
    for length in truncations:
        if 0 <= length < size:
            yield ("truncate", length, 0)
    for k in range(count - len(truncations)):
        limit = min(size, 8192) if k % 3 == 0 else size
        yield ("flip", int(rng.integers(0, limit)), int(rng.integers(1, 256)))


class _Worker:
    def __init__(self, timeout: float = TIMEOUT_S):
        self.process, self.timeout = None, timeout

    def start(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),
                                                                                    os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, env=env, bufsize=1)
        # the imports (torch, ASE) are not part of any case's time
        if not self._reply(STARTUP_TIMEOUT_S).get("ready"):
            raise RuntimeError("the corruption worker did not start")

    def ask(self, request: dict, timeout: float | None = None) -> dict:
        """The worker's reply within ``timeout`` (default: the worker's), or a ``signal``/``hang``
        outcome (the worker is then restarted)."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply(self.timeout if timeout is None else timeout)

    def _reply(self, timeout: float) -> dict:
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout)
        selector.close()
        line = self.process.stdout.readline() if ready else ""
        if not line:
            died = None
            if ready:  # end of output: the worker is exiting; wait for its status
                try:
                    died = self.process.wait(timeout=TIMEOUT_S)  # a hang guard, as for a reply
                except subprocess.TimeoutExpired:
                    pass
            self.stop()
            return {"outcome": "hang" if died is None else "signal", "detail": f"exit status {died}"}
        return json.loads(line)

    def stop(self):
        if self.process is not None:
            self.process.kill()
            code = self.process.wait()
            self.process = None
            return code
        return None


def run_corruption(kind: str, root: Path, frames, count: int, seed: int = 0) -> Counter:
    target, damaged, reader = _source(kind, root / "source", frames)
    original = damaged.read_bytes()
    outcomes, failures = Counter(), []
    worker = _Worker()
    try:
        for n, (mode, offset, value) in enumerate(_damages(len(original), count, seed)):
            case = root / f"case{n}"
            shutil.copytree(root / "source", case)
            victim = case / damaged.relative_to(root / "source")
            data = bytearray(original)
            if mode == "truncate":
                data = data[:offset]
            else:
                data[offset] ^= value
            victim.write_bytes(bytes(data))
            opened = case / target.relative_to(root / "source")
            reply = worker.ask({"kind": reader, "path": str(opened), "name": victim.name})
            outcome, detail = reply["outcome"], reply.get("detail", "")
            outcomes[outcome] += 1
            if outcome not in ("ok", "rejected"):
                last = detail.strip().splitlines()[-1] if detail.strip() else ""
                failures.append(f"{mode} at {offset} (^{value}): {outcome}: {last}")
            shutil.rmtree(case)
    finally:
        worker.stop()
    assert not failures, (f"{kind}: {len(failures)} of {sum(outcomes.values())} cases failed:\n"
                          + "\n".join(failures[:5]))
    assert sum(outcomes.values()) >= count * 0.95
    return outcomes


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_files_are_rejected_or_read(kind, tmp_path, oc20_frames, record_property):
    outcomes = run_corruption(kind, tmp_path, oc20_frames(4, seed=5), CASES)
    record_property("outcomes", dict(outcomes))
    print(kind, dict(outcomes))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_damaged_files_are_rejected_or_read_many(kind, tmp_path, oc20_frames):
    print(kind, dict(run_corruption(kind, tmp_path, oc20_frames(4, seed=5), SLOW_CASES, seed=1)))


def test_the_harness_counts_signals_and_hangs_and_restarts(tmp_path):
    """The worker dying of a signal, or not answering, is a failure outcome, and the next case
    runs in a fresh worker."""
    worker = _Worker()
    (tmp_path / "frames.csv").write_text("")
    try:
        assert worker.ask({"kind": "signal", "path": "", "name": ""})["outcome"] == "signal"
        # a short wait for the request that sleeps an hour; the real request after it has the
        # generous one, so that a busy machine cannot make it a "hang"
        assert worker.ask({"kind": "hang", "path": "", "name": ""}, timeout=3.0)["outcome"] == "hang"
        reply = worker.ask({"kind": "dataset", "path": str(tmp_path / "frames.csv"), "name": "frames.csv"})
        assert reply["outcome"] == "rejected", reply
    finally:
        worker.stop()


def test_a_truncated_lmdb_is_rejected_in_process(tmp_path, oc20_frames):
    """The partial download: 99.9% of a valid LMDB, opened in this process (it used to be a
    SIGBUS), gives a DataFormatError that names the file."""
    from so2nn.data import DataFormatError, LmdbDataset

    write_lmdb(tmp_path / "full.lmdb", _lmdb_items(oc20_frames(4)) * 20)
    data = (tmp_path / "full.lmdb").read_bytes()
    (tmp_path / "partial.lmdb").write_bytes(data[: int(len(data) * 0.999)])
    with pytest.raises(DataFormatError, match=r"partial\.lmdb: the file is truncated"):
        LmdbDataset(tmp_path / "partial.lmdb")
