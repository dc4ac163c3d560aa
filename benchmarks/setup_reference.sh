#!/usr/bin/env bash
# Set up the environment of the reference implementation (fairchem-core 1.10.0's EquiformerV2)
# used by benchmarks/equiformer_v2_vs_reference.py and scripts/make_parity_fixtures.py.
#
#   bash benchmarks/setup_reference.sh            # creates .venv-reference/ in this clone
#   .venv-reference/bin/python benchmarks/equiformer_v2_vs_reference.py --help
#
# Why an environment of its own: fairchem-core 1.10.0 (the last release with EquiformerV2)
# declares torch~=2.4 and numpy<2, which would downgrade a current install. It is installed
# here without its declared dependencies (--no-deps), beside exactly the packages that its
# EquiformerV2 import path needs, and so2nn itself in editable mode, so that both run in one
# process. torch_scatter, which fairchem imports at module level, has no wheel for recent torch:
# a plain-torch stand-in (benchmarks/reference_shims/torch_scatter) is put on the environment's
# path by a .pth file, so no PYTHONPATH is needed.
#
# Environment variables:
#   PYTHON         the interpreter to create the environment from (default: python3)
#   VENV           where to create it (default: .venv-reference in the clone's root)
#   TORCH_SPEC     the torch requirement (default: torch==2.13.0, the version the numbers in
#                  benchmarks/RESULTS.md were measured with); on a CUDA machine pip's default
#                  torch wheel is a CUDA build
#   PIP_* variables (e.g. PIP_INDEX_URL, PIP_EXTRA_INDEX_URL) reach pip as usual.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv-reference}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# torch and the packages both implementations use.
"${PIP[@]}" "$TORCH_SPEC" "e3nn>=0.5" "torch-geometric>=2.4" "ase>=3.22" lmdb numpy
# The reference, without its declared (outdated) pins ...
"${PIP[@]}" --no-deps "fairchem-core==1.10.0"
# ... and what `import fairchem.core.models.equiformer_v2` needs of them: fairchem.core.common
# imports yaml, huggingface_hub (a 0.x release, as in fairchem 1.10's time) and pydantic.
"${PIP[@]}" pyyaml "huggingface_hub>=0.27.1,<1" "pydantic>=2.10"
# ... and what its trainer and ASE calculator (OCPCalculator, used by `python -m so2nn.verify` and
# scripts/make_parity_fixtures.py) import: every model of its registry is imported, hence numba,
# and scipy before 1.17 (which removed scipy.special.sph_harm, imported by its DimeNet++ basis).
"${PIP[@]}" wandb tensorboard submitit numba "scipy<1.17"
# torch-sim 0.3 (its FairChemModel runs fairchem 1.x checkpoints: the reference's batched row of
# benchmarks/torch_sim_throughput.py), without its declared pins, beside what it imports.
"${PIP[@]}" --no-deps "torch-sim-atomistic==0.3.0"
"${PIP[@]}" vesin-torch tables h5py tqdm
# so2nn from this clone, editable (its dependencies are all installed above).
"${PIP[@]}" -e "$ROOT"

# The torch_scatter stand-in, importable through a .pth file in the environment's site-packages.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT/benchmarks/reference_shims" > "$SITE/so2nn_reference_shims.pth"

"$VENV/bin/python" - <<'PY'
import torch, fairchem.core, so2nn, torch_scatter
from fairchem.core.common.relaxation.ase_utils import OCPCalculator  # noqa: F401
from fairchem.core.common.utils import setup_imports
setup_imports()  # what OCPCalculator does first: import every registered model
from torch_sim.models.fairchem import FairChemModel  # noqa: F401
from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone  # noqa: F401
from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2  # noqa: F401
print(f"reference environment ready: torch {torch.__version__}, fairchem-core {fairchem.core.__version__}, "
      f"so2nn from {so2nn.__file__.rsplit('/so2nn/', 1)[0]}, torch_scatter stand-in from {torch_scatter.__file__}")
PY
