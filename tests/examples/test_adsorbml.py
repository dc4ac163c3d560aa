"""examples/adsorbml.py end to end, tiny: an untrained model, one pair, a few placements."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_sim")

from interrupt import interrupt_when  # noqa: E402

from so2nn.models import EquiformerV2, EquiformerV2Config  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "adsorbml.py"


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # one thread for a tiny model; this checkout's so2nn first, wherever the run's directory is
    path = os.pathsep.join(p for p in (str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=3600)


def test_tiny_adsorbml_run_reports_every_k(tmp_path):
    torch.manual_seed(0)
    EquiformerV2(EquiformerV2Config.tiny(forces_std=0.05)).save(tmp_path / "tiny.pt")
    result = run(tmp_path, "--checkpoint", "tiny.pt", "--metals", "Cu", "--adsorbates", "O", "CO",
                 "--placements", "4", "--k-max", "2", "--steps", "5", "--fmax", "0.01", "--emt-steps", "20",
                 "--batch-size", "3", "--out", "out")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "2 slab/adsorbate pairs x 4 placements = 8 structures" in out, out
    lines = re.findall(r"^\s+(\d)\s+([\d.]+)%\s+(\d+) of (\d+)\s+(\d+) of (\d+)", out, re.MULTILINE)
    assert [int(k) for k, *_ in lines] == [1, 2], out
    with open(tmp_path / "out" / "results.csv") as f:
        table = list(csv.DictReader(f))
    for row, (k, _rate, used, baseline, calls, all_calls) in zip(table, lines):
        assert int(row["emt_relaxations"]) == int(used) <= int(k) * 2 and int(baseline) == 8
        assert 0 < int(calls) < int(all_calls) == int(row["baseline_calls"])
    with open(tmp_path / "out" / "placements.csv") as f:
        placements = list(csv.DictReader(f))
    assert len(placements) == 8 and {p["site"] for p in placements} == {"ontop", "bridge", "fcc", "hcp"}
    assert (tmp_path / "out" / "adsorbml.png").stat().st_size > 1000


def test_help_documents_every_flag_and_without_a_model_it_says_how_to_get_one(tmp_path):
    result = run(tmp_path, "--placements", "2")
    assert result.returncode != 0
    assert "python examples/train_oc20.py" in result.stderr and "--checkpoint" in result.stderr
    result = run(tmp_path, "--help")
    assert result.returncode == 0
    flags = set(re.findall(r"add_argument\(\"(--[a-z-]+)\"", EXAMPLE.read_text()))
    assert len(flags) >= 15 and all(flag in result.stdout for flag in flags)
    result = run(tmp_path, "--seed", "-1")  # numpy's generators take no negative seed: one line, exit status 2
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == \
        "adsorbml.py: error: argument --seed: -1 is not a non-negative integer (>= 0)"


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """Ctrl-C while the model relaxes the placements: exit status 130, as shells expect of an
    interrupted command, one line saying that nothing was written, no traceback."""
    torch.manual_seed(0)
    EquiformerV2(EquiformerV2Config.tiny(forces_std=0.05)).save(tmp_path / "tiny.pt")
    path = os.pathsep.join(p for p in (str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH")) if p)
    status, out = interrupt_when([sys.executable, str(EXAMPLE), "--checkpoint", "tiny.pt", "--placements", "40",
                                  "--out", "out"], "structures", cwd=tmp_path, env={"PYTHONPATH": path})
    assert status == 130, out
    assert "Traceback" not in out, out
    assert out.strip().splitlines()[-1].startswith("interrupted (SIGINT): nothing written to out"), out
    assert not (tmp_path / "out").exists()
