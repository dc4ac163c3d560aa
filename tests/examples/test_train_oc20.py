"""The main job, small: examples/train_oc20.py on a small embedded EMT dataset, interrupted
and resumed from the command line; the validation force error must fall."""

import csv
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_oc20.py"


def _run(*args, ok=True):
    result = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=600)
    assert (result.returncode == 0) == ok, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout if ok else result.stderr


def test_train_oc20_tiny_learns_and_resumes(tmp_path):
    common = ["--tiny", "--emt-systems", "30", "5", "--cache-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
              "--max-steps", "160", "--eval-every", "80", "--batch-size", "4", "--lr", "2e-3", "--warmup-steps", "5",
              "--no-progress", "--threads", "2"]
    first = _run(*common, "--stop-after", "50")
    assert "stopped at step 50 of 160: 50 steps in " in first, first
    # the first lines say what the run runs on
    header = first.splitlines()[:4]
    assert "parameters, float32" in header[0], header
    assert header[1].startswith("device cpu, 2 threads") and "AMP none" in header[1], header
    assert "training " in header[2] and "(300 structures)" in header[2], header  # 30 systems x 10 frames
    # a resume on other data, or with a flag that changes the run, is refused by name
    other_data = _run(*[("31" if a == "30" else a) for a in common], "--resume", ok=False)
    assert "cannot resume" in other_data and "training data" in other_data, other_data
    other_lr = _run(*[("1e-3" if a == "2e-3" else a) for a in common], "--resume", ok=False)
    assert "lr: 0.002 in the run, 0.001 now" in other_lr, other_lr
    second = _run(*common, "--resume")
    assert "trained 110 steps in " in second and "the run: step 160 of 160" in second, second
    assert "force MAE" in second, second
    # extending --max-steps is a resume
    extended = _run(*[("180" if a == "160" else a) for a in common], "--resume", "--no-plot")
    assert "trained 20 steps in " in extended and "the run: step 180 of 180" in extended, extended
    with open(tmp_path / "run" / "val_log.csv", newline="") as f:
        val = list(csv.DictReader(f))
    assert [int(r["step"]) for r in val] == [0, 80, 160, 180]
    start, end = val[0], val[-1]
    # the loss is dominated by the force term (100 vs 4): the force error must fall clearly; the
    # energy, fitted per element at the start, moves little in 160 steps (the full default run
    # checks it against the baseline, as the README reports)
    assert float(end["forces_mae"]) < 0.8 * float(start["forces_mae"]), val
    assert float(end["forces_cos"]) > float(start["forces_cos"]) + 0.3, val
    assert float(end["energy_mae"]) < 0.7 * float(end["energy_mae_mean_baseline"]), val
    for name in ("checkpoint.pt", "model.pt", "summary.png", "metrics.json", "train_log.csv"):
        assert (tmp_path / "run" / name).exists(), name
    help_text = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--data", "--val-data", "--preset", "--tiny", "--device", "--amp", "--resume", "--max-steps",
                 "--allow-data-change"):
        assert flag in help_text
    # each option's default is said once
    options = help_text.split("\noptions:")[1].split("\n\n--resume")[0]
    for block in options.split("\n  -")[1:]:
        block = block.split("\n\n")[0]  # not the next group's title
        assert block.count("default") <= 1, block


def test_train_oc20_fine_tunes_a_checkpoint_and_resumes(tmp_path):
    import torch

    data = ["--emt-systems", "12", "3", "--cache-dir", str(tmp_path / "data"), "--batch-size", "4", "--no-progress",
            "--threads", "2", "--no-plot"]
    _run("--tiny", *data, "--out", str(tmp_path / "base"), "--max-steps", "10", "--eval-every", "10")
    fine = [*data, "--init", str(tmp_path / "base" / "model.pt"), "--out", str(tmp_path / "ft"), "--max-steps", "8",
            "--eval-every", "8", "--freeze-backbone", "--lr", "1e-3"]
    first = _run(*fine, "--stop-after", "4")
    assert "fine-tuning " in first and "backbone frozen" in first, first
    assert "energy referencing (refit=references)" in first and "element references" in first, first
    # the recipe a run from scratch of the tiny model gets (its warm-up, as no flag sets one)
    assert "warm-up 50 steps (the tiny run's recipe where no flag sets it)" in first, first
    assert "note: the warm-up (50 steps) is more than half of the run's 8 steps" in first, first
    second = _run(*fine, "--resume")
    assert "the run: step 8 of 8" in second, second
    record = torch.load(tmp_path / "ft" / "model.pt", weights_only=False)["finetune"]
    assert record["frozen"] == ["backbone"] and record["source"]["path"].endswith("model.pt")
    # the architecture is the checkpoint's; an official fairchem checkpoint starts a run too
    refused = _run(*data, "--init", str(tmp_path / "base" / "model.pt"), "--out", str(tmp_path / "x"),
                   "--set", "lmax=4", ok=False)
    assert "lmax: 2 in the checkpoint, 4 asked" in refused, refused
    fairchem = tmp_path / "fairchem.pt"
    torch.save(torch.load(EXAMPLE.parents[1] / "tests/models/fixtures/eqv2_31M_slab.pt",
                          weights_only=False)["checkpoint"], fairchem)
    out = _run(*data, "--init", str(fairchem), "--out", str(tmp_path / "fc"), "--max-steps", "2", "--eval-every", "2",
               "--refit", "all", "--set", "max_neighbors=8", "--val-subset", "4")
    assert "fairchem" in out and "force MAE" in out, out
