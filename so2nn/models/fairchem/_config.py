"""The config reader: a fairchem model config, read once into :class:`FairchemModelConfig`, and
so2nn's :class:`~so2nn.models.EquiformerV2Config` made from it."""

from __future__ import annotations

from dataclasses import dataclass

from .._config import EquiformerV2Config
from ._keys import (
    BACKBONES,
    DENS_BACKBONE,
    DENS_TRAINING_ONLY,
    FAIRCHEM_IGNORED_KEYS,
    MONOLITHIC,
    registered_name,
)
from ._stress import stress_config_from_fairchem
from ._targets import energy_and_force_fields

__all__ = ["FairchemModelConfig", "config_from_fairchem", "equiformer_v2_config", "read_model_config"]


@dataclass(frozen=True)
class FairchemModelConfig:
    """A fairchem model config (a checkpoint's ``config['model']``), read once.

    Attributes:
        config: the model config as stored, its model, backbone and head modules named by their
            registered names (a class path such as ``fairchem.core.models.equiformer_v2.
            equiformer_v2_dens.DeNSScalarHead`` becomes ``eqV2_DeNS_scalar_head``).
        backbone: the entries that configure the network, at the top level: the monolithic
            model's config less its ``name``, or the backbone's entries (less ``model`` and the
            DeNS settings read from ``config``) with the other top-level entries of the backbone
            + heads layout (less ``backbone``, ``heads`` and ``name``).
        hydra: whether it is the backbone + heads layout.
    """

    config: dict
    backbone: dict
    hydra: bool

    @property
    def heads(self):
        """The ``heads`` entry of the backbone + heads layout (None for the monolithic model)."""
        return self.config.get("heads")


def read_model_config(model_config: dict) -> FairchemModelConfig:
    """Read a fairchem model config. Raises a ValueError for a model that so2nn's EquiformerV2 is
    not (fairchem's ``name``, or the backbone's ``model``), or a backbone + heads config without
    its ``backbone`` section."""
    named = dict(model_config)
    if "name" in named:
        named["name"] = registered_name(named["name"])
    if isinstance(named.get("backbone"), dict):
        named["backbone"] = {**named["backbone"], "model": registered_name(named["backbone"].get("model"))}
    if isinstance(named.get("heads"), dict):
        named["heads"] = {name: {**head, "module": registered_name(head.get("module"))}
                          if isinstance(head, dict) else head for name, head in named["heads"].items()}
    if "backbone" in named or named.get("name") == "hydra":
        backbone = named.get("backbone")
        if not isinstance(backbone, dict):
            raise ValueError("the checkpoint's backbone + heads model config has no 'backbone' section (a "
                             "fine-tune that takes its backbone from another checkpoint): so2nn needs the "
                             "backbone's config")
        name = backbone.get("model")
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone model {name!r} in the reference model config: not one of "
                             f"so2nn's EquiformerV2 backbones ({sorted(BACKBONES)})")
        # the DeNS settings read by _dens_config, or acting only in training with denoising
        dens = set()
        if name == DENS_BACKBONE:
            dens = DENS_TRAINING_ONLY["backbone"] | {"use_noise_schedule_sigma_encoding"}
        flat = {**{k: v for k, v in backbone.items() if k != "model" and k not in dens},
                **{k: v for k, v in named.items() if k not in ("backbone", "heads", "name")}}
        return FairchemModelConfig(named, flat, True)
    flat = dict(named)
    name = flat.pop("name", "equiformer_v2")
    if name not in MONOLITHIC:
        raise ValueError(f"the checkpoint's model is {name!r}, not fairchem's EquiformerV2 "
                         f"({sorted(MONOLITHIC)})")
    return FairchemModelConfig(named, flat, False)


def config_from_fairchem(model_config: dict, **changes) -> EquiformerV2Config:
    """Translate the reference's model config (a checkpoint's ``config['model']``) to so2nn's.

    Its energy references (``use_energy_lin_ref``, ``load_energy_lin_ref``) are decided by
    :func:`~so2nn.models.fairchem.load_fairchem_checkpoint`, which sees the weights and the
    trainer's state; here they are dropped, and ``changes`` (as the loader computes them) set
    so2nn's fields.

    Raises:
        ValueError: a key that is neither a so2nn field, nor handled here, nor in
            :data:`~so2nn.models.FAIRCHEM_IGNORED_KEYS` ``["model"]``; options no released model uses.

    Example:
        >>> config = config_from_fairchem({"name": "equiformer_v2", "lmax_list": [4], "mmax_list": [2],
        ...                                "num_layers": 2, "regress_forces": False})
        >>> config.lmax, config.num_layers, config.regress_forces
        (4, 2, False)
    """
    return equiformer_v2_config(read_model_config(model_config), {}, changes)


