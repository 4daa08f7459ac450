"""Length-normalised DPO: the DPO sigmoid loss on per-token mean log-ratios.

Summed log-probs grow with response length, so plain DPO can prefer long
responses for their length alone; averaging over tokens removes that pull
(the normalisation used by e.g. SimPO and R-DPO, here kept with a reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.algorithm import Algorithm, LossOutput, PairLogps, preference_accuracy


class LengthNormalisedDPO(Algorithm):
    """DPO on per-token average log-ratios (example plugin)."""

    @dataclass
    class Config:
        beta: float = 1.0  # larger than DPO's 0.1: mean log-ratios are ~length times smaller

    needs_reference = True
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        chosen = policy.chosen.mean - reference.chosen.mean  # (B,)
        rejected = policy.rejected.mean - reference.rejected.mean  # (B,)
        margin = self.config.beta * (chosen - rejected)  # (B,)
        return LossOutput(
            losses=-F.logsigmoid(margin),
            metrics={"margin": margin.detach(), "accuracy": preference_accuracy(margin.detach())},
        )
