"""Training through torch.compile: checkpoints hold the plain module's weights (no ``_orig_mod``)."""


import pytest
import torch

from so2nn.models import load_model
from so2nn.training import Trainer, TrainingConfig

from .conftest import emt_frames


def recipe(**changes) -> TrainingConfig:
    settings = dict(max_steps=2, batch_size=2, eval_batch_size=4, warmup_steps=0, eval_every=2, checkpoint_every=1,
                    log_every=1)
    return TrainingConfig(**{**settings, **changes})


def test_compiled_training_writes_the_plain_modules_weights(tmp_path, tiny_model_config, capfd):
    train, val = emt_frames(4, seed=0), emt_frames(2, seed=1)
    trainer = Trainer(tiny_model_config, train, val, recipe(compile=True, compile_backend="eager"), tmp_path,
                      progress=False)
    assert isinstance(trainer.ddp_model, torch._dynamo.eval_frame.OptimizedModule)
    trainer.fit()
    assert capfd.readouterr().err.count("so2nn: compiled the model for training: first step") == 1
    plain = set(trainer.model.state_dict())
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    for weights in (checkpoint["model"], checkpoint["ema"]):
        assert set(weights) == plain and not any("_orig_mod" in key for key in weights)
    load_model(tmp_path / "model.pt")  # the final model loads as any other


def test_compile_is_a_resumable_setting(tmp_path, tiny_model_config):
    train, val = emt_frames(4, seed=0), emt_frames(2, seed=1)
    Trainer(tiny_model_config, train, val, recipe(max_steps=1), tmp_path, progress=False).fit()
    resumed = Trainer.resume(tmp_path / "checkpoint.pt", train, val, tmp_path, progress=False, max_steps=2,
                             compile=True, compile_backend="eager")
    assert isinstance(resumed.ddp_model, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(resumed.model, torch._dynamo.eval_frame.OptimizedModule)
    with pytest.raises(ValueError, match="compile_backend='eager' applies with compile=True"):
        TrainingConfig(compile_backend="eager")
