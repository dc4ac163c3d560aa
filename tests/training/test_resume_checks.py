"""A resumed run is the same run: other data, another recipe or another model is refused by name."""

import os

import pytest

from so2nn.data import open_dataset, write_lmdb
from so2nn.training import Trainer, TrainingConfig, data_fingerprint, fingerprint_differences


@pytest.fixture
def stopped_run(emt_data, tiny_model_config, tmp_path):
    """A run of 4 steps stopped after 2, with its checkpoint."""
    train, val = emt_data
    config = TrainingConfig(
        max_steps=4, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=100, checkpoint_every=100
    )
    trainer = Trainer(tiny_model_config, train, val, config, tmp_path, progress=False)
    trainer.fit(stop_after=2)
    assert trainer.step == 2 and trainer.fit_steps == 2 and trainer.run_seconds == trainer.fit_seconds > 0
    return tmp_path / "checkpoint.pt", train, val, config


def test_other_data_is_refused_by_name(stopped_run, emt_data):
    checkpoint, train, val, _ = stopped_run
    with pytest.raises(ValueError, match=r"training data: 32 records in the run, 31 now"):
        Trainer.resume(checkpoint, train[:31], val, checkpoint.parent, progress=False)
    swapped = [val[0], *train[1:]]  # same length, other items
    with pytest.raises(ValueError, match=r"training data: energies of items 0, middle, last") as error:
        Trainer.resume(checkpoint, swapped, val, checkpoint.parent, progress=False)
    assert "--allow-data-change" in str(error.value)
    with pytest.raises(ValueError, match=r"validation data: 8 records in the run, 7 now"):
        Trainer.resume(checkpoint, train, val[:7], checkpoint.parent, progress=False)
    with pytest.warns(UserWarning, match="differs from the run's"):
        trainer = Trainer.resume(
            checkpoint, swapped, val, checkpoint.parent, progress=False, allow_data_change=True
        )
    assert trainer.step == 2


def test_changes_of_recipe_or_model_are_refused_extending_max_steps_is_not(stopped_run, tiny_model_config):
    checkpoint, train, val, config = stopped_run
    with pytest.raises(ValueError, match=r"lr: 0\.001 in the run, 0\.0005 now"):
        Trainer.resume(checkpoint, train, val, checkpoint.parent, progress=False, lr=5e-4)
    with pytest.raises(ValueError, match=r"batch_size: 4 in the run, 8 now"):
        Trainer.resume(
            checkpoint,
            train,
            val,
            checkpoint.parent,
            progress=False,
            config=config.__class__(**{**config.__dict__, "batch_size": 8}),
        )
    with pytest.raises(ValueError, match=r"model num_layers: 1 in the run, 2 now"):
        Trainer.resume(
            checkpoint,
            train,
            val,
            checkpoint.parent,
            progress=False,
            model_config=tiny_model_config.replace(num_layers=2),
        )
    with pytest.raises(ValueError, match=r"max_steps: 1 is before the run's step 2"):
        Trainer.resume(checkpoint, train, val, checkpoint.parent, progress=False, max_steps=1)
    # the same model config (its normalisation is derived from the data, not compared), a longer
    # run and other logging: the same run, continued
    trainer = Trainer.resume(
        checkpoint,
        train,
        val,
        checkpoint.parent,
        progress=False,
        config=config,
        model_config=tiny_model_config,
        max_steps=6,
        log_every=2,
    )
    before = trainer.run_seconds
    trainer.fit()
    assert trainer.step == 6 and trainer.fit_steps == 4
    assert trainer.run_seconds == pytest.approx(before + trainer.fit_seconds)
    assert trainer.summary().startswith("4 steps in ") and "the run: step 6 of 6" in trainer.summary()


def test_file_fingerprint_sees_size_and_modification_time(emt_data, tmp_path):
    train, _ = emt_data
    path = tmp_path / "train.lmdb"
    write_lmdb(path, train[:6])
    recorded = data_fingerprint(open_dataset(path))
    assert recorded["length"] == 6 and recorded["records_per_file"] == [6]
    assert [f["path"] for f in recorded["files"]] == [str(path.resolve())]
    assert fingerprint_differences(recorded, data_fingerprint(open_dataset(path)), "training data") == []
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint_differences(recorded, data_fingerprint(open_dataset(path)), "training data") == [
        f"training data: {path.resolve()} was modified since the run (same size, other modification time)"
    ]
    write_lmdb(path, train[:7])
    differences = fingerprint_differences(recorded, data_fingerprint(open_dataset(path)), "training data")
    assert differences[0] == "training data: 6 records in the run, 7 now"
    assert len(differences) == 2 and ("bytes in the run" in differences[1] or "modified" in differences[1])
