"""examples/relax_adsorbate.py end to end with a tiny (untrained) model: the printed energies
are the trajectory's, and the model is found where the training example saves it.

Training the model when none exists (examples/train_oc20.py as a subprocess) takes minutes and
is not run here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ase.io import read

from so2nn.models import EquiformerV2, EquiformerV2Config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "relax_adsorbate.py"
STEP = re.compile(r"model step +(\d+): energy +([-0-9.]+) eV, max force ([0-9.]+) eV/A")


def save_tiny_model(path: Path) -> None:
    torch.manual_seed(0)
    config = EquiformerV2Config.tiny()
    EquiformerV2(config).save(path)


def run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: one thread, no contention on a busy machine
    command = [sys.executable, str(EXAMPLE), *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_relaxation_prints_and_writes_its_trajectory(tmp_path):
    save_tiny_model(tmp_path / "tiny.pt")
    out = run(tmp_path, "--checkpoint", "tiny.pt", "--optimizer", "FIRE", "--steps", "4", "--fmax", "1e-6",
              "--adsorbate", "CO", "--dtype", "float64", "--out", "relax/co.traj")
    steps = [(int(s), float(e), float(f)) for s, e, f in STEP.findall(out)]
    assert [s for s, _, _ in steps] == [0, 1, 2, 3, 4], out
    frames = read(tmp_path / "relax" / "co.traj", ":")
    assert len(frames) == 5
    assert [len(f) for f in frames] == [14] * 5 and list(frames[0].get_tags()).count(2) == 2
    for (_, energy, force), frame in zip(steps, frames):
        assert frame.get_potential_energy() == pytest.approx(energy, abs=1e-4)
        assert float((frame.get_forces() ** 2).sum(axis=1).max() ** 0.5) == pytest.approx(force, abs=1e-4)
    assert re.search(r"model: 4 steps, NOT converged; energy \S+ -> \S+ eV; final max force", out), out
    assert re.search(r"EMT: +4 steps, NOT converged", out), out
    assert re.search(r"model - EMT = [-+]\d+\.\d+ eV", out), out
    assert "EMT at the model's relaxed structure" in out and "binding atom" in out


def test_uses_the_training_examples_model_when_there_is_one(tmp_path):
    (tmp_path / "runs" / "train_oc20").mkdir(parents=True)
    save_tiny_model(tmp_path / "runs" / "train_oc20" / "model.pt")
    out = run(tmp_path, "--steps", "1")
    assert "model: runs/train_oc20/model.pt" in out and "training a tiny one" not in out, out
    assert (tmp_path / "runs" / "relax_adsorbate" / "relax.traj").is_file()
