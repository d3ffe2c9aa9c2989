"""The learning-rate range test: train briefly on the TRAINING rows (never the eval split) while the rate grows
exponentially from `start` to `end`, record the smoothed loss per rate, stop once it blows up, and suggest the
rate where the loss fell fastest (steepest descent of the smoothed curve, before its minimum).

    result = lr_find(cfg, steps=60)   # {"lrs", "losses", "suggestion", "min_loss_lr", "why", ...}

The run is the config's own: its model, method, LoRA settings, data and batch size; AdamW with the config's
weight decay, fp32, no warmup. The model is thrown away afterwards; nothing is saved. `python -m lora_core lr-find
CONFIG` prints it; the Config builder draws the curve and applies the suggestion on click.
"""
from __future__ import annotations

import math

from . import data, models, tokens
from .config import ExperimentConfig
from .errors import ConfigError

SMOOTHING = 0.9   # exponential moving average of the loss (bias-corrected)
BLOW_UP = 4.0     # stop once the smoothed loss exceeds this multiple of the best so far


def suggest(lrs: list[float], losses: list[float]) -> tuple[float, str]:
    """(suggested rate, why): the steepest descent of loss vs log(rate) before the minimum."""
    if len(lrs) < 4:
        raise ConfigError("lr-find steps", f"only {len(lrs)} points before the loss blew up; widen the range")
    best = min(range(len(losses)), key=losses.__getitem__)
    slopes = [(losses[i + 1] - losses[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
              for i in range(1, max(best, 2))]
    i = 1 + min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[i], (f"steepest descent of the smoothed loss at lr {lrs[i]:.2g} (loss {losses[i]:.3f}); the "
                    f"lowest loss {losses[best]:.3f} was at lr {lrs[best]:.2g}")


def lr_find(cfg: ExperimentConfig, steps: int = 60, start: float = 1e-6, end: float = 1.0) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from transformers import set_seed

    if not 0 < start < end:
        raise ConfigError("lr-find range", f"needs 0 < start < end, got start={start:g} end={end:g}")
    set_seed(cfg.train.seed)
    splits = data.load_splits(cfg)  # only splits.train is read below
    model, tokenizer = models.load_for_training(cfg, splits.num_labels or 2, splits.id2label)
    train, _ = tokens.cached_tokenize(splits, tokenizer, cfg)[:2]
    loader = DataLoader(train, batch_size=cfg.train.batch_size, shuffle=True,
                        collate_fn=tokens.make_collator(cfg, tokenizer),
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=start, weight_decay=cfg.train.weight_decay)
    factor = (end / start) ** (1 / max(steps - 1, 1))
    lrs, losses, avg, best = [], [], 0.0, math.inf
    model.train()
    batches = iter(())
    for step in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        lr = start * factor ** step
        for group in opt.param_groups:
            group["lr"] = lr
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            break
        opt.zero_grad()
        loss.backward()
        if cfg.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        opt.step()
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss.item()
        smooth = avg / (1 - SMOOTHING ** (step + 1))
        lrs.append(lr)
        losses.append(smooth)
        best = min(best, smooth)
        if step > 4 and smooth > BLOW_UP * best:
            break
    suggestion, why = suggest(lrs, losses)
    return {"lrs": lrs, "losses": losses, "suggestion": suggestion, "why": why,
            "min_loss_lr": lrs[min(range(len(losses)), key=losses.__getitem__)], "steps": len(lrs),
            "train_rows": len(splits.train), "method": cfg.method, "batch_size": cfg.train.batch_size}
