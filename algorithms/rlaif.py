"""RLAIF as online / iterative DPO: an AI judge labels on-policy pairs.

Each step samples two responses per prompt from the current policy, asks a
judge which is better (an LM judge asked in both orders by default; ties are
dropped), and updates the policy on the judged pairs with a registered paired
offline objective — DPO by default, any other by name (Bai et al. 2022,
"Constitutional AI", arXiv:2212.08073; Guo et al. 2024, "Direct Language
Model Alignment from Online AI Feedback", arXiv:2402.04792; Xiong et al. 2024,
iterative DPO). When the task has a gold rule, the judge's agreement with it
and the gold score of the samples are logged too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefopt.core.algorithm import PairLogps
from prefopt.core.generate import SamplingConfig
from prefopt.data import TokenizedPair, collate_pairs
from prefopt.errors import PrefoptError
from prefopt.training.inputs import PairInputs
from prefopt.training.online import OnlineAlgorithm, OnlineContext, evaluate_samples


class RLAIF(OnlineAlgorithm):
    """RLAIF / online DPO: on-policy pairs labelled by an AI judge train a paired objective (Guo et al. 2024)."""

    @dataclass
    class Config:
        judge: str = "lm:smollm2-135m-instruct"  # labels the pairs: lm:<model>, http:<url>, reward:<run dir>, gold:<task>
        objective: str = "dpo"  # any registered paired algorithm
        objective_options: str = ""  # its options, e.g. "beta=0.2,label_smoothing=0.1"
        gold: str = "gold:qa"  # oracle for agreement and evaluation ("" for none)
        max_new_tokens: int = 32  # rollout length limit
        temperature: float = 1.0  # sampling temperature (two samples per prompt)
        top_p: float = 1.0  # nucleus sampling
        updates: int = 1  # gradient steps on each round's judged pairs

        def __post_init__(self):
            if self.updates < 1:
                raise PrefoptError(f"option 'updates': must be >= 1, got {self.updates}")

    needs_reference = True

    def __init__(self, config=None):
        super().__init__(config)
        from prefopt.core import registry
        from prefopt.training.config import parse_overrides, split_options

        cls = registry.get(self.config.objective)
        if cls.online or cls.inputs != "pairs" or cls.head != "lm":
            raise PrefoptError(f"option 'objective': '{self.config.objective}' is not a paired offline objective")
        values = parse_overrides([kv for kv in self.config.objective_options.split(",") if kv.strip()])
        _, objective_config = split_options(values, cls.Config, "option 'objective_options'")
        self.objective = cls(objective_config)
        self.judge = self.gold = None

    def reward_source(self) -> str | None:
        return self.config.judge

    def setup(self, ctx: OnlineContext) -> None:
        from prefopt.judges import make_judge

        self.judge = make_judge(self.config.judge)
        self.gold = make_judge(self.config.gold) if self.config.gold else None

    def _sampling(self) -> SamplingConfig:
        c = self.config
        return SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p)

    def train_step(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        from prefopt.judges import agreement, tie_rate

        t0 = time.perf_counter()
        n = len(prompts)
        rollout, _ = ctx.rollout(prompts + prompts, self._sampling())  # two samples per prompt
        texts = rollout.texts(ctx.tokenizer)
        t_generated = time.perf_counter()
        decisions = self.judge.compare(messages, texts[:n], texts[n:])  # 1: first better, 0: second, 0.5 tie
        row = {"tie_rate": tie_rate(decisions)}
        if self.gold is not None:
            gold = self.gold.compare(messages, texts[:n], texts[n:])
            row["judge_gold_agreement"] = agreement(decisions, gold)
            row["reward"] = float(sum(self.gold.score(messages + messages, texts)) / (2 * n))
        t_judged = time.perf_counter()

        lengths = rollout.lengths().tolist()
        responses = [rollout.response_ids[i, : lengths[i]].tolist() for i in range(2 * n)]
        pairs = []
        for i, d in enumerate(decisions):
            if d == 0.5 or responses[i] == responses[n + i]:
                continue
            chosen, rejected = (i, n + i) if d == 1.0 else (n + i, i)
            pairs.append(TokenizedPair(len(pairs), prompts[i], responses[chosen], responses[rejected]))
        row["pairs"] = len(pairs)
        if pairs:
            batch = collate_pairs(pairs, ctx.tokenizer.pad_token_id)
            batch = {k: v.to(ctx.device) for k, v in batch.items()}
            reference = PairLogps.from_concatenated(ctx.reference_sequence_logps(batch))
            for _ in range(self.config.updates):
                with ctx.autocast():
                    policy = PairInputs().policy(ctx.lm, batch)
                out = self.objective.loss(policy, reference, batch)
                loss = out.losses.mean()
                row["grad_norm"] = ctx.update(loss)
            row["loss"] = float(loss.detach())
            row.update({k: float(v.float().mean()) for k, v in out.metrics.items() if k in ("margin", "accuracy")})
        row.update({
            "generation_seconds": t_generated - t0,
            "judge_seconds": t_judged - t_generated,
            "update_seconds": time.perf_counter() - t_judged,
        })
        return row

    def evaluate(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        """Gold score (when there is an oracle) and KL to the reference of held-out samples."""
        if self.gold is None:
            return {}
        return evaluate_samples(ctx, prompts, messages, self.gold, self._sampling())

