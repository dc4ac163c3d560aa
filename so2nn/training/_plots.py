"""What a training run shows: a model's predictions beside the targets, and the summary figure
(learning curves and energy/force parity plots, with matplotlib)."""

from __future__ import annotations

from pathlib import Path

import torch

from ._predict import model_outputs

__all__ = ["plot_summary", "predictions"]


@torch.no_grad()
def predictions(model, dataset, batch_size: int, device) -> dict[str, torch.Tensor]:
    """``model``'s energies and forces on a labelled ``dataset`` beside its targets (on the CPU,
    float32): ``energy_pred``, ``energy_true`` ``[B]``, ``forces_pred``, ``forces_true`` ``[N, 3]``."""
    model.eval()
    pred_e, true_e, pred_f, true_f = [], [], [], []
    for _, batch, out in model_outputs(model, dataset, range(len(dataset)), batch_size, device):
        pred_e.append(out["energy"].float().cpu())
        true_e.append(batch.energy.view(-1).cpu())
        pred_f.append(out["forces"].float().cpu())
        true_f.append(batch.forces.cpu())
    return {"energy_pred": torch.cat(pred_e), "energy_true": torch.cat(true_e),
            "forces_pred": torch.cat(pred_f), "forces_true": torch.cat(true_f)}


def plot_summary(train: dict[str, list[float]], val: dict[str, list[float]], pred: dict[str, torch.Tensor],
                 path: Path) -> Path:
    """A PNG of four panels: the training loss by step (``train``, columns of ``train_log.csv``),
    the validation MAEs and their baselines by step (``val``, of ``val_log.csv``), and energy
    and force parity plots of ``pred`` (:func:`predictions`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    axes[0].plot(train["step"], train["loss"], lw=1)
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    if val:
        axes[1].plot(val["step"], val["energy_mae"], "o-", label="energy MAE (eV)")
        axes[1].plot(val["step"], val["forces_mae"], "s-", label="force MAE (eV/A)")
        axes[1].axhline(val["energy_mae_mean_baseline"][-1], color="C0", ls=":", label="predict mean energy")
        axes[1].axhline(val["forces_mae_zero_baseline"][-1], color="C1", ls=":", label="predict zero forces")
        axes[1].set(xlabel="step", yscale="log", title="validation (EMA weights)")
        axes[1].legend(fontsize=8)
    for ax, key, unit in ((axes[2], "energy", "eV"), (axes[3], "forces", "eV/A")):
        t, p = pred[f"{key}_true"].reshape(-1), pred[f"{key}_pred"].reshape(-1)
        ax.scatter(t, p, s=4, alpha=0.5)
        lo, hi = float(torch.minimum(t.min(), p.min())), float(torch.maximum(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(xlabel=f"true {key} ({unit})", ylabel=f"predicted {key} ({unit})",
               title=f"{key} parity (validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
