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
from so2nn.models.fairchem import (
    FAIRCHEM_IGNORED_KEYS,
    load_fairchem_checkpoint,
    normalizers_from_fairchem,
    read_fairchem_checkpoint,
)

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
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(64)}, legacy, _use_new_zipfile_serialization=False)  # torch's pre-1.6 pickle format
    old = legacy.read_bytes()
    np.savez(tmp_path / "arrays.npz", w=np.ones(3))
    for name, content, message in [
        ("empty.pt", b"", "the file is empty"),
        ("half.pt", data[: len(data) // 2],
         r"the file is truncated or damaged \(a zip archive whose directory at the end is missing"),
        ("text.pt", b"not a checkpoint",
         r"not a PyTorch checkpoint \(it looks like text\), starting 'not a checkpoint'"),
        ("old-half.pt", old[: len(old) // 2], r"the file is truncated or damaged \("),
        ("old-start.pt", old[:30], r"the file is truncated or damaged \("),
        ("lfs.pt", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab",
         r"not a PyTorch checkpoint \(it is a Git LFS"),
        ("binary.pt", bytes(range(256)),
         r"not a PyTorch checkpoint \(neither torch's zip format nor a pickle; it starts with bytes 00 01"),
        ("arrays.npz", None,
         r"not a PyTorch checkpoint: a zip archive without torch's data.pkl \(a NumPy .npz file\?\)"),
    ]:
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"could not read checkpoint .*{name}: {message}"):
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


@pytest.mark.parametrize("normalizers, expected", [
    ({"energy": {"mean": torch.tensor(-0.5), "rmsd": torch.tensor(1.5)},
      "forces": {"mean": torch.tensor(0.0), "rmsd": torch.tensor(0.25)}}, (-0.5, 1.5, 0.0, 0.25)),
    ({"target": {"mean": -0.5, "std": torch.tensor(1.5)}, "grad_target": {"mean": 0.0, "std": torch.tensor(0.25)}},
     (-0.5, 1.5, 0.0, 0.25)),
    ({"energy": {"mean": torch.tensor([-0.5]), "rmsd": torch.tensor([1.5])},
      "denoising_pos_target": {"mean": torch.tensor(0.0), "rmsd": torch.tensor(0.1)}}, (-0.5, 1.5, 0.0, 1.0)),
], ids=["mean-rmsd", "legacy-mean-std", "shape-1-and-denoising-target"])
def test_normalizer_forms_load(monolithic, normalizers, expected):
    """fairchem's Normalizer state (``mean``/``rmsd``, scalars or one-element tensors), the legacy
    ``mean``/``std`` under the old names, and the DeNS trainer's denoising normaliser (training
    only: it scales the noise targets, never a prediction)."""
    config, _ = load_fairchem_checkpoint({**_hydra(monolithic), "normalizers": normalizers})
    assert (config.energy_mean, config.energy_std, config.forces_mean, config.forces_std) == expected


def test_checkpoint_normalizers_override_the_dataset_config(monolithic):
    """As fairchem's trainer: the dataset config's normalisers first, each replaced by the checkpoint's."""
    checkpoint = {**monolithic, "normalizers": {"energy": {"mean": torch.tensor(1.0), "rmsd": torch.tensor(3.0)}},
                  "config": {**monolithic["config"], "dataset": {"transforms": {"normalizer": {
                      "energy": {"mean": 0.0, "stdev": 9.0}, "forces": {"mean": 0.0, "rmsd": 0.5}}}}}}
    config, _ = load_fairchem_checkpoint(checkpoint)
    assert (config.energy_mean, config.energy_std, config.forces_std) == (1.0, 3.0, 0.5)


def test_bad_normalizers_raise(monolithic):
    for state, message in [
        ({"mean": torch.tensor(0.0), "scale": torch.tensor(1.0)}, r"has fields \['mean', 'scale'\]"),
        ({"mean": torch.zeros(3), "rmsd": torch.ones(3)}, r"has shape \(3,\); so2nn reads one number"),
    ]:
        with pytest.raises(ValueError, match=message):
            normalizers_from_fairchem(read_fairchem_checkpoint({**monolithic, "normalizers": {"energy": state}}))
    with pytest.raises(ValueError, match=r"a normaliser of 'dipole', a target so2nn does not predict"):
        EquiformerV2.from_fairchem({**monolithic, "normalizers": {"dipole": {"mean": 0.0, "rmsd": torch.tensor(1.0)}}})


def test_force_mean_is_reproduced_with_a_warning(monolithic):
    checkpoint = {**monolithic, "normalizers": {"forces": {"mean": torch.tensor(0.125), "rmsd": torch.tensor(2.0)}}}
    with pytest.warns(UserWarning, match="'forces' normaliser has mean 0.125"):
        model = EquiformerV2.from_fairchem(checkpoint)
    plain = EquiformerV2.from_fairchem({**monolithic, "normalizers": {"forces": {"mean": 0.0,
                                                                                 "rmsd": torch.tensor(2.0)}}})
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.0, 1.2, 0.3]])
    with torch.no_grad():
        shifted, forces = (m.eval()(pos=pos, atomic_numbers=torch.tensor([6, 8, 1]))["forces"] for m in (model, plain))
    assert torch.allclose(shifted - forces, torch.full_like(forces, 0.125))
    # a trainer's statistics (a force scale, no mean) replace it: training starts equivariant
    model.with_target_statistics(model.target_statistics)
    assert model.config.forces_mean == 0.0 and model.heads["forces"].forces_mean == 0.0


