import csv

import pytest
import torch
from torch_geometric.data import Batch

from so2nn.models import EquiformerV2
from so2nn.training import Trainer, TrainingConfig


def _losses(path):
    with open(path / "train_log.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_loss_falls_and_outputs_are_written(emt_data, tiny_model_config, tmp_path):
    train, val = emt_data
    config = TrainingConfig(max_steps=60, batch_size=4, lr=1e-3, warmup_steps=4, eval_every=30, checkpoint_every=30,
                            log_every=5)
    model_config = tiny_model_config.replace(alpha_drop=0.0, drop_path_rate=0.0)
    trainer = Trainer(model_config, train, val, config, tmp_path, progress=False)
    everything = Batch.from_data_list(train)

    def training_set_loss():  # per-batch losses are too noisy to compare: use the whole set
        with torch.no_grad():
            return float(trainer._loss(trainer.model.eval()(everything), everything)[0])

    first, first_loss = trainer.evaluate(), training_set_loss()
    metrics = trainer.fit()
    assert training_set_loss() < 0.6 * first_loss
    assert metrics["forces_mae"] < 0.6 * first["forces_mae"], (first, metrics)
    assert {p.name for p in tmp_path.iterdir()} >= {"checkpoint.pt", "model.pt", "train_log.csv", "val_log.csv",
                                                    "metrics.json"}
    assert trainer.plot().stat().st_size > 10_000
    # model.pt holds the EMA weights and the normalisation: it reproduces the trainer's evaluation
    model = EquiformerV2.from_checkpoint(tmp_path / "model.pt").eval()
    batch = trainer.predictions()
    out = model(Batch.from_data_list(val))
    torch.testing.assert_close(out["energy"], batch["energy_pred"])
    assert model.config.energy_std != 1.0 and model.config.forces_std != 1.0


def test_interrupted_and_resumed_run_repeats_the_uninterrupted_one(emt_data, tiny_model_config, tmp_path):
    """Dropout and drop-path are on, the run crosses epoch boundaries and stops mid-epoch:
    the resumed run must still reproduce every loss of the uninterrupted one exactly."""
    train, val = emt_data
    config = TrainingConfig(max_steps=18, batch_size=5, lr=1e-3, warmup_steps=3, eval_every=100, checkpoint_every=100,
                            log_every=1)
    whole = Trainer(tiny_model_config, train, val, config, tmp_path / "whole", progress=False)
    whole.fit()

    first = Trainer(tiny_model_config, train, val, config, tmp_path / "split", progress=False)
    first.fit(stop_after=8)  # 6 batches per epoch: stops in the second epoch
    assert first.step == 8 and not (tmp_path / "split" / "model.pt").exists()
    # a killed run may have logged past its last checkpoint: resume drops those rows
    with open(tmp_path / "split" / "train_log.csv", "a") as f:
        f.write("9,1,123.0,0,0,0,0,0,0,0\n")
    del first
    torch.manual_seed(1234)  # the resumed process starts from a different global RNG state
    resumed = Trainer.resume(tmp_path / "split" / "checkpoint.pt", train, val, tmp_path / "split", progress=False)
    resumed.fit()
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")
    for a, b in zip(whole.ema.module.parameters(), resumed.ema.module.parameters()):
        assert torch.equal(a, b)


def test_a_signal_during_validation_stops_it_between_batches(emt_data, tiny_model_config, tmp_path):
    """SIGINT while a long validation runs: the run stops after the batch in hand, with the
    step's checkpoint saved and no validation row for it, not after the whole validation."""
    import os
    import signal

    train, val = emt_data
    read = []

    class Watched(torch.utils.data.Dataset):  # the validation set, sending SIGINT at the step-4 validation
        def __len__(self):
            return len(val)

        def __getitem__(self, i):
            read.append(i)
            if trainer.step == 4 and len(read) == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return val[i]

    config = TrainingConfig(max_steps=8, batch_size=4, eval_batch_size=1, lr=1e-3, warmup_steps=2, eval_every=4,
                            checkpoint_every=100)
    trainer = Trainer(tiny_model_config, train, Watched(), config, tmp_path, progress=False)
    trainer.evaluate = _after_step_0(trainer.evaluate, read)
    trainer.fit()
    assert trainer.step == 4 and trainer.stop_signal == signal.SIGINT
    assert len(read) < len(val), "the validation ran to its end"
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 4
    with open(tmp_path / "val_log.csv", newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [0]


def _after_step_0(evaluate, read):
    """``evaluate``, forgetting the items the step-0 validation read."""
    def wrapped(*args, **kwargs):
        out = evaluate(*args, **kwargs)
        read.clear()
        return out
    return wrapped


def test_checkpoint_writes_are_atomic(emt_data, tiny_model_config, tmp_path, monkeypatch):
    train, val = emt_data
    config = TrainingConfig(max_steps=2, batch_size=4, eval_every=100, checkpoint_every=1)
    trainer = Trainer(tiny_model_config, train, val, config, tmp_path, progress=False)
    trainer.fit(stop_after=1)
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_free_atom_forces_only(emt_data, tiny_model_config, tmp_path):
    """With train_on_free_atoms, the force loss ignores fixed atoms: changing their targets
    changes nothing."""
    train, val = emt_data
    trainer = Trainer(tiny_model_config, train, val, TrainingConfig(batch_size=4), tmp_path, progress=False)
    batch = Batch.from_data_list(train[:4])
    out = trainer.model.eval()(batch)
    before = trainer._loss(out, batch)[1]["force_loss"]
    batch.forces[batch.fixed] += 10.0
    assert torch.equal(trainer._loss(out, batch)[1]["force_loss"], before)


def test_bad_inputs(emt_data, tiny_model_config, tmp_path):
    train, val = emt_data
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(tiny_model_config, train[:2], val, TrainingConfig(batch_size=4), tmp_path, progress=False)
    (tmp_path / "model.pt").parent.mkdir(exist_ok=True)
    EquiformerV2(tiny_model_config).save(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not a so2nn training checkpoint"):
        Trainer.resume(tmp_path / "model.pt", train, val, tmp_path)
    with pytest.raises(ValueError, match="have no 'forces' \\(an energy-only model\\)"):
        Trainer(tiny_model_config.replace(regress_forces=False), train, val, TrainingConfig(batch_size=4),
                tmp_path, progress=False)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_learns_and_resumes(emt_data, tiny_model_config, tmp_path, amp):
    """The --amp paths (autocast, and for fp16 the loss scaler) on the CPU: the same code runs on CUDA."""
    train, val = emt_data
    config = TrainingConfig(max_steps=40, batch_size=4, lr=1e-3, warmup_steps=4, eval_every=20, checkpoint_every=20,
                            log_every=5, amp=amp)
    model_config = tiny_model_config.replace(alpha_drop=0.0, drop_path_rate=0.0)
    trainer = Trainer(model_config, train, val, config, tmp_path, progress=False)
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    first = trainer.evaluate()
    metrics = trainer.fit(stop_after=30)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics["forces_mae"] < 0.9 * first["forces_mae"], (first, metrics)
    # fp16: the scaler skips the steps whose gradients overflow at its current scale (6 of 30 here)
    optimizer_steps = max(int(state["step"]) for state in trainer.optimizer.state.values())
    assert optimizer_steps >= 20 if amp == "fp16" else optimizer_steps == 30
    with torch.autocast("cpu", dtype=torch.bfloat16 if amp == "bf16" else torch.float16):
        out = trainer.model(Batch.from_data_list(val[:2]))
    assert out["forces"].dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
    if amp == "fp16":  # the loss scale is part of the checkpoint and comes back on resume
        scale = trainer.scaler.get_scale()
        resumed = Trainer.resume(tmp_path / "checkpoint.pt", train, val, tmp_path, progress=False)
        assert resumed.scaler.is_enabled() and resumed.scaler.get_scale() == scale
        resumed.fit()
        assert resumed.step == 40


def test_a_training_step_on_a_batch_with_an_isolated_atom(emt_data, tiny_model_config, tmp_path):
    """One system of the batch has no edges (an O atom alone): the step is finite and the
    isolated atom's force is exactly zero."""
    from torch_geometric.data import Data

    train, val = emt_data
    lone = Data(pos=torch.zeros(1, 3), atomic_numbers=torch.tensor([8]), cell=torch.eye(3).view(1, 3, 3) * 20.0,
                natoms=1, energy=torch.tensor([-0.5]), forces=torch.zeros(1, 3), fixed=torch.zeros(1, dtype=torch.bool),
                tags=torch.tensor([2]))
    for direct_forces in (True, False):
        trainer = Trainer(tiny_model_config.replace(direct_forces=direct_forces), train, val,
                          TrainingConfig(batch_size=4), tmp_path / str(direct_forces), progress=False)
        batch = Batch.from_data_list(train[:3] + [lone])
        stats = trainer.train_step(batch)
        assert all(torch.isfinite(torch.tensor(float(v))) for v in stats.values())
        out = trainer.model.eval()(batch)
        assert torch.isfinite(out["energy"]).all() and torch.equal(out["forces"][-1], torch.zeros(3))
