"""Regenerate the parity fixture of the energy-only models (``regress_forces: False``).

Needs fairchem-core 1.10.0 beside so2nn, in the reference environment that
``benchmarks/setup_reference.sh`` creates (once) in the clone:

    bash benchmarks/setup_reference.sh
    .venv-reference/bin/python scripts/make_energy_only_fixtures.py

The reference's IS2RE models (OC20's, ODAC's direct model) predict an energy only: trained with
``regress_forces: False``, they have no force weights. This script builds two small such models
of the reference, with random weights moved off their initialisation: the monolithic
``equiformer_v2`` with ``regress_forces=False`` (no ``force_block``), and the backbone + heads
layout (``hydra``) with an energy head only. It runs them in float64 on the batch of two periodic
crystals of ``make_stress_fixtures.py``, with the reference's edge frames replaced by so2nn's.
tests/models/test_energy_only.py checks so2nn against it without fairchem.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import fairchem.core.models.equiformer_v2.equiformer_v2  # noqa: E402, F401  (registers the backbone)
import fairchem.core.models.equiformer_v2.heads  # noqa: E402, F401  (registers the heads)
from fairchem.core.models.base import HydraModel  # noqa: E402
from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import (  # noqa: E402
    EquiformerV2 as Monolithic,
)
from make_stress_fixtures import crystals, inputs_of, reference_batch  # noqa: E402

from so2nn.so3 import edge_frames  # noqa: E402

OUT = ROOT / "tests" / "models" / "fixtures" / "energy_only.pt"
SMALL = dict(
    use_pbc=True, regress_forces=False, otf_graph=False, max_neighbors=20, max_radius=6.0,
    max_num_elements=90, num_layers=1, lmax_list=[2], mmax_list=[1], sphere_channels=8,
    attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4, attn_value_channels=4,
    ffn_hidden_channels=8, norm_type="layer_norm_sh", grid_resolution=18, edge_channels=8,
    use_grid_mlp=True, alpha_drop=0.0, drop_path_rate=0.0, weight_init="uniform",
)


def perturbed(model):
    """Norms and attention parameters off their trivial initialisation, rounded to float32."""
    with torch.no_grad():
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "norm" in name or "alpha" in name:
                p.add_(0.2 * torch.randn_like(p))
            p.copy_(p.float())  # float32 values, stored losslessly as float32
    return model


def main() -> None:
    dtype = torch.float64
    torch.set_default_dtype(dtype)  # the reference makes some constants in the default dtype
    inputs = inputs_of(crystals())
    fixture = {"inputs": inputs, "models": {}}
    torch.manual_seed(0)
    monolithic = perturbed(Monolithic(**SMALL).eval())
    monolithic.direct_forces = True  # no-grad inference (its forward re-enables autograd otherwise)
    torch.manual_seed(0)
    energy_head = {"energy": {"module": "equiformerV2_scalar_head"}}
    hydra = perturbed(HydraModel(backbone={"model": "equiformer_v2_backbone", **SMALL}, heads=energy_head,
                                 otf_graph=False).eval())
    configs = {
        "monolithic": {"name": "equiformer_v2", **SMALL},
        "hydra": {"name": "hydra", "backbone": {"model": "equiformer_v2_backbone", **SMALL},
                  "heads": {"energy": {"module": "equiformerV2_scalar_head"}}, "otf_graph": False},
    }
    for name, model in (("monolithic", monolithic), ("hydra", hydra)):
        backbone = model.backbone if name == "hydra" else model
        backbone._init_edge_rot_mat = lambda data, edge_index, vec: edge_frames(vec)
        with torch.no_grad():
            out = model(reference_batch(inputs, dtype))
        assert set(out) == {"energy"}, sorted(out)
        if isinstance(out["energy"], dict):  # a head's own output dict (without pass_through_head_outputs)
            out = out["energy"]
        params = dict(model.named_parameters())
        assert not [k for k in params if "force" in k], "an energy-only model has no force weights"
        fixture["models"][name] = {
            "checkpoint": {"state_dict": {"module." + k: v.detach().float().clone()
                                          for k, v in model.state_dict().items() if k in params},
                           "config": {"model": configs[name]}},
            "reference_same_frames": {"energy": out["energy"].detach().view(-1).clone()},
        }
        print(name, out["energy"].view(-1).tolist())
    torch.set_default_dtype(torch.float32)
    torch.save(fixture, OUT)
    print(f"{OUT.relative_to(ROOT)}: {OUT.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
