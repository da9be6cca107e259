"""Extra training-loss terms: pieces the training step adds to the model's loss, each with its own state.

A term has a ``name`` (its key in the checkpoint), ``loss(model, out)`` (added to a micro-batch's loss,
bits/dim), ``after_step(applied, info)`` (called once per optimiser step), ``scalars()`` (logged as
``train/<key>``) and ``state_dict`` / ``load_state_dict``. None of them touches the reported bound.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class TCTerm:
    """The Factor-VAE total-correlation penalty ``loss.tc_weight * TC(z) / (D ln 2)`` on the global code
    (flowvae/tc.py): a discriminator trained alongside on the codes of each step's batch."""

    name = "tc"

    def __init__(self, model, weight: float, device: torch.device):
        from ..tc import TCPenalty

        self.penalty = TCPenalty(model.cfg.z_dim, weight, device)
        self.codes: list[Tensor] = []

    def loss(self, model, out: dict) -> Tensor:
        z = out["code"]["global"]  # the global code, by name
        self.codes.append(z.detach())
        return self.penalty.loss_bpd(z, model.bound)

    def after_step(self, applied: bool, info) -> None:
        """One discriminator step on this step's codes (all micro-batches), when the model step was applied."""
        if applied:
            self.penalty.update(torch.cat(self.codes), info)
        self.codes = []

    def scalars(self) -> dict:
        return dict(self.penalty.last)

    def state_dict(self) -> dict:
        return self.penalty.state_dict()

    def load_state_dict(self, state: Optional[dict]) -> None:
        if state is not None:
            self.penalty.load_state_dict(state)


def extra_terms(cfg, model, device: torch.device) -> list:
    """The extra loss terms a config asks for (an empty list for the plain bound)."""
    return [TCTerm(model, cfg.loss.tc_weight, device)] if cfg.loss.tc_weight > 0 else []
