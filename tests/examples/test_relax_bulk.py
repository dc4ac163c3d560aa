"""examples/relax_bulk.py end to end, small: a tiny conservative model trained for a few steps
(the default path, shortened), the cell relaxation with FrechetCellFilter and its report, and
a clear refusal of a model without stress."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ase.io import read
from ase.units import GPa
from interrupt import interrupt_when

from so2nn.models import EquiformerV2, EquiformerV2Config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "relax_bulk.py"
STEP = re.compile(r"model step +(\d+): energy +([-0-9.]+) eV, max force ([0-9.]+) eV/A, pressure +([-+0-9.]+) GPa")


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # a tiny model: one thread, no contention on a busy machine; this checkout's so2nn
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    result = subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=3600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_trains_a_tiny_model_relaxes_the_cell_and_reports_pressure_and_lattice(tmp_path):
    out = run(tmp_path, "--train-frames", "12", "--train-steps", "3", "--steps", "3", "--fmax", "1e-6",
              "--optimizer", "FIRE").stdout
    assert "training a tiny conservative model on 10 EMT frames" in out, out
    assert (tmp_path / "runs" / "relax_bulk_model" / "model.pt").is_file()
    steps = [(int(s), float(e), float(p)) for s, e, _, p in STEP.findall(out)]
    assert [s for s, _, _ in steps] == [0, 1, 2, 3], out
    frames = read(tmp_path / "runs" / "relax_bulk" / "relax.traj", ":")
    assert len(frames) == 4 and len(frames[0]) == 4
    assert (frames[-1].cell.array != frames[0].cell.array).any()  # the cell moved, not only the atoms
    for (_, energy, p), frame in zip(steps, frames):
        assert frame.get_potential_energy() == pytest.approx(energy, abs=1e-5)
        assert -frame.get_stress()[:3].mean() / GPa == pytest.approx(p, abs=1e-4)
    assert re.search(r"model: 3 steps, NOT converged; energy \S+ -> \S+ eV; final pressure [-+]\d+\.\d+ GPa", out)
    assert re.search(r"relaxed lattice: a b c = [\d.]+ [\d.]+ [\d.]+ A \(per cubic cell\), angles", out), out
    assert re.search(r"EMT: +3 steps, NOT converged", out), out
    assert "EMT's pressure at the model's relaxed cell" in out
    # a, b and c one by one against EMT's (a cell can keep its volume and lose its shape)
    assert re.search(r"lattice a b c: model( [\d.]+){3} A vs EMT( [\d.]+){3} A \(([-+][\d.]+% ?){3}\)", out), out
    # a second run reuses the trained model
    again = run(tmp_path, "--steps", "1").stdout
    assert "trained before" in again and "training a tiny" not in again, again


def test_a_model_without_stress_is_refused_with_a_clear_message(tmp_path):
    torch.manual_seed(0)
    EquiformerV2(EquiformerV2Config.tiny()).save(tmp_path / "direct.pt")  # direct forces: no stress
    result = run(tmp_path, "--checkpoint", "direct.pt", check=False)
    assert result.returncode != 0
    assert "gives no stress (its outputs: energy, forces)" in result.stderr, result.stderr
    assert "needs a conservative model (direct_forces=False)" in result.stderr


def test_help_documents_every_flag(tmp_path):
    out = run(tmp_path, "--help").stdout
    for flag in ("--checkpoint", "--train-frames", "--train-steps", "--train-out", "--device", "--dtype", "--metal",
                 "--repeat", "--strain", "--rattle", "--seed", "--optimizer", "--fmax", "--steps", "--out"):
        assert flag in out
    # a seed numpy cannot take is the user's mistake: one line, exit status 2 (it was a traceback)
    result = run(tmp_path, "--seed", "-1", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == \
        "relax_bulk.py: error: argument --seed: -1 is not a non-negative integer (>= 0)"


def test_ctrl_c_while_it_relaxes_exits_130_with_one_line(tmp_path):
    torch.manual_seed(0)
    EquiformerV2(EquiformerV2Config.tiny(direct_forces=False)).save(tmp_path / "conservative.pt")  # it has stress
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    status, out = interrupt_when([sys.executable, str(EXAMPLE), "--checkpoint", "conservative.pt", "--fmax", "1e-9",
                                  "--steps", "100000", "--optimizer", "FIRE"], "model step   1:", cwd=tmp_path,
                                 env={"PYTHONPATH": path})
    assert status == 130, out
    assert "Traceback" not in out, out
    assert out.strip().splitlines()[-1] == ("interrupted (SIGINT): a model it trained is kept for the next run; the "
                                           "same command runs it again"), out
