"""ASE calculators: so2nn models as energy and force engines for ASE's optimisers and dynamics.

Needs ASE (``pip install ase``).
"""

try:
    import ase  # noqa: F401
except ImportError as error:  # pragma: no cover - ase is a test and example dependency
    raise ImportError("so2nn.calculators needs ASE: pip install ase") from error

from ._calculator import EquiformerV2Calculator, So2nnCalculator, fixed_atoms_mask

__all__ = ["EquiformerV2Calculator", "So2nnCalculator", "fixed_atoms_mask"]
