"""The settings of a training run (:class:`TrainingConfig`, and which of them a resume may
change) and what it takes from its training set beside them (:class:`RunStatistics`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_STRESS_COEFFICIENT", "RESUMABLE", "RunStatistics", "TrainingConfig"]

#: Training settings a resume may change: they decide how long the run goes and what it logs,
#: not what a step computes. (A longer ``max_steps`` stretches the cosine schedule from the
#: current step on, as the reference's trainer does when a run is extended.)
RESUMABLE = ("max_steps", "eval_every", "checkpoint_every", "log_every", "eval_batch_size", "num_workers",
             "compile", "compile_backend")
#: The coefficient of each stress term of the loss that :class:`TrainingConfig` leaves at ``None``.
DEFAULT_STRESS_COEFFICIENT = 10.0


@dataclass(frozen=True)
class TrainingConfig:
    """Every setting of a training run (the EquiformerV2 paper's recipe by default).

    The loss is :math:`\\lambda_E\\,\\mathrm{MAE}(E) + \\lambda_F\\,\\frac1N\\sum_i
    \\lVert \\hat F_i - F_i \\rVert_2` on normalised targets (energy minus the training mean,
    over its standard deviation; forces over their RMS), forces of free atoms only when the
    data marks fixed atoms and ``train_on_free_atoms``. ``energy_per_atom`` takes the energy
    MAE per atom, :math:`|\\hat E - E| / N` (the OMat24 recipe).

    Stress joins the loss when the training data has it and the model outputs it (``"stress"``
    in its ``output_names``). ``stress_loss="decomposed"`` (the OMat24 recipe) adds
    :math:`\\lambda_p\\,\\mathrm{MAE}(p) + \\lambda_a\\,\\mathrm{MAE}(\\sigma - pI)`, with
    :math:`p = \\frac13\\mathrm{tr}\\,\\sigma` the isotropic (l = 0) part of predicted and true
    stress and :math:`\\sigma - pI` the traceless (l = 2) part, its MAE over the 9 components;
    ``stress_loss="plain"`` adds :math:`\\lambda_\\sigma\\,\\mathrm{MAE}(\\sigma)` over the 9
    components (natural for conservative models, whose stress is the strain derivative of the
    energy). Both are divided by :math:`\\sigma_S`, the standard deviation of the training
    stress (``stress_std`` of :func:`~so2nn.data.target_statistics`). A coefficient left at
    ``None`` is :data:`DEFAULT_STRESS_COEFFICIENT`; setting one while the data or the model has
    no stress raises, data with stress for a model without it warns once.

    ``compile=True`` runs the training forward (and so its backward) through
    :func:`~so2nn.models.compile_model` (dynamic shapes) with ``compile_backend``
    (``"inductor"``, or ``"aot_eager"`` / ``"eager"``, which generate no code); the first step
    compiles, and its time is printed once. Evaluation, the EMA and checkpoints use the model
    itself: a checkpoint's weights have the plain module's names.

    Example:
        >>> config = TrainingConfig(max_steps=100, batch_size=4)
        >>> config.lr, config.energy_coefficient, config.force_coefficient
        (0.0002, 4.0, 100.0)
    """

    max_steps: int = 2000
    batch_size: int = 8
    eval_batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 1e-3
    warmup_steps: int = 100
    warmup_factor: float = 0.2
    min_lr_factor: float = 0.01
    clip_grad_norm: float = 100.0
    ema_decay: float = 0.999
    energy_coefficient: float = 4.0
    force_coefficient: float = 100.0
    train_on_free_atoms: bool = True
    eval_on_free_atoms: bool = True
    normalize_targets: bool = True
    element_references: bool = False  # fit per-element energy references (linear) on the training set
    energy_per_atom: bool = False  # energy MAE per atom (the OMat24 recipe) instead of per system
    stress_loss: str = "decomposed"  # "decomposed" (isotropic + anisotropic MAE) | "plain" (MAE)
    stress_coefficient: float | None = None  # lambda_sigma of the plain stress loss
    stress_isotropic_coefficient: float | None = None  # lambda_p of the decomposed loss
    stress_anisotropic_coefficient: float | None = None  # lambda_a of the decomposed loss
    eval_every: int = 500
    checkpoint_every: int = 200
    log_every: int = 10
    amp: str = "none"  # "none" | "bf16" | "fp16"
    seed: int = 0
    num_workers: int = 0
    compile: bool = False  # train through torch.compile(model, dynamic=True)
    compile_backend: str = "inductor"  # torch.compile's backend with compile=True
    freeze_backbone: bool = False  # train the heads only (the model's ``heads``)
    backbone_lr_factor: float = 1.0  # the backbone's learning rate is this times the heads' ``lr``

    def __post_init__(self) -> None:
        if not self.compile and self.compile_backend != "inductor":
            raise ValueError(f"compile_backend={self.compile_backend!r} applies with compile=True")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}")
        for name in (
            "max_steps",
            "batch_size",
            "eval_batch_size",
            "eval_every",
            "checkpoint_every",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stress_loss not in ("decomposed", "plain"):
            raise ValueError(f"stress_loss must be 'decomposed' or 'plain', got {self.stress_loss!r}")
        wrong = "stress_coefficient" if self.stress_loss == "decomposed" else "stress_isotropic_coefficient"
        if getattr(self, wrong) is not None or (
            self.stress_loss == "plain" and self.stress_anisotropic_coefficient is not None
        ):
            raise ValueError(
                f"stress_loss={self.stress_loss!r} takes "
                + (
                    "stress_isotropic_coefficient and stress_anisotropic_coefficient"
                    if self.stress_loss == "decomposed"
                    else "stress_coefficient"
                )
                + ", not the other stress coefficients"
            )
        if not 0 <= self.warmup_steps:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        # torch accepts a negative clip and scales the gradient by a negative factor: the run would
        # climb its loss; a negative coefficient would do the same to its term
        if not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 (float('inf') for no clipping), got {self.clip_grad_norm}")
        for name in ("weight_decay", "energy_coefficient", "force_coefficient", "stress_coefficient",
                     "stress_isotropic_coefficient", "stress_anisotropic_coefficient"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not self.backbone_lr_factor > 0:
            raise ValueError(f"backbone_lr_factor must be > 0, got {self.backbone_lr_factor}")

    @property
    def stress_coefficients(self) -> dict[str, float]:
        """The stress terms of the loss and their coefficients (defaults filled in)."""
        names = (
            (("stress", self.stress_coefficient),)
            if self.stress_loss == "plain"
            else (
                ("stress_isotropic", self.stress_isotropic_coefficient),
                ("stress_anisotropic", self.stress_anisotropic_coefficient),
            )
        )
        return {name: DEFAULT_STRESS_COEFFICIENT if value is None else value for name, value in names}

    @property
    def stress_coefficient_set(self) -> bool:
        """Whether a stress coefficient was set (then stress must be in the data and the model)."""
        return any(
            value is not None
            for value in (
                self.stress_coefficient,
                self.stress_isotropic_coefficient,
                self.stress_anisotropic_coefficient,
            )
        )


@dataclass(frozen=True)
class RunStatistics:
    """What a training run takes from its training set beside the model's target statistics
    (:class:`~so2nn.models.TargetStatistics`), recorded in its checkpoints.

    Attributes:
        train_energy_mean: the mean training energy as read (eV, before element references):
            the validation's baseline of predicting the training mean.
        stress_std: the standard deviation of the training stress (eV/Angstrom^3), the scale
            of the stress loss; None when the training data has no stress.

    Example:
        >>> RunStatistics(train_energy_mean=-12.5)
        RunStatistics(train_energy_mean=-12.5, stress_std=None)
    """

    train_energy_mean: float
    stress_std: float | None = None
