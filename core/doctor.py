"""The training doctor: reads the loss curve as it is drawn and says when to step in.

It only decides; the training loop carries out the intervention (rollback, lower learning rate,
tighter clipping, early stop), so every intervention stays visible in `core/train.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from core.config import DoctorConfig


@dataclass
class Finding:
    kind: str  # nan_loss, divergence, plateau, overfitting
    detail: str
    action: str  # rollback or stop


@dataclass
class Doctor:
    cfg: DoctorConfig
    ema: float | None = None
    rollbacks: int = 0
    lr_scale: float = 1.0
    clip_scale: float = 1.0
    best_val_loss: float = math.inf
    evals_without_gain: int = 0
    gaps: list[float] = field(default_factory=list)

    def state(self) -> dict:
        return {"ema": self.ema, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale,
                "clip_scale": self.clip_scale, "best_val_loss": self.best_val_loss,
                "evals_without_gain": self.evals_without_gain, "gaps": self.gaps}

    def restore(self, state: dict | None) -> None:
        for key, value in (state or {}).items():
            setattr(self, key, value)

    def check_step(self, loss: float) -> Finding | None:
        if not self.cfg.enabled:
            return None
        if not math.isfinite(loss):
            return self._rollback("nan_loss", f"loss is {loss}")
        # Both a ratio and an absolute rise: near zero loss a single hard batch is several times the
        # average without anything being wrong.
        if self.ema is not None and loss > self.cfg.spike_factor * self.ema and loss - self.ema > self.cfg.spike_min_delta:
            return self._rollback("divergence", f"loss {loss:.3f} > {self.cfg.spike_factor:g} x running "
                                                f"average {self.ema:.3f}")
        self.ema = loss if self.ema is None else (1 - self.cfg.ema_alpha) * self.ema + self.cfg.ema_alpha * loss
        return None

    def _rollback(self, kind: str, detail: str) -> Finding:
        self.rollbacks += 1
        if self.rollbacks > self.cfg.max_rollbacks:
            return Finding(kind, detail + f"; {self.cfg.max_rollbacks} rollbacks did not help", "stop")
        self.lr_scale *= self.cfg.lr_backoff
        self.clip_scale *= self.cfg.clip_backoff
        return Finding(kind, detail, "rollback")

    def check_eval(self, val_loss: float, train_loss: float | None) -> Finding | None:
        if not self.cfg.enabled:
            return None
        if val_loss < self.best_val_loss - self.cfg.plateau_min_delta:
            self.best_val_loss, self.evals_without_gain = val_loss, 0
        else:
            self.evals_without_gain += 1
        if train_loss is not None and math.isfinite(train_loss):
            self.gaps.append(val_loss - train_loss)
        recent = self.gaps[-(self.cfg.gap_patience + 1):]
        widening = len(recent) == self.cfg.gap_patience + 1 and all(b > a for a, b in zip(recent, recent[1:]))
        if widening and recent[-1] > self.cfg.gap_max:
            return Finding("overfitting", f"train-validation gap widened to {recent[-1]:.3f} over "
                                          f"{self.cfg.gap_patience} evaluations", "stop")
        if self.evals_without_gain >= self.cfg.plateau_patience:
            return Finding("plateau", f"validation loss has not improved by {self.cfg.plateau_min_delta:g} in "
                                      f"{self.evals_without_gain} evaluations", "stop")
        return None
