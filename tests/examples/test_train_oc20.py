"""The main job, small: examples/train_oc20.py on a small embedded EMT dataset, interrupted
and resumed from the command line; the validation force error must fall."""

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
    common = ["--tiny", "--emt-systems", "30", "5", "--cache-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
              "--max-steps", "160", "--eval-every", "80", "--batch-size", "4", "--lr", "2e-3", "--warmup-steps", "5",
              "--no-progress", "--threads", "2"]
    first = _run(*common, "--stop-after", "50")
    assert "stopped at step 50 of 160" in first, first
    second = _run(*common, "--resume")
    assert "trained 160 steps" in second and "force MAE" in second, second
    with open(tmp_path / "run" / "val_log.csv", newline="") as f:
        val = list(csv.DictReader(f))
    assert [int(r["step"]) for r in val] == [0, 80, 160]
    start, end = val[0], val[-1]
    # the loss is dominated by the force term (100 vs 4): the force error must fall clearly; the
    # energy, fitted per element at the start, moves little in 160 steps (the full default run
    # checks it against the baseline: see the issue notes)
    assert float(end["forces_mae"]) < 0.8 * float(start["forces_mae"]), val
    assert float(end["forces_cos"]) > float(start["forces_cos"]) + 0.3, val
    assert float(end["energy_mae"]) < 0.7 * float(end["energy_mae_mean_baseline"]), val
    for name in ("checkpoint.pt", "model.pt", "summary.png", "metrics.json", "train_log.csv"):
        assert (tmp_path / "run" / name).exists(), name
    help_text = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--data", "--val-data", "--preset", "--tiny", "--device", "--amp", "--resume", "--max-steps"):
        assert flag in help_text
