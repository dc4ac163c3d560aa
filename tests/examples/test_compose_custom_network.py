import os
import re
import subprocess
import sys
from pathlib import Path

from interrupt import interrupt_when

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compose_custom_network.py"
CHECKOUT = os.pathsep.join(p for p in (str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH")) if p)


def test_example_runs_learns_and_is_equivariant():
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--steps", "120"], capture_output=True, text=True, timeout=3600, check=True,
        # one thread: the test does not depend on the machine's load; this checkout's so2nn first
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": CHECKOUT},
    )
    equivariance = re.search(r"relative ([0-9.e+-]+)", result.stdout)
    assert equivariance and float(equivariance.group(1)) <= 1e-9, result.stdout
    mae = re.search(r"validation MAE ([0-9.]+) vs ([0-9.]+) for predicting zero", result.stdout)
    assert mae and float(mae.group(1)) < 0.7 * float(mae.group(2)), result.stdout


def test_ctrl_c_exits_130_with_one_line():
    """Ctrl-C while it trains: exit status 130, as shells expect of an interrupted command, and one
    line saying so, no traceback."""
    status, out = interrupt_when([sys.executable, str(EXAMPLE), "--steps", "100000"], "predicting zero",
                                 env={"PYTHONPATH": CHECKOUT})
    assert status == 130, out
    assert "Traceback" not in out, out
    assert out.strip().splitlines()[-1] == ("interrupted (SIGINT): this example saves nothing; the same command runs "
                                           "it again"), out
