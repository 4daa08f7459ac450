"""RLAIF as online DPO with an AI judge: :class:`~prefopt.algorithms.online_dpo.OnlineDPO` with its own defaults.

Each step samples two responses per prompt from the current policy, asks an AI judge which is better
(a local LM asked in both orders by default; ties are dropped), and updates the policy on the judged pairs
with a registered paired offline objective, DPO by default (Bai et al. 2022, "Constitutional AI",
arXiv:2212.08073; Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback",
arXiv:2402.04792; Xiong et al. 2024, iterative DPO). Sampling, judging, pairing and the update are
online-dpo's; rlaif differs only in its defaults (judge ``lm:smollm2-135m-instruct``, gold ``gold:qa``),
in naming the pair loss ``objective`` / ``objective_options``, and in two log keys kept from before it
shared that code: ``tie_rate`` (online-dpo's ``tie_share``) and ``reward``, the gold score of the
samples (online-dpo's ``gold``; a judge's own score, if it has one, is ``judge_reward``). When the task
has a gold rule, the judge's agreement with it (``judge_gold_agreement``) is logged too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefopt.algorithms.online_dpo import OnlineDPO, check_online_dpo_options
from prefopt.training.online import OnlineContext


class RLAIF(OnlineDPO):
    """RLAIF / online DPO: on-policy pairs labelled by an AI judge train a paired objective (Guo et al. 2024)."""

    @dataclass
    class Config:
        judge: str = "lm:smollm2-135m-instruct"  # labels the pairs: lm:<model>, http:<url>, reward:<run dir>, gold:<task>, python:MODULE:FUNCTION
        judge_weights: str = ""  # weights of comma-separated scoring judges, e.g. "1,0.5" (empty: 1 each)
        objective: str = "dpo"  # any registered paired offline objective (dpo, ipo, hinge, simpo, ...)
        objective_options: str = ""  # its options, e.g. "beta=0.2,label_smoothing=0.1"
        beta: float | None = None  # overrides the objective's beta (None: its own default)
        gold: str = "gold:qa"  # oracle for agreement and evaluation ("" for none)
        max_new_tokens: int = 32  # rollout length limit
        temperature: float = 1.0  # sampling temperature (two samples per prompt)
        top_p: float = 1.0  # nucleus sampling
        updates: int = 1  # gradient steps on each round's judged pairs
        ties: Literal["skip"] = "skip"  # pairs the judge ties: skip (dropped from the loss)

        def __post_init__(self):
            check_online_dpo_options(self)

    loss_option = "objective"

    def train_step(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        row = super().train_step(ctx, prompts, messages)
        row["tie_rate"] = row.pop("tie_share")
        if "reward" in row:
            row["judge_reward"] = row.pop("reward")
        if "gold" in row:
            row["reward"] = row.pop("gold")
        return row