def equiformer_v2_config(model: FairchemModelConfig, normalizers: dict, changes: dict) -> EquiformerV2Config:
    """so2nn's config of a read model config, with the trainer's ``normalizers`` (``{target: (mean,
    std)}``) and the loader's ``changes`` (which win)."""
    cfg = dict(model.backbone)
    cfg.pop("use_energy_lin_ref", None), cfg.pop("load_energy_lin_ref", None)
    lmax, mmax = cfg.pop("lmax_list", [6]), cfg.pop("mmax_list", [2])
    if len(lmax) != 1 or len(mmax) != 1:
        raise ValueError(f"only single-resolution models are supported, got lmax_list={lmax}, "
                         f"mmax_list={mmax}")
    for key in ("use_m_share_rad", "use_s2_act_attn", "share_atom_edge_embedding"):
        if cfg.pop(key, False):
            raise ValueError(f"{key}=True is not supported (no released model uses it)")
    distance_function = cfg.pop("distance_function", "gaussian")
    if distance_function != "gaussian":
        raise ValueError(f"distance_function={distance_function!r}: the reference's EquiformerV2 has "
                         "Gaussians only")
    use_gate, use_sep = cfg.pop("use_gate_act", False), cfg.pop("use_sep_s2_act", True)
    activation = "gate" if use_gate else ("separable_s2" if use_sep else "s2")
    out = {"lmax": int(lmax[0]), "mmax": int(mmax[0]), "activation": activation}
    out.update(_graph_mode_from_fairchem(cfg))
    # None (also when absent: the reference's default) is a grid of its own, the smallest that
    # resolves each layer's layout, which so2nn's None is too; it is not so2nn's default of 18
    out["grid_resolution"] = cfg.pop("grid_resolution", None)
    out.update(_regress_forces_from_fairchem(cfg, model.heads))
    fields = set(EquiformerV2Config.__dataclass_fields__)
    unknown = []
    for key, value in cfg.items():
        if key in fields:
            if value is not None:
                out[key] = value
        elif key not in FAIRCHEM_IGNORED_KEYS["model"]:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown keys in the reference model config: {sorted(unknown)}")
    # The reference hard-codes 600 Gaussians whatever num_distance_basis says.
    out["num_distance_basis"] = 600
    heads = model.heads
    if isinstance(model.config.get("backbone"), dict):
        out.update(_dens_config(model.config["backbone"], heads))
    out.update(energy_and_force_fields(normalizers))
    stress_head = heads.get("stress") if isinstance(heads, dict) else None
    stress_head = stress_head if isinstance(stress_head, dict) else None
    out.update(stress_config_from_fairchem(stress_head, normalizers))
    out.update(changes)
    return EquiformerV2Config.from_dict(out)  # the stress options as flat keys: from_dict groups them


def _graph_mode_from_fairchem(cfg: dict) -> dict:
    """``graph_mode`` for the reference's neighbour rule, popped from ``cfg``: its
    ``enforce_max_neighbors_strictly`` (a key of the monolithic model's config and of the
    backbone's), ``True`` when absent as in the reference's model classes.

    ``False`` trained the model on the non-strict rule, which so2nn reproduces
    (``"reference_nonstrict"``) so that the numbers match. The strict cut splits shells of equal
    distances arbitrarily; so2nn keeps its tie-stable default for those checkpoints (no
    change: ``graph_mode="reference"`` as a config change selects the strict cut).
    """
    strict = cfg.pop("enforce_max_neighbors_strictly", True)
    if strict is None:  # the reference passes it on, and its `if enforce_max_strictly:` reads None as False
        strict = False
    if not isinstance(strict, bool):
        raise ValueError(f"enforce_max_neighbors_strictly must be true or false, got {strict!r}")
    return {} if strict else {"graph_mode": "reference_nonstrict"}


def _regress_forces_from_fairchem(cfg: dict, heads) -> dict:
    """``regress_forces`` for the reference's energy-only models, popped from ``cfg``.

    The monolithic model builds its force block only with ``regress_forces`` (``True`` when
    absent, as in the reference's class), so an energy-only checkpoint (the IS2RE models) has
    no force weights. In the backbone + heads layout the heads decide: the backbone's flag does
    not reach them, and the model returns forces exactly when it has a ``forces`` head.
    """
    flag = cfg.pop("regress_forces", True)
    if not isinstance(flag, bool):
        raise ValueError(f"regress_forces must be true or false, got {flag!r}")
    if isinstance(heads, dict):
        flag = "forces" in heads
    return {} if flag else {"regress_forces": False}


def _dens_config(backbone: dict, heads) -> dict:
    """The DeNS config fields of a backbone + heads config (empty for a plain model)."""
    name = backbone.get("model")
    out = {}
    if name == DENS_BACKBONE:
        out["dens_force_embedding"] = True
        out["dens_sigma_embedding"] = bool(backbone.get("use_noise_schedule_sigma_encoding", False))
    forces = heads.get("forces") if isinstance(heads, dict) else None
    if isinstance(forces, dict) and forces.get("module") == "eqV2_DeNS_vector_head":
        out["dens_denoising_head"] = True
    return out