@pytest.mark.filterwarnings("ignore:the checkpoint's 'forces' normaliser has mean")
def test_gradient_forces_need_the_energy_normaliser(monolithic):
    """The reference de-normalises forces with the force normaliser; as -dE/dr of the de-normalised
    energy they agree only when that is (mean 0, the energy's std)."""
    same = {"energy": {"mean": 1.0, "rmsd": torch.tensor(2.0)}, "forces": {"mean": 0.0, "rmsd": torch.tensor(2.0)}}
    config, _ = load_fairchem_checkpoint({**monolithic, "normalizers": same}, direct_forces=False)
    assert (config.direct_forces, config.energy_std, config.forces_mean) == (False, 2.0, 0.0)
    for forces in ({"mean": 0.0, "rmsd": torch.tensor(0.5)}, {"mean": 0.1, "rmsd": torch.tensor(2.0)}):
        with pytest.raises(ValueError, match=r"gradient forces \(direct_forces=False\) with a force normaliser"):
            load_fairchem_checkpoint({**monolithic, "normalizers": {**same, "forces": forces}}, direct_forces=False)


def test_element_references(monolithic):
    """``elementrefs['energy']`` (LinearReferences state, 119 entries) becomes ``energy_lin_ref``
    (eV, after de-normalisation); a dataset config's references load only when the checkpoint
    holds their values."""
    refs = {"energy": {"element_references": torch.linspace(0, -3, 119)}}
    config, state = load_fairchem_checkpoint({**monolithic, "elementrefs": refs})
    assert config.use_energy_lin_ref and torch.equal(state["energy_lin_ref"],
                                                      torch.linspace(0, -3, 119).double()[:90])
    for transforms in ({"element_references": {"file": "refs.npz"}},
                       {"element_references": {"fit": {"targets": ["energy"], "batch_size": 8}}},
                       {"element_references": {"energy": {"file": "refs.npz"}}}):
        in_config = {**monolithic, "config": {**monolithic["config"], "dataset": {"train": {"transforms": transforms}}}}
        with pytest.raises(ValueError, match="element_references of .* whose values the checkpoint does not hold"):
            load_fairchem_checkpoint(in_config)
        assert load_fairchem_checkpoint({**in_config, "elementrefs": refs})[0] == config
    by_value = {**monolithic, "config": {**monolithic["config"], "dataset": {"transforms": {"element_references": {
        "energy": {"state_dict": {"element_references": torch.linspace(1, 2, 119)}}}}}}}
    assert torch.equal(load_fairchem_checkpoint(by_value)[1]["energy_lin_ref"], torch.linspace(1, 2, 119).double()[:90])
    assert torch.equal(load_fairchem_checkpoint({**by_value, "elementrefs": refs})[1]["energy_lin_ref"],
                       state["energy_lin_ref"])  # the checkpoint's replace the config's
    with pytest.raises(ValueError, match=r"elementrefs' for 'forces'"):
        load_fairchem_checkpoint({**monolithic, "elementrefs": {"forces": refs["energy"]}})
    assert load_fairchem_checkpoint({**monolithic, "elementrefs": {}})[0] == load_fairchem_checkpoint(monolithic)[0]


