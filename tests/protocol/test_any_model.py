"""A model that so2nn knows nothing about (tests/protocol/tiny_model.py: its own config,
conservative forces) goes through so2nn.training (EMA, bf16 autocast, stop and resume), the
checkpoint format (reloaded in a fresh process) and the ASE calculator."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from torch_geometric.data import Batch, Data

from so2nn.calculators import So2nnCalculator
from so2nn.models import AtomisticModel, load_model, target_statistics_fields
from so2nn.training import Trainer, TrainingConfig

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import tiny_model  # noqa: E402 -- registers the model type, as any user module would


def frames(count, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        slab = fcc111("Cu", (2, 2, 2), vacuum=4.0)
        add_adsorbate(slab, "O", 1.6, "fcc")
        slab.rattle(0.15, seed=int(rng.integers(2**31)))
        slab.calc = EMT()
        out.append(
            Data(
                pos=torch.tensor(slab.positions, dtype=torch.float32),
                atomic_numbers=torch.tensor(slab.numbers),
                cell=torch.tensor(np.array(slab.cell), dtype=torch.float32).view(1, 3, 3),
                natoms=len(slab),
                energy=torch.tensor([slab.get_potential_energy()], dtype=torch.float32),
                forces=torch.tensor(slab.get_forces(), dtype=torch.float32),
                tags=torch.zeros(len(slab), dtype=torch.long),
                fixed=torch.zeros(len(slab), dtype=torch.bool),
            )
        )
    return out


def fresh_process(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600,
                          cwd=Path(__file__).parents[2], env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_model_outside_so2nn_trains_saves_reloads_and_runs_in_ase(tmp_path):
    train, val = frames(16, seed=0), frames(4, seed=1)
    torch.manual_seed(0)
    model = tiny_model.TinyModel(tiny_model.TinyConfig())
    assert isinstance(model, AtomisticModel)
    config = TrainingConfig(
        max_steps=40,
        batch_size=4,
        lr=3e-3,
        warmup_steps=2,
        eval_every=100,
        checkpoint_every=100,
        log_every=4,
        ema_decay=0.8,
        amp="bf16",
        element_references=True,
    )
    trainer = Trainer(model, train, val, config, tmp_path, progress=False)
    assert trainer.model is model and model.config.element_references is not None  # statistics given to it
    assert model.config.energy_std != 1.0
    first = trainer.evaluate()
    trainer.fit(stop_after=20)
    assert trainer.step == 20 and not (tmp_path / "model.pt").exists()
    del trainer
    # asked for with a fresh config: the statistics the run set (target_statistics_fields, here
    # the default: the config's entries named as TargetStatistics' fields) are not compared
    assert target_statistics_fields(tiny_model.TinyModel) == (
        "energy_mean",
        "energy_std",
        "forces_std",
        "element_references",
    )
    resumed = Trainer.resume(
        tmp_path / "checkpoint.pt", train, val, tmp_path, progress=False, model_config=tiny_model.TinyConfig()
    )
    assert isinstance(resumed.model, tiny_model.TinyModel) and resumed.ema.num_updates == 20
    metrics = resumed.fit()
    assert resumed.step == 40 and resumed.ema.num_updates == 40
    assert metrics["energy_mae"] < 0.5 * first["energy_mae"], (first, metrics)
    assert metrics["forces_mae"] < 0.9 * first["forces_mae"], (first, metrics)

    # the exported EMA model, in this process and through the calculator
    loaded = load_model(tmp_path / "model.pt").double().eval()
    assert type(loaded) is tiny_model.TinyModel and loaded.config == resumed.model.config
    slab = fcc111("Cu", (2, 2, 2), vacuum=4.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.rattle(0.1, seed=3)
    slab.calc = So2nnCalculator(loaded)
    energy, forces = slab.get_potential_energy(), slab.get_forces()
    batch = Batch.from_data_list(val[:1])
    ema_out = resumed.ema.module.double().eval()(
        pos=batch.pos.double(),
        atomic_numbers=batch.atomic_numbers,
        cell=batch.cell.double(),
        natoms=batch.natoms,
    )
    out = loaded(
        pos=batch.pos.double(),
        atomic_numbers=batch.atomic_numbers,
        cell=batch.cell.double(),
        natoms=batch.natoms,
    )
    torch.testing.assert_close(out["energy"], ema_out["energy"], rtol=1e-12, atol=1e-12)

    # a fresh process: the type is known once the module that defines it is imported, never before
    code = f"""
import sys, json
sys.path.insert(0, {str(HERE)!r})
from so2nn.models import load_model
try:
    load_model({str(tmp_path / "model.pt")!r})
except ValueError as error:
    print("refused:", error)
import tiny_model  # registers the model type, as any user module would
import torch
from ase.build import add_adsorbate, fcc111
from so2nn.calculators import So2nnCalculator
slab = fcc111("Cu", (2, 2, 2), vacuum=4.0)
add_adsorbate(slab, "O", 1.6, "fcc")
slab.rattle(0.1, seed=3)
slab.calc = So2nnCalculator({str(tmp_path / "model.pt")!r}, device="cpu", dtype=torch.float64)
print(json.dumps({{"energy": slab.get_potential_energy(), "forces": slab.get_forces().tolist()}}))
"""
    result = fresh_process(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"refused: unknown model type '{tiny_model.MODEL_TYPE}'")
    there = json.loads(lines[-1])
    assert there["energy"] == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(there["forces"], forces, rtol=1e-10, atol=1e-12)
    # conservative: the calculator's forces are -dE/dr of its energy
    from ase.calculators.fd import calculate_numerical_forces

    np.testing.assert_allclose(
        forces[[0, 8]], calculate_numerical_forces(slab, eps=1e-4, iatoms=[0, 8]), atol=1e-6
    )
