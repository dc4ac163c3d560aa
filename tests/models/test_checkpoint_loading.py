"""Reading checkpoints: data-only by default, and nothing that changes the numbers skipped.

fairchem's trainers save ``state_dict``, ``normalizers``, ``elementrefs``, ``config``,
``val_metrics``, ``amp`` and, with the training state, ``epoch``, ``step``, ``optimizer``,
``scheduler``, ``ema``, ``best_val_metric``. The checkpoints here are built by hand in those
layouts (fairchem is not needed).
"""

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from so2nn.models import EquiformerV2, EquiformerV2Config
from so2nn.models._checkpoint import atomic_save, load_checkpoint, model_checkpoint
from so2nn.models._fairchem import load_fairchem_checkpoint, normalizers_from_fairchem

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("eqv2_*.pt"))


@pytest.fixture(scope="module")
def monolithic():
    """The 31M-layout fixture checkpoint (DDP prefixes, ``config.model``)."""
    return torch.load(FIXTURES[0], weights_only=True)["checkpoint"]


def _hydra(checkpoint, heads=None, extra_weights=()):
    """The same weights in the backbone + heads layout."""

    def rename(key):
        key = key[len("module."):]
        if key.startswith("energy_block."):
            return "module.output_heads.energy." + key
        if key.startswith("force_block."):
            return "module.output_heads.forces." + key
        return "module.backbone." + key

    backbone = {k: v for k, v in checkpoint["config"]["model"].items() if k != "name"}
    heads = {"energy": {"module": "equiformer_v2_energy_head"}} if heads is None else heads
    state = {rename(k): v for k, v in checkpoint["state_dict"].items()}
    state.update({k: torch.zeros(2) for k in extra_weights})
    return {"state_dict": state,
            "config": {"model": {"name": "hydra", "backbone": {"model": "equiformer_v2_backbone", **backbone},
                                 "heads": heads}}}


# -- data-only loading --------------------------------------------------------------------------


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_files_load_data_only(path):
    """Every fixture layout (31M/153M, slab/molecule) reads without unpickling code."""
    loaded = load_checkpoint(path)
    assert EquiformerV2.from_fairchem(loaded["checkpoint"]).num_params > 0


def test_fairchem_trainer_layout_loads_data_only(monolithic, tmp_path):
    """A full fairchem training checkpoint: optimiser, LambdaLR scheduler, AMP scaler, EMA,
    metrics as numpy scalars (what a multi-process all-reduce returns), legacy normalisers."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    shadow = [v.clone() for v in monolithic["state_dict"].values()]
    checkpoint = {
        **monolithic,
        "normalizers": {"target": {"mean": torch.tensor(-0.5), "std": torch.tensor(2.0)},
                        "grad_target": {"mean": torch.tensor(0.0), "std": torch.tensor(2.0)}},
        "elementrefs": {},
        "val_metrics": {"energy_mae": {"total": np.float64(3.0), "numel": np.int64(4), "metric": np.float64(0.75)}},
        "amp": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                "_growth_tracker": 0},
        "epoch": 1.5, "step": 300, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "ema": {"decay": 0.999, "num_updates": 300, "shadow_params": shadow, "collected_params": []},
        "best_val_metric": np.float64(0.75), "primary_metric": "forces_mae",
    }
    path = tmp_path / "fairchem.pt"
    torch.save(checkpoint, path)
    model = EquiformerV2.from_checkpoint(path)
    assert (model.config.energy_mean, model.config.energy_std, model.config.forces_std) == (-0.5, 2.0, 2.0)
    assert load_checkpoint(path)["val_metrics"]["energy_mae"]["metric"] == 0.75


def test_so2nn_checkpoint_with_rng_states_loads_data_only(tmp_path):
    """so2nn's training checkpoints hold numpy's and Python's RNG states; they read data-only."""
    model = EquiformerV2(EquiformerV2Config(num_layers=1, sphere_channels=4, attn_hidden_channels=4, num_heads=1,
                                            attn_alpha_channels=2, attn_value_channels=2, ffn_hidden_channels=4,
                                            edge_channels=4, lmax=2, mmax=1, grid_resolution=8))
    rng = [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}]
    path = tmp_path / "checkpoint.pt"
    atomic_save(model_checkpoint(model, rng=rng, step=7), path)
    loaded = load_checkpoint(path)
    np.random.set_state(loaded["rng"][0]["numpy"])
    random.setstate(loaded["rng"][0]["python"])
    assert loaded["step"] == 7
    assert EquiformerV2.from_checkpoint(path).config == model.config


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this should never run",))


class _Custom:
    pass