@pytest.mark.parametrize("entry, loads", [
    ({"mean": 0.0, "rmsd": 2.0}, True), ({"mean": 0.0, "stdev": 2.0}, True),
    ({"fit": {"targets": {"energy": {}}}}, False), ({"file": "normalizers.pt"}, False),
], ids=["rmsd", "stdev", "fit", "file"])
def test_dataset_normalizer_forms(monolithic, entry, loads):
    """By value they apply; from a file or a fit only where the checkpoint holds the values."""
    name, entry = ("fit", entry["fit"]) if "fit" in entry else ("energy", entry)
    checkpoint = {**monolithic, "config": {**monolithic["config"], "dataset": {
        "train": {"transforms": {"normalizer": {name: entry}}}}}}
    if loads:
        assert load_fairchem_checkpoint(checkpoint)[0].energy_std == 2.0
        return
    with pytest.raises(ValueError, match=r"normalisers of \['energy'\] from a file or a fit"):
        load_fairchem_checkpoint(checkpoint)
    held = {**checkpoint, "normalizers": {"energy": {"mean": torch.tensor(0.0), "rmsd": torch.tensor(2.0)}}}
    assert load_fairchem_checkpoint(held)[0].energy_std == 2.0


def test_scale_dict_raises(monolithic):
    with pytest.raises(ValueError, match="scale_dict"):
        load_fairchem_checkpoint({**monolithic, "scale_dict": {"block0": 1.3}})


# -- the key policy ------------------------------------------------------------------------------


def test_the_ignored_keys_are_pinned():
    """Changing what is ignored on import is a decision: this list changes with it."""
    assert {level: sorted(keys) for level, keys in FAIRCHEM_IGNORED_KEYS.items()} == {
        "checkpoint": ["amp", "best_val_metric", "epoch", "optimizer", "primary_metric", "scheduler", "step",
                       "val_metrics"],
        "config": ["amp", "checkpoint", "cmd", "cpu", "distributed", "distributed_backend", "distributed_port",
                   "eval_metrics", "evaluation_metrics", "gp_gpus", "gpus", "hide_eval_progressbar", "identifier",
                   "includes", "is_debug", "local_rank", "logdir", "logger", "loss_fns", "loss_functions", "mode",
                   "noddp", "num_gpus", "num_nodes", "optim", "print_every", "relax_dataset", "run_dir", "seed",
                   "slurm", "submit", "summit", "task", "test_dataset", "timestamp_id", "trainer", "val_dataset",
                   "world_size"],
        "model": ["activation_checkpoint", "attn_activation", "bond_feat_dim", "ffn_activation", "finetune_config",
                  "freeze_backbone", "num_atoms", "num_distance_basis", "num_sphere_samples", "num_targets",
                  "otf_graph", "pass_through_head_outputs", "use_pbc_single", "weight_init"],
        "dataset": ["a2g_args", "ase_read_args", "atoms_transform_args", "connect_args", "data2train", "first_n",
                    "format", "include_relaxed_energy", "index_file", "keep_in_memory", "key_mapping", "max_atoms",
                    "metadata_path", "no_shuffle", "oc20_ref", "pattern", "sample_n", "seed", "select_args", "shard",
                    "splits", "src", "subset_to", "total_shards", "use_tqdm"],
        "transforms": ["decompose_tensor"],
    }


