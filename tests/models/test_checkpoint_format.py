"""so2nn's checkpoint format: the model type it records, the registry that resolves it, and
checkpoints written before types were recorded (fixtures made by that code) loading unchanged."""

import shutil
from pathlib import Path

import pytest
import torch

from so2nn.models import (
    INPUT_FIELDS,
    EquiformerV2,
    EquiformerV2Config,
    build_model,
    load_model,
    model_class,
    model_type,
    register_importer,
    register_model,
    registered_importers,
    upgrade_checkpoint,
)
from so2nn.training import Trainer

FIXTURES = Path(__file__).parent / "fixtures"


def _legacy_inputs(expected):
    return {k: v for k, v in expected["input"].items() if k in INPUT_FIELDS}


def test_a_format_1_checkpoint_loads_with_identical_outputs(tmp_path):
    legacy = torch.load(FIXTURES / "legacy_model.pt", weights_only=False)
    assert legacy["version"] == 1 and "model_type" not in legacy
    assert any(k.startswith("energy_block.") for k in legacy["model"]) and "energy_lin_ref" in legacy["model"]
    expected = legacy["expected"]
    for load in (load_model, EquiformerV2.from_checkpoint):
        model = load(FIXTURES / "legacy_model.pt").eval()
        assert isinstance(model, EquiformerV2) and model.config.use_energy_lin_ref
        with torch.no_grad():
            out = model(**_legacy_inputs(expected))
        # to float32 rounding: the outputs were recorded before the grid MLP's first and last
        # linear maps moved off the grid (they commute with the grid transforms), which changed
        # the order of the float sums
        torch.testing.assert_close(out["energy"], expected["energy"], rtol=1e-6, atol=0)
        torch.testing.assert_close(out["forces"], expected["forces"], rtol=0,
                                   atol=1e-6 * float(expected["forces"].abs().max()))
    # saved again, it is a format-2 checkpoint of the same model
    model.save(tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=False)
    assert (again["version"], again["model_type"]) == (2, "equiformer_v2")
    # same weights in the same order (an optimiser's state follows the parameter order)
    assert list(again["model"]) == list(upgrade_checkpoint(legacy)["model"])
    assert {k.split(".")[1] for k in again["model"] if k.startswith("heads.")} == {"energy", "forces"}


