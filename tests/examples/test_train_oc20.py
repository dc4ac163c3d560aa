"""The main job, small: examples/train_oc20.py on a small embedded EMT dataset, interrupted
and resumed from the command line; the validation errors must fall."""

import csv
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_oc20.py"


def _run(*args):
    result = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_train_oc20_tiny_learns_and_resumes(tmp_path):
    common = ["--tiny", "--emt-systems", "12", "4", "--cache-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
              "--max-steps", "80", "--eval-every", "40", "--batch-size", "4", "--lr", "2e-3", "--warmup-steps", "5",
              "--no-progress", "--threads", "2"]
    first = _run(*common, "--stop-after", "30")
    assert "stopped at step 30 of 80" in first, first
    second = _run(*common, "--resume")
    assert "trained 80 steps" in second and "force MAE" in second, second
    with open(tmp_path / "run" / "val_log.csv", newline="") as f:
        val = list(csv.DictReader(f))
    assert [int(r["step"]) for r in val] == [0, 40, 80]
    start, end = val[0], val[-1]
    assert float(end["forces_mae"]) < 0.8 * float(start["forces_mae"]), val
    assert float(end["energy_mae"]) < float(start["energy_mae"]), val
    for name in ("checkpoint.pt", "model.pt", "summary.png", "metrics.json", "train_log.csv"):
        assert (tmp_path / "run" / name).exists(), name
    help_text = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--data", "--val-data", "--preset", "--tiny", "--device", "--amp", "--resume", "--max-steps"):
        assert flag in help_text
