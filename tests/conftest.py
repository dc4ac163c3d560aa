import os

import torch
from hypothesis import HealthCheck, settings

# Equivariance tests are numeric: no per-example deadline (CPU timing is noisy), and a
# modest number of examples; CI runs the same profile.
settings.register_profile(
    "so2nn",
    max_examples=int(os.environ.get("SO2NN_HYPOTHESIS_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("so2nn")

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only when the marker expression selects them (``pytest -m slow``,
    or ``-m "slow or not slow"`` for everything); a plain run skips them, deselecting nothing."""
    import pytest

    expression = config.getoption("markexpr") or ""
    if "slow" in expression.replace("not slow", ""):
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