def test_a_format_1_training_checkpoint_resumes_with_its_ema(tmp_path):
    """The fixture is a run stopped after 3 of 6 steps (and the EMA weights the code that wrote it
    reached after all 6). Resuming here restores every part of the run exactly: the weights, the
    EMA weights and count, the optimiser's moments and the step. The run then continues as a run
    resumed from a checkpoint of today's format does, bit for bit, and ends near the old code's
    EMA weights (only near: a float32 Adam run is sensitive to the order of float sums, which
    the layers have changed since, in its first steps, whose updates are lr times the sign of
    each gradient)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
    from conftest import emt_frames

    state = torch.load(FIXTURES / "legacy_training.pt", weights_only=False)
    data = emt_frames(8, seed=0), emt_frames(2, seed=1)
    with pytest.warns(UserWarning, match="records no data sources"):  # format 1 predates data records
        trainer = Trainer.resume(FIXTURES / "legacy_training.pt", *data, tmp_path / "a", progress=False)
    assert trainer.step == 3 and trainer.ema.num_updates == 3
    upgraded = upgrade_checkpoint({"version": 1, "model": state["ema_state"]["weights"]})["model"]
    for key, value in trainer.ema.module.state_dict().items():
        assert torch.equal(value, upgraded[key]), key
    moments = trainer.optimizer.state_dict()["state"]
    for index, saved in state["optimizer"]["state"].items():
        assert all(torch.equal(moments[index][name], saved[name]) for name in saved), index
    trainer.save_checkpoint()  # today's format, at step 3
    shutil.copy(tmp_path / "a" / "checkpoint.pt", tmp_path / "step3.pt")
    trainer.fit()
    again = Trainer.resume(tmp_path / "step3.pt", *data, tmp_path / "b", progress=False)
    assert again.step == 3
    again.fit()  # (after the first run: the random state that resume restores is the process's)
    expected = state["expected_after_resume"]
    assert trainer.step == again.step == expected["step"] and trainer.ema.num_updates == expected["num_updates"]
    old = upgrade_checkpoint({"version": 1, "model": expected["ema"]})["model"]
    ema, ema_again = trainer.ema.module.state_dict(), again.ema.module.state_dict()
    assert all(torch.equal(ema[key], ema_again[key]) for key in ema)
    difference = sum(float((ema[k] - v).double().square().sum()) for k, v in old.items()) ** 0.5
    assert difference < 1e-2 * sum(float(v.double().square().sum()) for v in old.values()) ** 0.5


def test_the_registry_resolves_types_and_refuses_what_it_does_not_know(tmp_path):
    assert model_class("equiformer_v2") is EquiformerV2 and model_type(EquiformerV2) == "equiformer_v2"
    config = EquiformerV2Config.tiny(max_num_elements=20, alpha_drop=0.1, drop_path_rate=0.05)
    model = build_model(config)
    assert isinstance(model, EquiformerV2)
    model.save(tmp_path / "model.pt")
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=False)
    with pytest.raises(ValueError, match="unknown model type 'my_model'.*must be registered"):
        load_model({**checkpoint, "model_type": "my_model"})
    with pytest.raises(ValueError, match="newer than this so2nn reads"):
        load_model({**checkpoint, "version": 99})
    with pytest.raises(ValueError, match=r"config has keys \['not_a_field'\]"):
        load_model({**checkpoint, "config": {**checkpoint["config"], "not_a_field": 1}})
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\]"):
        load_model({**checkpoint, "model": {**checkpoint["model"], "extra": torch.zeros(1)}})
    with pytest.raises(ValueError, match="already registered for EquiformerV2"):
        register_model("equiformer_v2", type("Other", (torch.nn.Module,), {"config_class": EquiformerV2Config}))
    with pytest.raises(ValueError, match="already registered as 'equiformer_v2'"):
        register_model("another_name", EquiformerV2)
    with pytest.raises(TypeError, match="no config_class"):
        register_model("plain", torch.nn.Linear)
    with pytest.raises(ValueError, match="not a registered model type"):
        model_type(torch.nn.Linear(1, 1))


def test_load_model_dispatches_by_layout_to_the_importer_that_recognises_it(tmp_path, monkeypatch):
    """load_model asks each registered importer whether it recognises the checkpoint, and hands it to
    that one: so2nn's format, fairchem's, or a layout registered by a user."""
    import so2nn.models._registry as registry

    assert {"so2nn", "fairchem"} <= set(registered_importers())
    monkeypatch.setattr(registry, "_IMPORTERS", dict(registry._IMPORTERS))
    config = EquiformerV2Config(lmax=2, mmax=1, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
                                attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
                                num_distance_basis=16, max_radius=5.0, max_num_elements=20)
    seen = []

    def load_toy(checkpoint, use_ema=True, *, dtype=None, **changes):
        seen.append((checkpoint["toy"], use_ema, dtype, changes))
        return EquiformerV2(config.replace(**changes))

    with pytest.raises(ValueError, match=r"no checkpoint importer recognises .*registered: \['fairchem', 'so2nn'\]"):
        load_model({"toy": 1})
    register_importer("toy_layout", lambda checkpoint: "toy" in checkpoint, load_toy)
    register_importer("toy_layout", registry._IMPORTERS["toy_layout"].recognises, load_toy)  # the same: a no-op
    model = load_model({"toy": 1}, False, dtype=torch.float64, grid_resolution=12)
    assert seen == [(1, False, torch.float64, {"grid_resolution": 12})] and model.config.grid_resolution == 12
    with pytest.raises(ValueError, match="already registered as 'toy_layout'"):
        register_importer("toy_layout", lambda checkpoint: False, load_toy)
    register_importer("greedy", lambda checkpoint: True, load_toy)  # recognises everything: ambiguous
    with pytest.raises(ValueError, match=r"the checkpoint importers \['toy_layout', 'greedy'\] all recognise"):
        load_model({"toy": 1})
    with pytest.raises(TypeError, match="two functions"):
        register_importer("broken", None, load_toy)