def test_training_keys_are_ignored(monolithic):
    """Every ignored key, at its level, loads to the same model."""
    config = {**monolithic["config"], **{k: {} for k in FAIRCHEM_IGNORED_KEYS["config"]},
              "dataset": {**{k: "x" for k in FAIRCHEM_IGNORED_KEYS["dataset"]},
                          "transforms": {k: {} for k in FAIRCHEM_IGNORED_KEYS["transforms"]}}}
    config["model"] = {**config["model"], **{k: None for k in FAIRCHEM_IGNORED_KEYS["model"]}}
    checkpoint = {**monolithic, **{k: None for k in FAIRCHEM_IGNORED_KEYS["checkpoint"]}, "config": config}
    assert load_fairchem_checkpoint(checkpoint)[0] == load_fairchem_checkpoint(monolithic)[0]


@pytest.mark.parametrize("where, message", [
    ("checkpoint", r"checkpoint\['future_state'\]"), ("config", r"config\['future_state'\]"),
    ("dataset", r"config\['dataset'\]\['future_state'\]"), ("model", r"unknown keys in the reference model config"),
    ("transforms", r"the dataset transforms' 'future_state'"),
])
def test_unknown_keys_raise(monolithic, where, message):
    checkpoint = {**monolithic, "config": {**monolithic["config"], "dataset": {"src": "train"}}}
    if where == "checkpoint":
        checkpoint["future_state"] = 1
    elif where == "config":
        checkpoint["config"]["future_state"] = 1
    elif where == "dataset":
        checkpoint["config"]["dataset"]["future_state"] = 1
    elif where == "model":
        checkpoint["config"]["model"] = {**checkpoint["config"]["model"], "future_state": 1}
    else:
        checkpoint["config"]["dataset"]["transforms"] = {"future_state": {}}
    with pytest.raises(ValueError, match=message):
        EquiformerV2.from_fairchem(checkpoint)


def test_outputs_are_checked(monolithic):
    outputs = {"energy": {"level": "system", "property": "energy", "prediction_dtype": "float32"},
               "forces": {"level": "atom", "train_on_free_atoms": True, "eval_on_free_atoms": True}}
    with_outputs = {**monolithic, "config": {**monolithic["config"], "outputs": outputs}}
    assert load_fairchem_checkpoint(with_outputs)[0] == load_fairchem_checkpoint(monolithic)[0]
    for bad, message in [({"dipole": {"level": "system"}}, r"output 'dipole'"),
                         ({"energy": {"level": "atom"}}, r"outputs\['energy'\]\['level'\] = 'atom'")]:
        checkpoint = {**monolithic, "config": {**monolithic["config"], "outputs": {**outputs, **bad}}}
        with pytest.raises(ValueError, match=message):
            load_fairchem_checkpoint(checkpoint)


def test_oc22_linear_references(monolithic):
    """OC22's monolithic model adds ``energy_lin_ref`` to the normalised energy: imported as
    std * weight (eV); the dataset's ``lin_ref`` file is held by that weight."""
    lin = torch.linspace(-1.0, 1.0, 90)
    model_config = {**monolithic["config"]["model"], "use_energy_lin_ref": True, "load_energy_lin_ref": True}
    checkpoint = {**monolithic, "state_dict": {**monolithic["state_dict"], "module.energy_lin_ref": lin},
                  "normalizers": {"energy": {"mean": torch.tensor(0.0), "rmsd": torch.tensor(25.0)}},
                  "config": {**monolithic["config"], "model": model_config,
                             "dataset": {"format": "oc22_lmdb", "lin_ref": "oc22_linfit_coeffs.npz"}}}
    config, state = load_fairchem_checkpoint(checkpoint)
    assert config.use_energy_lin_ref and torch.equal(state["energy_lin_ref"], 25.0 * lin.double())
    config, state = load_fairchem_checkpoint(checkpoint, use_energy_lin_ref=False)
    assert not config.use_energy_lin_ref and "energy_lin_ref" not in state
    loaded = {**model_config, "use_energy_lin_ref": False}
    config, state = load_fairchem_checkpoint({**checkpoint, "config": {**checkpoint["config"], "model": loaded}})
    assert not config.use_energy_lin_ref and "energy_lin_ref" not in state
    no_weight = {**checkpoint, "state_dict": monolithic["state_dict"]}
    with pytest.raises(ValueError, match="no energy_lin_ref weight"):
        load_fairchem_checkpoint(no_weight)
    with pytest.raises(ValueError, match="train_on_oc20_total_energies=True"):
        load_fairchem_checkpoint({**checkpoint, "config": {**checkpoint["config"], "dataset": {
            "train_on_oc20_total_energies": True, "oc20_ref": "refs.pkl"}}})


