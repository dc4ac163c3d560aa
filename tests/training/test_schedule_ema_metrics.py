import math

import pytest
import torch

from so2nn.training import ExponentialMovingAverage, S2EFMetrics, TrainingConfig, warmup_cosine


def test_warmup_cosine_shape():
    factors = [warmup_cosine(step, 100, 10, 0.2, 0.01) for step in range(101)]
    assert (
        factors[0] == pytest.approx(0.2)
        and factors[5] == pytest.approx(0.6)
        and factors[10] == pytest.approx(1.0)
    )
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])), "cosine decay must not increase"
    assert factors[55] == pytest.approx(0.01 + 0.5 * 0.99 * (1 + math.cos(math.pi * 0.5)))
    assert factors[100] == pytest.approx(0.01)


def test_ema_follows_the_formula_with_warm_up():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        beta = min(0.9, (1 + n) / (10 + n))
        expected = [beta * e + (1 - beta) * p.detach() for e, p in zip(expected, model.parameters())]
    for average, e in zip(ema.module.parameters(), expected):
        torch.testing.assert_close(average, e)
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(model, decay=1.0)


def test_s2ef_metrics_by_hand():
    m = S2EFMetrics(energy_baseline=0.5)
    # system 0: two atoms, energy error 0.01, force errors within 0.03 -> counts for EFwT
    # system 1: one atom, energy error 0.5 -> does not
    energy_pred, energy_true = torch.tensor([1.01, 2.5]), torch.tensor([1.0, 2.0])
    forces_true = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    forces_pred = forces_true + torch.tensor([[0.02, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    batch = torch.tensor([0, 0, 1])
    m.update(energy_pred, energy_true, forces_pred, forces_true, batch)
    r = m.compute()
    assert r["energy_mae"] == pytest.approx((0.01 + 0.5) / 2)
    assert r["forces_mae"] == pytest.approx((0.02 + 2.0) / 9)
    assert r["efwt"] == pytest.approx(0.5)
    cos2 = 2.0 / math.sqrt(8.0)
    assert r["forces_cos"] == pytest.approx((1.0 + 1.0 + cos2) / 3, rel=1e-6)
    assert r["energy_mae_mean_baseline"] == pytest.approx((0.5 + 1.5) / 2)
    assert r["forces_mae_zero_baseline"] == pytest.approx(4.0 / 9)
    # free atoms only: the third atom fixed -> forces metrics over the first two
    m = S2EFMetrics()
    m.update(
        energy_pred, energy_true, forces_pred, forces_true, batch, mask=torch.tensor([True, True, False])
    )
    assert m.compute()["forces_mae"] == pytest.approx(0.02 / 6)


def test_training_config_is_checked():
    with pytest.raises(ValueError, match="amp"):
        TrainingConfig(amp="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        TrainingConfig(batch_size=0)
    # a negative clip or coefficient would make the run climb its loss: refused, by name
    with pytest.raises(ValueError, match=r"clip_grad_norm must be > 0 \(float\('inf'\) for no clipping\), got -1"):
        TrainingConfig(clip_grad_norm=-1.0)
    with pytest.raises(ValueError, match="clip_grad_norm must be > 0"):
        TrainingConfig(clip_grad_norm=0.0)
    for name in ("weight_decay", "energy_coefficient", "force_coefficient", "stress_isotropic_coefficient"):
        with pytest.raises(ValueError, match=f"{name} must be >= 0, got -0.5"):
            TrainingConfig(**{name: -0.5})
    with pytest.raises(ValueError, match="stress_coefficient must be >= 0, got nan"):
        TrainingConfig(stress_loss="plain", stress_coefficient=float("nan"))
    # zero is a choice (a force-only run, no decay, no energy term), and so is no clipping
    TrainingConfig(weight_decay=0.0, energy_coefficient=0.0, clip_grad_norm=float("inf"))
