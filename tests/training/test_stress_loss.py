"""Stress in the loss and the validation: a model that outputs stress learns it from the
embedded bulk data; the combinations of data and model with and without stress behave as
documented."""

import csv
import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from so2nn.data import DataFormatError, LmdbDataset, target_statistics
from so2nn.data.emt import make_bulk_dataset
from so2nn.training import Trainer, TrainingConfig

sys.path.insert(0, str(Path(__file__).parent))
import stress_model  # registers the model type, as any user module would


@pytest.fixture(scope="module")
def bulk(tmp_path_factory):
    train, val = make_bulk_dataset(tmp_path_factory.mktemp("bulk"), train_systems=6, val_systems=2,
                                   frames_per_system=4, seed=1, metals=["Cu", "Ni", "Al"])
    return LmdbDataset(train), LmdbDataset(val)


def eam(stress=True):
    torch.manual_seed(0)
    return stress_model.StressEAM(stress_model.StressEAMConfig(stress=stress))


def set_terms(trainer, dataset):
    everything = Batch.from_data_list(list(dataset))
    return trainer._loss(trainer.model.eval()(everything), everything)[1]


@pytest.mark.parametrize("stress_loss", ["decomposed", "plain"])
def test_the_stress_loss_falls_on_the_bulk_data(bulk, tmp_path, stress_loss):
    train, val = bulk
    config = TrainingConfig(
        max_steps=40,
        batch_size=4,
        lr=2e-2,
        warmup_steps=0,
        eval_every=40,
        checkpoint_every=40,
        ema_decay=0.5,
        element_references=True,
        stress_loss=stress_loss,
    )
    trainer = Trainer(eam(), train, val, config, tmp_path, progress=False)
    assert trainer.use_stress
    assert trainer.stress_std == pytest.approx(target_statistics(train)["stress_std"])
    names = (
        ["stress_loss"] if stress_loss == "plain" else ["stress_isotropic_loss", "stress_anisotropic_loss"]
    )
    before = set_terms(trainer, train)
    assert sorted(before) == sorted(["energy_loss", "force_loss", *names])
    first = trainer.evaluate()
    metrics = trainer.fit()
    after = set_terms(trainer, train)
    stress_before = sum(float(before[n]) for n in names)
    stress_after = sum(float(after[n]) for n in names)
    assert stress_after < 0.7 * stress_before, (stress_before, stress_after)
    for key in ("stress_mae", "stress_isotropic_mae", "stress_anisotropic_mae", "stress_mae_zero_baseline"):
        assert key in metrics and key in first
    assert metrics["stress_mae"] < first["stress_mae"]
    with open(tmp_path / "train_log.csv") as f:
        assert set(names) <= set(next(csv.reader(f)))
    with open(tmp_path / "val_log.csv") as f:
        assert "stress_isotropic_mae" in next(csv.reader(f))