def test_known_heads_load(monolithic):
    reference = EquiformerV2.from_fairchem(monolithic)
    for heads in ({"energy": {"module": "equiformer_v2_energy_head"}},
                  {"energy": {"module": "equiformerV2_scalar_head", "reduce": "sum"}},
                  {"energy": {"module": "equiformerV2_scalar_head", "reduce": "mean"}}):
        loaded = EquiformerV2.from_fairchem(_hydra(monolithic, heads))
        assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values()))
        assert loaded.config.energy_reduce == heads["energy"].get("reduce", "sum")


@pytest.mark.parametrize("heads, extra, message", [
    ({"energy": {"module": "equiformer_v2_energy_head"}, "dielectric": {"module": "rank2_symmetric_head"}}, (),
     r"head 'dielectric' \(module 'rank2_symmetric_head'\)"),
    ({"energy": {"module": "equiformer_v2_energy_head", "reduce": "max"}}, (),
     r"head 'energy' with options \{'reduce': 'max'\}"),
    ({"energy": {"module": "dens_energy_head"}}, (), r"head 'energy' \(module 'dens_energy_head'\)"),
    ({"energy": {"module": "equiformer_v2_energy_head"}}, ("module.output_heads.efs.linear.weight",),
     r"weights of head 'efs'"),
], ids=["rank2-head-not-stress", "unknown-reduce", "foreign-energy-head", "unlisted-head-weights"])
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


@pytest.mark.parametrize("entry", ["absent", None, 12])
def test_grid_resolution_none_is_the_references_own_grid(monolithic, entry):
    """The reference's ``grid_resolution: None`` (its default, so also when the key is absent)
    is the smallest grid that resolves each layer's layout, which so2nn's ``None`` is: it must
    not become so2nn's default of 18 (2 to 8% force differences, measured)."""
    model = dict(monolithic["config"]["model"])
    model.pop("grid_resolution", None)
    if entry != "absent":
        model["grid_resolution"] = entry
    checkpoint = {**monolithic, "config": {**monolithic["config"], "model": model}}
    config, _ = load_fairchem_checkpoint(checkpoint)
    assert config.grid_resolution == (None if entry == "absent" else entry)
    assert EquiformerV2.from_fairchem(checkpoint, grid_resolution=20).config.grid_resolution == 20


def test_a_checkpoint_is_read_once(monolithic, monkeypatch):
    """Every step of the import (heads, outputs, weights, normalisers, element references, config)
    takes its part from one record: the model config and the training dataset config are read
    once per load, through every entry point."""
    from so2nn.models import load_model
    from so2nn.models.fairchem import _loaders, _record

    calls = []

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(_loaders, "read_fairchem_checkpoint", counted("record", _loaders.read_fairchem_checkpoint))
    monkeypatch.setattr(_record, "read_model_config", counted("model config", _record.read_model_config))
    monkeypatch.setattr(_record, "_dataset_config", counted("dataset config", _record._dataset_config))
    refs = {"energy": {"element_references": torch.linspace(0, 1, 119)}}
    checkpoint = {**_hydra(monolithic, {"energy": {"module": "equiformer_v2_energy_head"},
                                        "forces": {"module": "equiformer_v2_force_head"}}),
                  "normalizers": {"energy": {"mean": torch.tensor(0.5), "rmsd": torch.tensor(2.0)}},
                  "elementrefs": refs}
    for load in (load_fairchem_checkpoint, EquiformerV2.from_fairchem, EquiformerV2.from_checkpoint, load_model):
        calls.clear()
        load(checkpoint)
        assert calls == ["record", "dataset config", "model config"], load
