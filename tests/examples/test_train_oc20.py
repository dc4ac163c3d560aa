"""The main job, small: examples/train_oc20.py on a small embedded EMT dataset, interrupted
and resumed from the command line; the validation force error must fall."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from interrupt import interrupt_when

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_oc20.py"


# one thread per run (a test must not depend on how busy the machine is); the timeout only guards
# against a hang; this checkout's so2nn first, whichever so2nn is installed
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH")) if p)}


def _run(*args, ok=True):
    result = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=3600,
                            env=ENV)
    assert (result.returncode == 0) == ok, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout if ok else result.stderr


def test_train_oc20_tiny_learns_and_resumes(tmp_path):
    common = ["--tiny", "--emt-systems", "30", "5", "--cache-dir", str(tmp_path / "data"),
              "--out", str(tmp_path / "run"),
              "--max-steps", "160", "--eval-every", "80", "--batch-size", "4", "--lr", "2e-3", "--warmup-steps", "5",
              "--no-progress", "--threads", "1"]
    first = _run(*common, "--stop-after", "50")
    assert "stopped at step 50 of 160: 50 steps in " in first, first
    # the first lines say what the run runs on
    header = first.splitlines()[:4]
    assert "parameters, float32" in header[0], header
    assert header[1].startswith("device cpu, 1 thread (") and "AMP none" in header[1], header
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
    help_text = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, check=True,
                               env=ENV, timeout=3600).stdout
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
            "--threads", "1", "--no-plot"]
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


def test_set_takes_the_stress_group_and_the_older_flat_stress_entries():
    """``--set stress_head='"equivariant"'`` (the flat entry of older configs) and
    ``--set stress='{"head": "equivariant"}'`` give the same model config; a key the config does
    not know stops with its name."""
    import importlib.util

    import pytest

    spec = importlib.util.spec_from_file_location("train_oc20_example_set", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    flat = example.model_config(example.parse_args(["--set", 'stress_head="equivariant"',
                                                    "--set", "stress_extensive=true"]))
    nested = example.model_config(example.parse_args(["--set", 'stress={"head": "equivariant", "extensive": true}']))
    assert flat == nested and flat.stress.head == "equivariant" and flat.stress.extensive
    with pytest.raises(ValueError, match="--set 'stress_gate=1': expected KEY=VALUE"):
        example.model_config(example.parse_args(["--set", "stress_gate=1"]))


def test_fine_tunes_on_a_users_extxyz_with_a_validation_split(tmp_path):
    """The command as users write it: --init, an extxyz of their own (energies in info, forces in
    arrays, stress on the bulk frames only, no OC20 sidecar), --valid-fraction, MACE-style keys."""
    import torch
    from dft_files import emt_frames, write_ref_extxyz

    write_ref_extxyz(tmp_path / "base.extxyz", emt_frames(24, seed=1))
    frames = emt_frames(40, seed=0)
    write_ref_extxyz(tmp_path / "my_dft.extxyz", frames)
    flags = ["--energy-key", "REF_energy", "--forces-key", "REF_forces", "--batch-size", "4", "--no-progress",
             "--threads", "1", "--no-plot"]
    _run("--tiny", "--data", str(tmp_path / "base.extxyz"), "--valid-fraction", "0.25", *flags,
         "--out", str(tmp_path / "base"), "--max-steps", "4", "--eval-every", "4")
    fine = ["--init", str(tmp_path / "base" / "model.pt"), "--data", str(tmp_path / "my_dft.extxyz"),
            "--valid-fraction", "0.1", *flags, "--out", str(tmp_path / "ft"),
            "--max-steps", "12", "--eval-every", "6"]
    first = _run(*fine, "--stop-after", "6")
    assert "training " in first and "(36 structures, the rest of 40 (seed 0))" in first, first
    assert "(4 structures, held out of 40 (seed 0))" in first, first
    refused = _run(*[("0.2" if a == "0.1" else a) for a in fine], "--resume", ok=False)
    assert "the run held out --valid-fraction 0.1 with --seed 0, not 0.2" in refused, refused
    second = _run(*fine, "--resume")
    assert "the run: step 12 of 12" in second and "force MAE" in second, second
    state = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=False)
    held_out = state["data"]["val"]["split"]
    assert held_out["valid_fraction"] == 0.1 and len(held_out["val_indices"]) == 4
    # the references were fitted on the 36 training frames, not on the held-out four
    energies = np.array([atoms.get_potential_energy() for atoms in frames])
    training = np.delete(energies, held_out["val_indices"])
    fitted = state["finetune"]["statistics"]["raw_energy_mean"]
    assert fitted == state["train_energy_mean"] and abs(fitted - training.mean()) < 1e-5, (fitted, training.mean())
    assert abs(training.mean() - energies.mean()) > 1e-3
    with open(tmp_path / "ft" / "val_log.csv", newline="") as f:
        val = list(csv.DictReader(f))
    assert [int(r["step"]) for r in val] == [0, 6, 12]
    assert float(val[-1]["forces_mae"]) < float(val[0]["forces_mae"]), val
    # a stress key that the slab frames lack is named, with the file and the frame
    missing = _run(*fine[:-4], "--out", str(tmp_path / "stress"), "--max-steps", "2",
                   "--stress-key", "REF_stress", ok=False)
    assert "my_dft.extxyz: frame 2: no stress key ('REF_stress')" in missing, missing


def test_ctrl_c_saves_prints_the_resume_command_and_exits_130(tmp_path):
    """SIGINT (Ctrl-C) stops after the current step with a checkpoint and exit status 130, as
    shells expect of an interrupted command, so that a script or scheduler sees the run did
    not finish; the output names the command that continues it."""
    out = tmp_path / "run"
    command = [sys.executable, str(EXAMPLE), "--tiny", "--emt-systems", "6", "2", "--cache-dir", str(tmp_path / "data"),
               "--out", str(out), "--max-steps", "100000", "--eval-every", "100000", "--batch-size", "4",
               "--log-every", "1", "--no-progress", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 3600  # a hang guard, not a timing
        while not (out / "train_log.csv").is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # a step is done: the run is inside its training loop
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=3600)
    finally:
        process.kill()
    assert process.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "Traceback" not in stderr, stderr
    assert ("interrupted (SIGINT) at step " in stdout
            and "continue with the same command plus --resume" in stdout), stdout
    resume = stdout.strip().splitlines()[-1].strip()
    assert resume.startswith("python ") and resume.endswith("--threads 1 --resume"), resume
    assert (out / "checkpoint.pt").is_file()


def test_ctrl_c_before_the_first_step_exits_130_and_says_nothing_is_saved(tmp_path):
    """Ctrl-C while the embedded data is generated (or in the validation before the first step):
    no traceback, exit status 130, and a last line that says there is no checkpoint to resume."""
    status, out = interrupt_when([sys.executable, str(EXAMPLE), "--tiny", "--emt-systems", "60", "10", "--cache-dir",
                                  str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--max-steps", "100000",
                                  "--threads", "1"], "generating", env=ENV)
    assert status == 130, out
    assert "Traceback" not in out, out
    said = [line for line in out.splitlines() if line.startswith("interrupted (SIGINT)")]  # beside progress bars
    assert len(said) == 1 and said[0].endswith("no checkpoint was saved; the same command starts the run again"), out
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