def test_stress_loss_by_hand(bulk, tmp_path):
    """The decomposed terms: MAE of tr/3 and of the traceless part, over the training std."""
    train, val = bulk
    trainer = Trainer(
        eam(),
        train,
        val,
        TrainingConfig(batch_size=4, stress_isotropic_coefficient=2.0, stress_anisotropic_coefficient=3.0),
        tmp_path,
        progress=False,
    )
    batch = Batch.from_data_list(list(train)[:4])
    out = trainer.model.eval()(batch)
    loss, terms = trainer._loss(out, batch)
    pred, true = out["stress"].double(), batch.stress.double()
    iso = (pred.diagonal(dim1=1, dim2=2).sum(-1) - true.diagonal(dim1=1, dim2=2).sum(-1)).abs() / 3
    diff = (
        pred
        - true
        - torch.diag_embed((pred - true).diagonal(dim1=1, dim2=2).sum(-1, keepdim=True).expand(-1, 3) / 3)
    )
    assert float(terms["stress_isotropic_loss"]) == pytest.approx(
        float(iso.mean()) / trainer.stress_std, rel=1e-5
    )
    assert float(terms["stress_anisotropic_loss"]) == pytest.approx(
        float(diff.abs().mean()) / trainer.stress_std, rel=1e-5
    )
    expected = (
        4.0 * terms["energy_loss"]
        + 100.0 * terms["force_loss"]
        + 2.0 * terms["stress_isotropic_loss"]
        + 3.0 * terms["stress_anisotropic_loss"]
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_data_with_stress_and_a_model_without(bulk, tmp_path):
    train, val = bulk
    with pytest.warns(UserWarning, match="the training data has stress but the model does not output it"):
        trainer = Trainer(
            eam(stress=False), train, val, TrainingConfig(batch_size=4), tmp_path, progress=False
        )
    assert not trainer.use_stress
    assert sorted(trainer.train_step(Batch.from_data_list(list(train)[:4]))) == sorted(
        ["loss", "energy_loss", "force_loss", "grad_norm", "lr", "atoms"]
    )
    with pytest.raises(ValueError, match="a stress coefficient is set but the model has no stress"):
        Trainer(
            eam(stress=False),
            train,
            val,
            TrainingConfig(batch_size=4, stress_coefficient=1.0, stress_loss="plain"),
            tmp_path,
            progress=False,
        )


def test_a_stress_model_on_data_without_stress(emt_data, tmp_path):
    train, val = emt_data
    trainer = Trainer(eam(), train, val, TrainingConfig(batch_size=4), tmp_path, progress=False)
    assert not trainer.use_stress and trainer.stress_std is None
    with pytest.raises(ValueError, match="a stress coefficient is set but the training data has no stress"):
        Trainer(
            eam(),
            train,
            val,
            TrainingConfig(batch_size=4, stress_isotropic_coefficient=1.0),
            tmp_path,
            progress=False,
        )


def test_bad_stress_settings_and_mixed_data(bulk, emt_data):
    with pytest.raises(ValueError, match="stress_loss must be"):
        TrainingConfig(stress_loss="huber")
    with pytest.raises(ValueError, match="stress_loss='plain' takes stress_coefficient"):
        TrainingConfig(stress_loss="plain", stress_isotropic_coefficient=1.0)
    with pytest.raises(ValueError, match="stress_loss='decomposed' takes stress_isotropic_coefficient"):
        TrainingConfig(stress_coefficient=1.0)
    mixed = [*list(bulk[0])[:3], *emt_data[0][:3]]
    first, fourth = "item 0 of the dataset", "item 3 of the dataset"
    with pytest.raises(DataFormatError, match=rf"^{fourth}: has no stress but {first} has one"):
        target_statistics(mixed)
    with pytest.raises(DataFormatError, match=rf"^{first}: has no stress but {fourth} has one"):
        target_statistics(mixed[::-1])


def test_the_test_models_stress_is_its_strain_derivative(bulk):
    """sigma = (1/V) dE/d(strain), by central differences in float64 (so the loss trains a real stress)."""
    model = eam().double().eval()
    item = bulk[0][1]
    batch = Batch.from_data_list([item])
    batch.pos, batch.cell = batch.pos.double(), batch.cell.double()
    stress = model(batch)["stress"][0]
    volume = float(torch.linalg.det(batch.cell[0]).abs())
    numeric = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            strain = torch.zeros(3, 3, dtype=torch.float64)
            strain[i, j] += 5e-6
            strain[j, i] += 5e-6
            energies = []
            for sign in (1.0, -1.0):
                moved = batch.clone()
                moved.pos, moved.cell = (
                    batch.pos @ (torch.eye(3) + sign * strain),
                    batch.cell @ (torch.eye(3) + sign * strain),
                )
                energies.append(float(model(moved)["energy"][0]))
            numeric[i, j] = (energies[0] - energies[1]) / (2e-5 * volume)
    torch.testing.assert_close(stress, numeric, rtol=1e-5, atol=1e-9)