def test_a_file_that_would_run_code_is_refused(tmp_path, capfd):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _RunsCode()}, path)
    with pytest.raises(ValueError, match=r"needs (posix|nt)\.system .*trust=True"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"needs (posix|nt)\.system"):
        EquiformerV2.from_checkpoint(path)
    plain = tmp_path / "plain_pickle.pt"
    plain.write_bytes(pickle.dumps({"payload": _RunsCode()}, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(ValueError, match=r"needs (posix|nt)\.system"):
        load_checkpoint(plain)
    assert "should never run" not in capfd.readouterr().out


def test_trust_opts_in_to_a_full_unpickle(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"config": _Custom()}, path)
    with pytest.raises(ValueError, match=r"needs .*_Custom .*trust=True"):
        load_checkpoint(path)
    assert isinstance(load_checkpoint(path, trust=True)["config"], _Custom)


def test_unreadable_files(tmp_path, monolithic):
    path = tmp_path / "ok.pt"
    torch.save(monolithic, path)
    data = path.read_bytes()
    for name, content in [("empty.pt", b""), ("half.pt", data[: len(data) // 2]), ("text.pt", b"not a checkpoint")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}"):
            load_checkpoint(tmp_path / name)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10  # inside a tensor: torch would load it as a different weight
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"flipped\.pt: the file is damaged \(its member .* fails its CRC"):
        load_checkpoint(tmp_path / "flipped.pt")
    with pytest.raises(ValueError, match="is a directory"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")


# -- nothing that changes the numbers skipped ---------------------------------------------------


def test_current_normalizer_form_raises(monolithic):
    """fairchem's Normalizer state is ``{mean, rmsd}`` since its normalisation rewrite; so2nn
    does not apply it yet, so it refuses rather than return normalised units."""
    checkpoint = {**_hydra(monolithic), "normalizers": {"energy": {"mean": torch.tensor(0.0),
                                                                   "rmsd": torch.tensor(1.5)}}}
    with pytest.raises(ValueError, match=r"normalizers\['energy'\] with fields \['mean', 'rmsd'\]"):
        EquiformerV2.from_fairchem(checkpoint)
    with pytest.raises(ValueError, match="rmsd"):
        normalizers_from_fairchem(checkpoint)


def test_normalizer_of_another_target_raises(monolithic):
    checkpoint = {**monolithic, "normalizers": {"stress": {"mean": torch.tensor(0.0), "std": torch.tensor(1.0)}}}
    with pytest.raises(ValueError, match=r"normalizers\['stress'\]"):
        EquiformerV2.from_fairchem(checkpoint)


def test_element_references_raise(monolithic):
    refs = {"energy": {"element_references": torch.linspace(0, -3, 119)}}
    with pytest.raises(ValueError, match=r"'elementrefs' for \['energy'\]"):
        load_fairchem_checkpoint({**monolithic, "elementrefs": refs})
    in_config = {**monolithic, "config": {**monolithic["config"], "dataset": {
        "train": {"transforms": {"element_references": {"file": "refs.npz"}}}}}}
    with pytest.raises(ValueError, match="element_references"):
        load_fairchem_checkpoint(in_config)
    assert load_fairchem_checkpoint({**monolithic, "elementrefs": {}})[0] == load_fairchem_checkpoint(monolithic)[0]


@pytest.mark.parametrize("entry", [{"mean": 0.0, "rmsd": 2.0}, {"fit": {"targets": {"energy": {}}}},
                                   {"file": "normalizers.pt"}])
def test_dataset_normalizer_forms_not_applied_raise(monolithic, entry):
    checkpoint = {**monolithic, "config": {**monolithic["config"], "dataset": {
        "train": {"transforms": {"normalizer": {"energy": entry}}}}}}
    with pytest.raises(ValueError, match=r"normalizer\['energy'\]"):
        load_fairchem_checkpoint(checkpoint)


def test_scale_dict_raises(monolithic):
    with pytest.raises(ValueError, match="scale_dict"):
        load_fairchem_checkpoint({**monolithic, "scale_dict": {"block0": 1.3}})


def test_known_heads_load(monolithic):
    reference = EquiformerV2.from_fairchem(monolithic)
    for heads in ({"energy": {"module": "equiformer_v2_energy_head"}},
                  {"energy": {"module": "equiformerV2_scalar_head", "reduce": "sum"}}):
        loaded = EquiformerV2.from_fairchem(_hydra(monolithic, heads))
        assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize("heads, extra, message", [
    ({"energy": {"module": "equiformer_v2_energy_head"}, "dielectric": {"module": "rank2_symmetric_head"}}, (),
     r"head 'dielectric' \(module 'rank2_symmetric_head'\)"),
    ({"energy": {"module": "equiformer_v2_energy_head", "reduce": "mean"}}, (),
     r"head 'energy' with options \{'reduce': 'mean'\}"),
    ({"energy": {"module": "dens_energy_head"}}, (), r"head 'energy' \(module 'dens_energy_head'\)"),
    ({"energy": {"module": "equiformer_v2_energy_head"}}, ("module.output_heads.efs.linear.weight",),
     r"weights of head 'efs'"),
], ids=["rank2-head-not-stress", "mean-reduce", "foreign-energy-head", "unlisted-head-weights"])
def test_unknown_heads_raise(monolithic, heads, extra, message):
    with pytest.raises(ValueError, match=message):
        EquiformerV2.from_fairchem(_hydra(monolithic, heads, extra))


def test_graph_mode_from_enforce_max_neighbors_strictly(monolithic, tmp_path):
    """Checkpoints trained with the reference's non-strict neighbour rule load with it (monolithic
    and backbone configs, every entry point); strict or unset ones keep the tie-stable default;
    a graph_mode given by the user wins."""
    from so2nn.calculators import So2nnCalculator
    from so2nn.models import load_model

    def with_flag(checkpoint, value, hydra=False):
        checkpoint = _hydra(checkpoint) if hydra else checkpoint
        model = dict(checkpoint["config"]["model"])
        if hydra:
            model["backbone"] = {**model["backbone"], "enforce_max_neighbors_strictly": value}
        else:
            model["enforce_max_neighbors_strictly"] = value
        return {**checkpoint, "config": {**checkpoint["config"], "model": model}}

    assert "enforce_max_neighbors_strictly" not in monolithic["config"]["model"]
    assert load_fairchem_checkpoint(monolithic)[0].graph_mode == "tie_stable"  # the reference's default: strict
    for hydra in (False, True):
        assert load_fairchem_checkpoint(with_flag(monolithic, True, hydra))[0].graph_mode == "tie_stable"
        nonstrict = with_flag(monolithic, False, hydra)
        assert load_fairchem_checkpoint(nonstrict)[0].graph_mode == "reference_nonstrict"
        assert load_fairchem_checkpoint(nonstrict, graph_mode="tie_stable")[0].graph_mode == "tie_stable"
        assert load_fairchem_checkpoint(with_flag(monolithic, True, hydra),
                                        graph_mode="reference")[0].graph_mode == "reference"
    path = tmp_path / "nonstrict.pt"
    torch.save(with_flag(monolithic, False, hydra=True), path)
    assert EquiformerV2.from_fairchem(path).config.graph_mode == "reference_nonstrict"
    assert EquiformerV2.from_checkpoint(path).config.graph_mode == "reference_nonstrict"
    assert load_model(path, graph_mode="reference").config.graph_mode == "reference"
    assert So2nnCalculator(path, device="cpu").model.config.graph_mode == "reference_nonstrict"
    with pytest.raises(ValueError, match="enforce_max_neighbors_strictly must be true or false, got 'no'"):
        load_fairchem_checkpoint(with_flag(monolithic, "no"))


def test_dataset_list_config_normalizers(monolithic):
    """Older configs list the datasets ``[train, val]``; the training one's normalisation is read."""
    checkpoint = {**monolithic, "config": {**monolithic["config"], "dataset": [
        {"normalize_labels": True, "target_mean": -0.75, "target_std": 2.5, "grad_target_mean": 0.0,
         "grad_target_std": 2.5}, {"src": "val"}]}}
    config, _ = load_fairchem_checkpoint(checkpoint)
    assert (config.energy_mean, config.energy_std, config.forces_std) == (-0.75, 2.5, 2.5)


def test_trust_reaches_every_loading_entry_point(tmp_path):
    """load_model, from_checkpoint, from_fairchem and the calculator refuse a file that needs an
    unlisted global, and load it with ``trust=True``."""
    from so2nn.calculators import So2nnCalculator
    from so2nn.models import load_model

    model = EquiformerV2(EquiformerV2Config(lmax=1, mmax=1, num_layers=1, sphere_channels=4, attn_hidden_channels=4,
                                            num_heads=1, attn_alpha_channels=2, attn_value_channels=2,
                                            ffn_hidden_channels=4, edge_channels=4, num_distance_basis=8))
    path = tmp_path / "model.pt"
    atomic_save(model_checkpoint(model, note=_Custom()), path)
    for load in (load_model, EquiformerV2.from_checkpoint, So2nnCalculator):
        with pytest.raises(ValueError, match=r"needs .*_Custom .*trust=True"):
            load(path)
    for load in (load_model, EquiformerV2.from_checkpoint):
        assert load(path, trust=True).config == model.config
    assert So2nnCalculator(path, trust=True, device="cpu").model.config == model.config
    with pytest.raises(ValueError, match=r"needs .*_Custom .*trust=True"):
        EquiformerV2.from_fairchem(path)
