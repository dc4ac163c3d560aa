"""The loss terms against numbers computed independently (numpy, element by element)."""

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from so2nn.models import TargetStatistics
from so2nn.training import (
    TrainingConfig,
    decomposed_stress_loss,
    energy_loss,
    force_loss,
    s2ef_loss,
    stress_loss,
)


def _random(rng, *shape):
    return torch.tensor(rng.normal(size=shape), dtype=torch.float32)


def test_each_term_by_hand():
    rng = np.random.default_rng(0)
    e_pred, e_true, natoms = _random(rng, 3), _random(rng, 3), torch.tensor([2, 5, 3])
    f_pred, f_true = _random(rng, 10, 3), _random(rng, 10, 3)
    s_pred, s_true = _random(rng, 3, 3, 3), _random(rng, 3, 3, 3)
    mask = torch.tensor([True, False] * 5)
    ep, et, fp, ft = (t.double().numpy() for t in (e_pred, e_true, f_pred, f_true))
    sp, st = s_pred.double().numpy(), s_true.double().numpy()

    assert float(energy_loss(e_pred, e_true, 2.0)) == pytest.approx(np.mean(np.abs(ep - et)) / 2.0, rel=1e-6)
    per_atom = np.mean([abs(ep[b] - et[b]) / n for b, n in enumerate([2, 5, 3])]) / 2.0
    assert float(energy_loss(e_pred, e_true, 2.0, natoms)) == pytest.approx(per_atom, rel=1e-6)
    norms = [np.sqrt(sum((fp[i, k] - ft[i, k]) ** 2 for k in range(3))) for i in range(10)]
    assert float(force_loss(f_pred, f_true, 0.5)) == pytest.approx(np.mean(norms) / 0.5, rel=1e-6)
    assert float(force_loss(f_pred, f_true, 0.5, mask)) == pytest.approx(np.mean(norms[::2]) / 0.5, rel=1e-6)
    assert float(stress_loss(s_pred, s_true, 0.1)) == pytest.approx(np.mean(np.abs(sp - st)) / 0.1, rel=1e-5)
    iso, aniso = decomposed_stress_loss(s_pred, s_true, 0.1)
    p_pred, p_true = np.trace(sp, axis1=1, axis2=2) / 3, np.trace(st, axis1=1, axis2=2) / 3
    traceless = (sp - p_pred[:, None, None] * np.eye(3)) - (st - p_true[:, None, None] * np.eye(3))
    assert float(iso) == pytest.approx(np.mean(np.abs(p_pred - p_true)) / 0.1, rel=1e-5)
    assert float(aniso) == pytest.approx(np.mean(np.abs(traceless)) / 0.1, rel=1e-5)
    # a pure pressure error is all isotropic; a traceless one all anisotropic
    pressure = torch.eye(3).expand(2, 3, 3) * 0.3
    shear = torch.tensor([[0.0, 0.2, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0]]).expand(2, 3, 3)
    assert float(decomposed_stress_loss(pressure, torch.zeros(2, 3, 3), 1.0)[1]) == pytest.approx(
        0.0, abs=1e-7
    )
    assert float(decomposed_stress_loss(shear, torch.zeros(2, 3, 3), 1.0)[0]) == pytest.approx(0.0, abs=1e-7)


def test_the_weighted_loss_and_the_free_atoms():
    rng = np.random.default_rng(1)
    items = [
        Data(
            pos=_random(rng, n, 3),
            energy=_random(rng, 1),
            forces=_random(rng, n, 3),
            natoms=n,
            fixed=torch.tensor([True] + [False] * (n - 1)),
            stress=_random(rng, 1, 3, 3),
        )
        for n in (3, 4)
    ]
    batch = Batch.from_data_list(items)
    out = {"energy": _random(rng, 2), "forces": _random(rng, 7, 3), "stress": _random(rng, 2, 3, 3)}
    stats = TargetStatistics(energy_mean=0.0, energy_std=2.0, forces_std=0.5)
    config = TrainingConfig(stress_loss="plain", stress_coefficient=3.0)
    loss, terms = s2ef_loss(out, batch, config, stats, stress_std=0.25)
    free = ~batch.fixed
    assert torch.equal(terms["force_loss"], force_loss(out["forces"], batch.forces, 0.5, free))
    assert torch.equal(terms["stress_loss"], stress_loss(out["stress"], batch.stress, 0.25))
    expected = 4.0 * terms["energy_loss"] + 100.0 * terms["force_loss"] + 3.0 * terms["stress_loss"]
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # without stress_std (no stress in the data or the model): energy and forces only
    _, plain = s2ef_loss(out, batch, config, stats)
    assert sorted(plain) == ["energy_loss", "force_loss"]
    # every atom fixed: the force loss falls back to all atoms, rather than to the mean of nothing
    batch.fixed = torch.ones(7, dtype=torch.bool)
    assert torch.equal(
        s2ef_loss(out, batch, config, stats)[1]["force_loss"], force_loss(out["forces"], batch.forces, 0.5)
    )
    all_atoms = TrainingConfig(train_on_free_atoms=False)
    batch.fixed = free.logical_not()
    assert torch.equal(
        s2ef_loss(out, batch, all_atoms, stats)[1]["force_loss"], force_loss(out["forces"], batch.forces, 0.5)
    )
