"""Length-normalised DPO: the DPO sigmoid loss on per-token mean log-ratios.

Summed log-probs grow with response length, so plain DPO can prefer long
responses for their length alone; averaging over tokens removes that pull
(the normalisation used by e.g. SimPO and R-DPO, here kept with a reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.core.algorithm import Algorithm, LossOutput, PairLogps, check_positive, logratios, pair_metrics


class LengthNormalisedDPO(Algorithm):
    """DPO on per-token average log-ratios (example plugin)."""

    @dataclass
    class Config:
        beta: float = 1.0  # larger than DPO's 0.1: mean log-ratios are ~length times smaller

        def __post_init__(self):
            check_positive("beta", self.beta)  # rejects NaN too

    needs_reference = True
    inputs = "pairs"

    def loss(self, policy: PairLogps, reference: PairLogps | None, batch: dict) -> LossOutput:
        chosen, rejected = logratios(policy, reference, per_token=True)  # (B,), (B,)
        beta = self.config.beta
        losses = -F.logsigmoid(beta * (chosen - rejected))  # (B,)
        return LossOutput(losses=losses, metrics=pair_metrics(beta * chosen, beta * rejected, policy))
