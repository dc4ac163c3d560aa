"""OC20's S2EF metrics: energy MAE, force MAE, force cosine, EFwT; and stress MAEs."""

from __future__ import annotations

import torch

__all__ = ["S2EFMetrics", "decompose_stress"]


class S2EFMetrics:
    r"""Accumulates OC20's S2EF metrics over batches.

    * energy MAE :math:`\frac1B\sum_b |\hat E_b - E_b|` (eV);
    * force MAE, over force components of the evaluated atoms (eV/A);
    * force cosine: mean cosine similarity between predicted and true force vectors;
    * EFwT: fraction of systems whose energy is within 0.02 eV and whose largest force-component
      error is within 0.03 eV/A.

    Baselines that say how much was learned ride along: the energy MAE of predicting
    ``energy_baseline`` (the training mean) for every system and the force MAE of predicting zero.
    Force metrics use the atoms selected by ``mask`` (OC20 evaluates free atoms only).
    ``reduce`` (e.g. a ``torch.distributed`` all-reduce) sums the accumulators across processes.

    Stress, when given to :meth:`update_stress` (``[B, 3, 3]``, eV/A^3), adds
    ``stress_mae`` (over the 9 components), ``stress_isotropic_mae`` (of the l = 0 part, the
    pressure-like :math:`\mathrm{tr}\,\sigma / 3`), ``stress_anisotropic_mae`` (over the 9
    components of the traceless part :math:`\sigma - \frac13 \mathrm{tr}\,\sigma\, I`) and
    the baseline ``stress_mae_zero_baseline`` of predicting zero stress.

    Example:
        >>> m = S2EFMetrics()
        >>> m.update(torch.tensor([1.0]), torch.tensor([1.01]), torch.ones(2, 3), torch.ones(2, 3),
        ...          torch.zeros(2, dtype=torch.long))
        >>> m.compute()["efwt"]
        1.0
        >>> m.update_stress(torch.eye(3).expand(1, 3, 3), torch.zeros(1, 3, 3))
        >>> stress = {k: round(v, 4) for k, v in m.compute().items() if k.startswith("stress")}
        >>> stress["stress_mae"], stress["stress_isotropic_mae"], stress["stress_anisotropic_mae"]
        (0.3333, 1.0, 0.0)
        >>> stress["stress_mae_zero_baseline"]
        0.0
    """

    ENERGY_THRESHOLD = 0.02
    FORCE_THRESHOLD = 0.03

    def __init__(self, energy_baseline: float = 0.0) -> None:
        self.energy_baseline = energy_baseline
        self._sums = torch.zeros(8, dtype=torch.float64)
        self._stress_sums = torch.zeros(5, dtype=torch.float64)

    def update(self, energy_pred, energy_true, forces_pred, forces_true, batch, mask=None) -> None:
        """``energy_*: [B]``, ``forces_*: [N, 3]``, ``batch: [N]`` (system of each atom), ``mask: [N]``
        bool."""
        energy_pred, energy_true = (
            energy_pred.detach().double().view(-1),
            energy_true.detach().double().view(-1),
        )
        forces_pred, forces_true = forces_pred.detach().double(), forces_true.detach().double()
        if mask is None:
            mask = torch.ones(forces_true.shape[0], dtype=torch.bool, device=forces_true.device)
        energy_error = (energy_pred - energy_true).abs()
        force_error = (forces_pred - forces_true).abs()
        max_force_error = torch.zeros_like(energy_error).scatter_reduce(
            0, batch[mask], force_error[mask].amax(dim=1), "amax", include_self=True
        )
        within = (energy_error <= self.ENERGY_THRESHOLD) & (max_force_error <= self.FORCE_THRESHOLD)
        cosine = torch.nn.functional.cosine_similarity(forces_pred[mask], forces_true[mask], dim=1)
        sums = torch.stack(
            [
                energy_error.sum(),
                torch.tensor(float(energy_true.numel()), dtype=torch.float64, device=energy_error.device),
                force_error[mask].sum(),
                torch.tensor(3.0 * int(mask.sum()), dtype=torch.float64, device=energy_error.device),
                cosine.sum(),
                within.double().sum(),
                (energy_true - self.energy_baseline).abs().sum(),
                forces_true[mask].abs().sum(),
            ]
        )
        self._sums += sums.cpu()

    def update_stress(self, stress_pred, stress_true) -> None:
        """``stress_*: [B, 3, 3]`` (eV/A^3)."""
        pred, true = (
            stress_pred.detach().double().reshape(-1, 3, 3),
            stress_true.detach().double().reshape(-1, 3, 3),
        )
        iso_pred, aniso_pred = decompose_stress(pred)
        iso_true, aniso_true = decompose_stress(true)
        self._stress_sums += torch.stack(
            [
                (pred - true).abs().sum(),
                (iso_pred - iso_true).abs().sum(),
                (aniso_pred - aniso_true).abs().sum(),
                true.abs().sum(),
                torch.tensor(float(true.shape[0]), dtype=torch.float64, device=true.device),
            ]
        ).cpu()

    def compute(self, reduce=None) -> dict[str, float]:
        sums = torch.cat([self._sums, self._stress_sums])
        if reduce is not None:
            sums = reduce(sums)
        e_err, systems, f_err, components, cos, within, e_base, f_base = sums[:8].tolist()
        s_err, iso_err, aniso_err, s_base, stressed = sums[8:].tolist()
        atoms = components / 3
        stress = (
            {}
            if stressed == 0
            else {
                "stress_mae": s_err / (9 * stressed),
                "stress_isotropic_mae": iso_err / stressed,
                "stress_anisotropic_mae": aniso_err / (9 * stressed),
                "stress_mae_zero_baseline": s_base / (9 * stressed),
            }
        )
        return {
            "energy_mae": e_err / max(systems, 1),
            "forces_mae": f_err / max(components, 1),
            "forces_cos": cos / max(atoms, 1),
            "efwt": within / max(systems, 1),
            "energy_mae_mean_baseline": e_base / max(systems, 1),
            "forces_mae_zero_baseline": f_base / max(components, 1),
            **stress,
        }


def decompose_stress(stress: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The isotropic (l = 0) and anisotropic (traceless symmetric, l = 2) parts of ``[B, 3, 3]``
    stresses: :math:`p = \frac13 \mathrm{tr}\,\sigma` ``[B]`` and :math:`\sigma - p I`
    ``[B, 3, 3]`` (for a symmetric :math:`\sigma`, the two irreducible parts under rotation).

    Example:
        >>> iso, aniso = decompose_stress(torch.diag(torch.tensor([1.0, 2.0, 3.0])).unsqueeze(0))
        >>> iso, torch.diagonal(aniso, dim1=1, dim2=2)
        (tensor([2.]), tensor([[-1.,  0.,  1.]]))
    """
    isotropic = torch.diagonal(stress, dim1=-2, dim2=-1).sum(-1) / 3
    identity = torch.eye(3, dtype=stress.dtype, device=stress.device)
    return isotropic, stress - isotropic[..., None, None] * identity
