"""examples/so3_tour.py runs, says what it checks in --help, and its checks hold."""

import re
import runpy
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "so3_tour.py"


def test_so3_tour_runs_and_its_checks_hold(capsys):
    tour = runpy.run_path(str(EXAMPLE))  # defines main, runs nothing
    with pytest.raises(SystemExit):
        tour["main"](["--help"])
    help_text = capsys.readouterr().out
    assert "tour of so2nn's SO(3) toolkit" in help_text and "--lmax" in help_text
    dtype = torch.get_default_dtype()
    try:
        tour["main"](["--lmax", "3", "--mmax", "1"])
    finally:
        torch.set_default_dtype(dtype)
    out = capsys.readouterr().out
    assert "CoefficientLayout(lmax=3, mmax=1): 16 coefficients per node" in out, out
    errors = [float(e) for e in re.findall(r"(?:= |relative |error )([0-9.]+e[-+]\d+)", out)]
    assert len(errors) == 4 and max(errors) < 1e-12, out
    # a grid too coarse for lmax is a usage error, before any work (it was a traceback)
    with pytest.raises(SystemExit) as stop:
        tour["main"](["--resolution", "4"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.fullmatch(r"\S+: error: --resolution 4: grid resolution too small: .*",
                                                   err.splitlines()[-1]), err
