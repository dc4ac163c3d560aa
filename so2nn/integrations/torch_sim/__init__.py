r"""so2nn models in torch-sim: batched relaxations and molecular dynamics of many systems at once.

torch-sim (the ``torch-sim-atomistic`` package; ``pip install -e ".[sim]"`` in a clone) runs optimisers
and integrators on a ``SimState`` that holds many systems, evaluating one model over the whole
batch. :class:`TorchSimModel` is its model interface for any so2nn model or checkpoint;
:func:`relax_batch` relaxes many ASE structures at once with torch-sim's FIRE (OC20's fixed
atoms held, the cell too when the model has a stress output); :func:`run_md` runs NVE or NVT
Langevin dynamics; :func:`state_from_atoms` builds the state for torch-sim's own ``ts.optimize``
and ``ts.integrate`` with ASE's fixed atoms held by torch-sim's ``FixAtoms`` constraint. Works
with torch-sim 0.3 (the newest for Python 3.11) and 0.6.
"""

try:
    import torch_sim  # noqa: F401
except ImportError as error:  # pragma: no cover - torch-sim is an optional dependency
    raise ImportError(
        'so2nn.integrations.torch_sim needs torch-sim: pip install torch-sim-atomistic '
        '(or pip install -e ".[sim]" in a clone of so2nn)'
    ) from error

from ._model import TorchSimModel
from ._runs import MDRun, Relaxation, relax_batch, run_md
from ._state import state_from_atoms

__all__ = ["MDRun", "Relaxation", "TorchSimModel", "relax_batch", "run_md", "state_from_atoms"]
