"""``python -m so2nn.verify CHECKPOINT`` without fairchem: so2nn's outputs, the install hint, clear errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from so2nn import verify

FIXTURES = Path(__file__).parent / "models" / "fixtures"


@pytest.fixture
def no_fairchem(monkeypatch):
    monkeypatch.setitem(sys.modules, "fairchem", None)  # `import fairchem.core` then raises ImportError
    monkeypatch.setitem(sys.modules, "fairchem.core", None)


@pytest.mark.parametrize("fixture", ["eqv2_31M_slab", "eqv2_family_omat"])
def test_without_the_reference_prints_so2nns_outputs(fixture, tmp_path, capsys, no_fairchem):
    path = tmp_path / "checkpoint.pt"
    torch.save(torch.load(FIXTURES / f"{fixture}.pt", weights_only=False)["checkpoint"], path)
    assert verify.main([str(path), "--dtype", "float64", "--no-ema"]) == 0
    out = capsys.readouterr().out
    assert "fairchem-core is not importable here" in out
    assert "bash benchmarks/setup_reference.sh" in out
    for name in verify.structures():
        assert f"  {name} " in out
    if fixture == "eqv2_family_omat":
        assert "stress" in out


def test_structures_are_the_documented_ones():
    systems = verify.structures()
    assert sorted(systems) == ["bulk Cu", "ethanol", "slab+OH"]
    assert all(atoms.pbc.all() for atoms in systems.values())
    assert not verify.structures(periodic=False)["ethanol"].pbc.any()
    crystal = systems["bulk Cu"]
    assert abs(crystal.cell.cellpar()[3:] - 90).max() > 0.5  # a sheared cell: all six stress components


def test_compare_is_relative_to_the_spread():
    calls = [{"energy": np.array(1.0), "forces": np.zeros((2, 3))},
             {"energy": np.array(1.1), "forces": np.full((2, 3), 0.1)}]
    inside = verify.compare({"energy": np.array(1.05), "forces": np.full((2, 3), 0.05)}, calls, torch.float64)
    assert all(ok for *_, ok in inside.values())
    outside = verify.compare({"energy": np.array(1.5), "forces": np.full((2, 3), 0.05)}, calls, torch.float64)
    assert not outside["energy"][2] and outside["forces"][2]
    assert outside["energy"][:2] == pytest.approx((0.5, 0.1))


def test_errors(tmp_path, capsys):
    assert verify.main([str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    # argparse's form
    assert err == f"python -m so2nn.verify: error: no checkpoint file at {tmp_path / 'missing.pt'}\n", err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert verify.main([str(corrupt)]) == 2
    assert "could not read checkpoint" in (err := capsys.readouterr().err)
    assert "not a PyTorch checkpoint (it looks like text)" in err, err
    with pytest.raises(SystemExit):
        verify.main([str(corrupt), "--rolls", "1"])
    assert capsys.readouterr().err.splitlines()[-1] == ("python -m so2nn.verify: error: --rolls must be at least 2 "
                                                        "(the reference's spread needs two calls)")
    assert verify.main([str(corrupt), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m so2nn.verify: error: --device 'gpu' is not a torch device name; this machine has: "
                          "cpu") and len(err.splitlines()) == 1, err


def test_runs_as_a_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "so2nn.verify", str(tmp_path / "missing.pt")],
                            check=False, capture_output=True, text=True, timeout=3600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "no checkpoint file at" in result.stderr
