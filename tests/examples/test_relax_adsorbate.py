"""examples/relax_adsorbate.py end to end with a tiny (untrained) model: the printed energies
are the trajectory's, and the model is found where the training example saves it.

Training the model when none exists (examples/train_oc20.py as a subprocess) takes minutes and
is run here only until Ctrl-C stops it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ase.io import read
from interrupt import interrupt_when

from so2nn.models import EquiformerV2, EquiformerV2Config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "relax_adsorbate.py"
STEP = re.compile(r"model step +(\d+): energy +([-0-9.]+) eV, max force ([0-9.]+) eV/A")


def save_tiny_model(path: Path) -> None:
    torch.manual_seed(0)
    config = EquiformerV2Config.tiny()
    EquiformerV2(config).save(path)


def run(cwd: Path, *args: str) -> str:
    # a tiny model: one thread, no contention on a busy machine; this checkout's so2nn first
    path = os.pathsep.join(p for p in (str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
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


def test_ctrl_c_while_the_model_trains_exits_130_after_its_checkpoint(tmp_path):
    """With no model, the example trains one (examples/train_oc20.py as a subprocess); Ctrl-C
    reaches both: the training saves its checkpoint and prints its --resume command, the example
    says how to go on and exits 130, without a traceback."""
    path = os.pathsep.join(p for p in (str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH")) if p)
    status, out = interrupt_when([sys.executable, str(EXAMPLE), "--train-out", "train", "--train-steps", "100000",
                                  "--threads", "1"], "atoms_s=", cwd=tmp_path, env={"PYTHONPATH": path})
    assert status == 130, out
    assert "Traceback" not in out, out
    lines = out.strip().splitlines()
    assert lines[-1] == "training interrupted: continue it with the --resume command above, then run this example again"
    assert lines[-2].strip().endswith("--out train --threads 1 --resume"), out
    assert (tmp_path / "train" / "checkpoint.pt").is_file()


def test_ctrl_c_while_it_relaxes_exits_130_with_one_line(tmp_path):
    save_tiny_model(tmp_path / "tiny.pt")
    path = os.pathsep.join(p for p in (str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH")) if p)
    status, out = interrupt_when([sys.executable, str(EXAMPLE), "--checkpoint", "tiny.pt", "--fmax", "1e-9",
                                  "--steps", "100000", "--optimizer", "FIRE"], "model step   1:", cwd=tmp_path,
                                 env={"PYTHONPATH": path})
    assert status == 130, out
    assert "Traceback" not in out, out
    assert out.strip().splitlines()[-1] == ("interrupted (SIGINT): a model it trained is kept for the next run; the "
                                           "same command runs it again"), out
