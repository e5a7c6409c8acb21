"""Training the Gaussian-ensemble baseline (:class:`simgan.ensemble.GaussianEnsemble`), following PETS.

Every member sees its own bootstrap resample of the training split; the loss is the Gaussian NLL plus BCE for
termination plus a small penalty on ``max_logvar - min_logvar``. Validation keeps each member's best snapshot and
stops when no member improves; the ``elites`` members with the lowest validation MSE are kept, then realism and
(unless ``forecast_calibration`` is off) the forecast noise (correlation and spread) are calibrated on the validation
batch.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from simgan.dataset_format import TransitionBatch
from simgan.ensemble import EnsembleConfig, EnsembleError, GaussianEnsemble
from simgan.forecast_calibration import calibrate_forecast_noise
from simgan.world_model import ModelInfo


def split_for_training(dataset: Any, config: EnsembleConfig) -> tuple[TransitionBatch, TransitionBatch]:
    """(training, validation) batches: the dataset's episode split, or a seeded row holdout if it has none."""
    train, validation = dataset.train, dataset.validation
    if len(validation) == 0:
        rng = np.random.default_rng(config.seed)
        held = rng.random(len(train)) < config.holdout_fraction
        train, validation = train.select(~held), train.select(held)
    if len(train) == 0 or len(validation) == 0:
        raise EnsembleError(
            f"dataset: expected transitions for both training and validation, got {len(train)} and {len(validation)}"
        )
    if len(validation) > config.max_validation:
        rows = np.sort(
            np.random.default_rng(config.seed).choice(len(validation), config.max_validation, False)
        )
        validation = validation.select(rows)
    return train, validation


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def _tensors(
    model: GaussianEnsemble, batch: TransitionBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised inputs N x I, normalised targets N x T, terminated N float) on the model's device."""
    obs = torch.as_tensor(batch.obs, device=model.device)
    inputs = model.normalized_inputs(obs, torch.as_tensor(batch.action))
    targets = model.normalized_targets(
        obs,
        torch.as_tensor(batch.next_obs, device=model.device),
        torch.as_tensor(batch.reward, device=model.device),
    )
    return inputs, targets, torch.as_tensor(batch.terminated, device=model.device, dtype=torch.float32)


@torch.no_grad()
def _member_mse(
    model: GaussianEnsemble, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 8192
) -> torch.Tensor:
    """Validation MSE of every member's mean (normalised units), M floats."""
    total = torch.zeros(model.config.members, device=model.device)
    for i in range(0, len(inputs), chunk):
        mean, _, _ = model(inputs[i : i + chunk])
        total += ((mean - targets[i : i + chunk]) ** 2).sum(dim=(1, 2))
    return total / targets.numel()


def train_ensemble(
    dataset: Any, out: str | Path | None = None, config: EnsembleConfig | None = None
) -> GaussianEnsemble:
    """Train a :class:`GaussianEnsemble` on a dataset's training split; early-stop and pick elites on validation.

    Args:
        dataset: a :class:`simgan.data.Dataset` (its ``validation`` episodes drive early stopping and elites).
        out: model directory to write (checkpoint + TensorBoard logs under ``out/tb``); None writes nothing.
        config: hyperparameters; defaults to ``EnsembleConfig()``.

    Returns:
        The trained model (eval mode), each member at its best validation snapshot, elites set, realism calibrated.
    """
    import time

    from tqdm.auto import tqdm

    from simgan.device import resolve_device

    config = config or EnsembleConfig()
    device = resolve_device(config.device)
    generator = torch.Generator().manual_seed(config.seed)  # CPU: same numbers on every device
    train_batch, val_batch = split_for_training(dataset, config)
    model = GaussianEnsemble(ModelInfo.from_dataset(dataset), config)
    model.reset_parameters(generator)
    model.fit_normalizer(train_batch)
    model.to(device)
    inputs, targets, terminated = _tensors(model, train_batch)  # N x I, N x T, N
    val_inputs, val_targets, _ = _tensors(model, val_batch)
    n, m = len(inputs), config.members
    bootstrap = torch.randint(0, n, (m, n), generator=generator).to(device)  # each member's resample, M x N

    layer_weights = list(model.weights)
    others = [p for p in model.parameters() if all(p is not w for w in layer_weights)]
    optimizer = torch.optim.Adam(
        [
            {"params": layer_weights, "weight_decay": config.weight_decay},
            {"params": others, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    writer = None
    if out is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(out) / "tb"))
        rows = "\n".join(f"|{k}|{v}|" for k, v in asdict(config).items())
        writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")

    best_mse = torch.full((m,), float("inf"), device=device)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stale, start, step = 0, time.perf_counter(), 0
    bar = tqdm(range(config.steps), desc="ensemble", disable=not config.progress, dynamic_ncols=True)
    for step in bar:
        # ---- one bootstrapped minibatch per member: M x B rows ----------------------------------------------
        pick = torch.randint(0, n, (m, config.batch_size), generator=generator).to(device)
        rows = bootstrap.gather(1, pick)
        mean, logvar, logit = model(inputs[rows])  # M x B x T, M x B x T, M x B
        nll = (((mean - targets[rows]) ** 2) * torch.exp(-logvar) + logvar).mean()
        bce = F.binary_cross_entropy_with_logits(logit, terminated[rows])
        bound = config.logvar_bound_weight * (model.max_logvar.sum() - model.min_logvar.sum())
        loss = nll + bce + bound
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        # ---- validation: keep each member's best snapshot; stop when none improves ----------------------------
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            mse = _member_mse(model, val_inputs, val_targets)
            improved = (best_mse - mse) / best_mse.abs().clamp_min(1e-12) > config.improvement_threshold
            improved |= torch.isinf(best_mse)
            if improved.any():
                best_mse = torch.where(improved, mse, best_mse)
                for name, value in model.state_dict().items():
                    if name.startswith(("weights.", "biases.")):
                        best_state[name][improved] = value[improved]
                    else:
                        best_state[name] = value.detach().clone()
                stale = 0
            else:
                stale += 1
            bar.set_postfix(nll=f"{nll.item():.3f}", val_mse=f"{mse.min().item():.4g}")
            if writer is not None:
                writer.add_scalar("losses/nll", nll.item(), step + 1)
                writer.add_scalar("losses/termination_bce", bce.item(), step + 1)
                writer.add_scalar("eval/val_mse_best_member", mse.min().item(), step + 1)
                writer.add_scalar("eval/val_mse_mean", mse.mean().item(), step + 1)
                writer.add_scalar("charts/seconds", time.perf_counter() - start, step + 1)
            if stale >= config.patience:
                break
    bar.close()

    # ---- best snapshots, elites, realism calibration, checkpoint -------------------------------------------------
    model.load_state_dict(best_state)
    model.elite_index = torch.argsort(best_mse)[: config.elites].sort().values
    model.eval()
    model.calibrate_realism(val_batch)
    metrics: dict[str, Any] = {
        "val_mse_elites": float(best_mse[model.elite_index].mean()),
        "steps": step + 1,
        "train_seconds": time.perf_counter() - start,
        "train_transitions": n,
        "validation_transitions": len(val_batch),
    }
    if config.forecast_calibration:
        model.noise_correlation, model.noise_spread, coverage = calibrate_forecast_noise(
            model, val_batch, seed=config.seed
        )
        metrics["forecast_band_coverage"] = coverage
    if writer is not None:
        writer.add_scalar("eval/val_mse_elites", metrics["val_mse_elites"], step + 1)
        writer.close()
    if out is not None:
        model.save(out, metrics=metrics)
    return model


__all__ = ["split_for_training", "train_ensemble"]
