"""A validation split of the training data: the statistics are the training part's, the split is
in the checkpoint, and a resume on another split is refused."""

import pytest
import torch

from so2nn.data import split_dataset, target_statistics
from so2nn.training import Trainer, TrainingConfig, recorded_split


def test_statistics_come_from_the_training_part_and_the_split_is_recorded(emt_data, tiny_model_config,
                                                                          tmp_path):
    frames = emt_data[0] + emt_data[1]
    train, val = split_dataset(frames, valid_fraction=0.25, seed=2)
    config = TrainingConfig(max_steps=2, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=100,
                            checkpoint_every=100, element_references=True)
    trainer = Trainer(tiny_model_config, train, val, config, tmp_path, progress=False)
    own = target_statistics(train, element_references=tiny_model_config.max_num_elements)
    whole = target_statistics(frames, element_references=tiny_model_config.max_num_elements)
    fitted = trainer.model.target_statistics
    assert fitted.energy_mean == pytest.approx(own["energy_mean"], abs=1e-9)
    assert fitted.energy_std == pytest.approx(own["energy_std"])
    assert fitted.forces_std == pytest.approx(own["forces_rms"])
    assert list(fitted.element_references) == pytest.approx(own["element_references"])
    assert abs(fitted.forces_std - whole["forces_rms"]) > 1e-4  # the held-out frames would change it
    assert trainer.train_energy_mean == pytest.approx(own["raw_energy_mean"])
    trainer.fit(stop_after=1)

    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert recorded_split(state) == train.split and recorded_split(tmp_path / "checkpoint.pt") == train.split
    resumed = Trainer.resume(tmp_path / "checkpoint.pt", *recorded_split(state).apply(frames), tmp_path,
                             progress=False)
    assert resumed.step == 1
    other_train, other_val = split_dataset(frames, valid_fraction=0.25, seed=3)
    with pytest.raises(ValueError, match="training data: other subset indices"):
        Trainer.resume(tmp_path / "checkpoint.pt", other_train, other_val, tmp_path, progress=False)
