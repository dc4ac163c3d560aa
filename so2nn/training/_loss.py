r"""The training loss: the EquiformerV2 paper's energy and force terms, and OMat24's stress terms.

Each term is a function of predictions and targets (physical units), divided by the training
set's scale of that target, so that it is the loss of the normalised targets the network
predicts. :func:`s2ef_loss` weighs them with a :class:`TrainingConfig`'s coefficients:

.. math::

    \mathcal L = \lambda_E\,\mathcal L_E + \lambda_F\,\mathcal L_F
    \;[+\;\lambda_p\,\mathcal L_p + \lambda_a\,\mathcal L_a
    \quad\text{or}\quad +\;\lambda_\sigma\,\mathcal L_\sigma].
"""

from __future__ import annotations

import torch
from torch_geometric.data import Batch

from ..models import TargetStatistics
from ._config import TrainingConfig
from ._metrics import decompose_stress

__all__ = ["decomposed_stress_loss", "energy_loss", "force_loss", "s2ef_loss", "stress_loss"]


def energy_loss(pred: torch.Tensor, true: torch.Tensor, energy_std: float,
                natoms: torch.Tensor | None = None) -> torch.Tensor:
    r"""The energy MAE over the energy scale:
    :math:`\mathcal L_E = \frac{1}{B}\sum_b |\hat E_b - E_b| / \sigma_E`, or with ``natoms``
    per atom, :math:`\frac{1}{B}\sum_b |\hat E_b - E_b| / (N_b\,\sigma_E)` (the OMat24 recipe).

    Args:
        pred, true: energies ``[B]`` (eV).
        energy_std: :math:`\sigma_E` (eV).
        natoms: atoms per system ``[B]``, for the per-atom MAE.

    Example:
        >>> energy_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), energy_std=0.5)
        tensor(3.)
        >>> energy_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), 0.5, natoms=torch.tensor([1, 4]))
        tensor(1.5000)
    """
    error = (pred.float() - true.reshape(-1).float()).abs()
    if natoms is not None:
        error = error / natoms.reshape(-1).float()
    return error.mean() / energy_std


def force_loss(pred: torch.Tensor, true: torch.Tensor, forces_std: float,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""The mean per-atom L2 force error over the force scale:
    :math:`\mathcal L_F = \frac{1}{N}\sum_i \lVert \hat F_i - F_i \rVert_2 / \sigma_F`, over the
    atoms in ``mask`` (the free atoms) when given.

    Args:
        pred, true: forces ``[N, 3]`` (eV/Angstrom).
        forces_std: :math:`\sigma_F` (eV/Angstrom), the training set's force RMS.
        mask: ``[N]`` bool, the atoms the loss is taken over.

    Example:
        >>> force_loss(torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]]), torch.zeros(2, 3), forces_std=2.0)
        tensor(1.5000)
        >>> force_loss(torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]]), torch.zeros(2, 3), 2.0,
        ...            mask=torch.tensor([True, False]))
        tensor(2.5000)
    """
    error = (pred.float() - true.float()).norm(dim=1)
    if mask is not None:
        error = error[mask]
    return error.mean() / forces_std


def stress_loss(pred: torch.Tensor, true: torch.Tensor, stress_std: float) -> torch.Tensor:
    r"""The plain stress MAE over its 9 components and the stress scale:
    :math:`\mathcal L_\sigma = \frac{1}{9B}\sum_b \sum_{jk} |\hat\sigma_{b,jk} - \sigma_{b,jk}| / \sigma_S`.

    Args:
        pred, true: stresses ``[B, 3, 3]`` (eV/Angstrom^3).
        stress_std: :math:`\sigma_S`, the standard deviation of the training stress.

    Example:
        >>> stress_loss(torch.eye(3).unsqueeze(0), torch.zeros(1, 3, 3), stress_std=1.0)
        tensor(0.3333)
    """
    pred, true = pred.float().reshape(-1, 3, 3), true.float().reshape(-1, 3, 3)
    return (pred - true).abs().mean() / stress_std


def decomposed_stress_loss(pred: torch.Tensor, true: torch.Tensor,
                           stress_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""OMat24's stress terms: the MAE of the isotropic part and of the anisotropic part.

    With :math:`p = \frac13\mathrm{tr}\,\sigma` (the l = 0 part) and :math:`\sigma - pI` (the
    traceless l = 2 part, :func:`~so2nn.training.decompose_stress`):

    .. math::

        \mathcal L_p = \frac{1}{B}\sum_b |\hat p_b - p_b| / \sigma_S, \qquad
        \mathcal L_a = \frac{1}{9B}\sum_b \sum_{jk}
        |(\hat\sigma_b - \hat p_b I)_{jk} - (\sigma_b - p_b I)_{jk}| / \sigma_S.

    Args:
        pred, true: stresses ``[B, 3, 3]`` (eV/Angstrom^3).
        stress_std: :math:`\sigma_S`, the standard deviation of the training stress.

    Returns:
        ``(isotropic, anisotropic)``: :math:`\mathcal L_p` and :math:`\mathcal L_a`.

    Example:
        >>> decomposed_stress_loss(torch.diag(torch.tensor([3.0, 0.0, 0.0])).unsqueeze(0),
        ...                        torch.zeros(1, 3, 3), stress_std=1.0)
        (tensor(1.), tensor(0.4444))
    """
    (iso_pred, aniso_pred) = decompose_stress(pred.float().reshape(-1, 3, 3))
    (iso_true, aniso_true) = decompose_stress(true.float().reshape(-1, 3, 3))
    isotropic = (iso_pred - iso_true).abs().mean() / stress_std
    return isotropic, (aniso_pred - aniso_true).abs().mean() / stress_std


def s2ef_loss(
    out: dict[str, torch.Tensor],
    batch: Batch,
    config: TrainingConfig,
    statistics: TargetStatistics,
    stress_std: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""The weighted training loss of a model's outputs ``out`` on ``batch``, and its terms.

    :math:`\lambda_E\,\mathcal L_E + \lambda_F\,\mathcal L_F` (:func:`energy_loss`, per atom
    with ``config.energy_per_atom``; :func:`force_loss`, over the free atoms when the batch
    marks ``fixed`` atoms, ``config.train_on_free_atoms`` and some atom is free), scaled by
    ``statistics``' :math:`\sigma_E` and :math:`\sigma_F`. Given ``stress_std`` (the data and
    the model have stress), the stress terms of ``config.stress_loss`` too: :func:`stress_loss`
    (``"plain"``) or :func:`decomposed_stress_loss` (``"decomposed"``), weighted by
    ``config.stress_coefficients``.

    Returns:
        ``(loss, terms)``: ``terms`` holds ``energy_loss``, ``force_loss`` and, with stress,
        ``stress_loss`` or ``stress_isotropic_loss`` and ``stress_anisotropic_loss``.
    """
    natoms = batch.natoms if config.energy_per_atom else None
    fixed = getattr(batch, "fixed", None)
    free = None if fixed is None else ~fixed.bool()
    mask = free if config.train_on_free_atoms and free is not None and bool(free.any()) else None
    terms = {
        "energy_loss": energy_loss(out["energy"], batch.energy, statistics.energy_std, natoms),
        "force_loss": force_loss(out["forces"], batch.forces, statistics.forces_std, mask),
    }
    loss = config.energy_coefficient * terms["energy_loss"] + config.force_coefficient * terms["force_loss"]
    if stress_std is not None:
        if config.stress_loss == "plain":
            terms["stress_loss"] = stress_loss(out["stress"], batch.stress, stress_std)
        else:
            terms["stress_isotropic_loss"], terms["stress_anisotropic_loss"] = decomposed_stress_loss(
                out["stress"], batch.stress, stress_std
            )
        for name, coefficient in config.stress_coefficients.items():
            loss = loss + coefficient * terms[f"{name}_loss"]
    return loss, terms
