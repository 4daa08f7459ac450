"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", arXiv:2402.04792).

Each step samples two responses per prompt from the current policy (one rollout, each prompt repeated
twice in consecutive rows), asks a judge which is better, and updates the policy on the judged pairs with
a registered paired offline loss (``loss``: DPO by default). The pairs are on-policy, so the data follows
the policy as it moves (Guo et al. Alg. 1; Xiong et al. 2024, iterative DPO, is the batched version).

Judging (:func:`judge_samples`): a judge that scores one response alone (gold, reward model, python,
a weighted sum) scores all 2N samples in one call and a pair is decided by the two scores; a pairwise
judge (lm, http, or any judge with its own ``compare``) is asked in both presentation orders through
:func:`prefopt.evaluation.judge_protocol.judge_pairs`, so a judge that always picks one position gives
ties, not labels. Ties (and token-identical samples) are dropped from the loss (``ties=skip``).

The pair loss is any registered algorithm with ``online = False``, ``inputs = "pairs"`` and
``head = "lm"``: its ``loss(policy, reference, batch)`` receives :class:`~prefopt.core.algorithm.PairLogps`
whose :class:`~prefopt.core.logprobs.SequenceLogps` carry both the summed log-probs and the response
lengths, so reference-free and length-normalised losses (simpo, orpo) fit as well as the reference-anchored
ones (dpo, ipo, hinge, robust-dpo, nca, apo-*, sppo-hard). Unpaired (kto), scalar-head (reward),
demonstration (sft) and online objectives do not, and are refused in one line.

With a fresh LoRA the policy equals the reference, every log-ratio is 0, and DPO's first loss is
-log sigmoid(0) = log 2.

Logged per step: ``tie_share`` (pairs the judge tied), ``pairs`` (pairs trained on), ``reward`` (mean judge
score of the samples, ``reward/<judge>`` per part of a weighted judge) and ``preference_margin`` (mean
chosen minus rejected judge score of the trained pairs), both only for a judge that scores;
``chosen_length`` / ``rejected_length`` (response tokens); the pair loss's ``loss`` and its own metrics
(``margin``, ``accuracy``, ``reward_chosen``, ...) and ``grad_norm``, from the first update of the step
(the policy that drew the samples); ``kl`` (k1, summed over the response, averaged over the trained
pairs' samples, against the run's reference); ``gold`` (mean score of a second judge, never trained on)
and ``judge_gold_agreement`` when ``gold`` is set; ``generation_seconds``, ``judge_seconds`` (gold
included), ``update_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from prefopt.core.algorithm import Algorithm, PairLogps, check_at_least
from prefopt.core.shared_prompt import pair_groups
from prefopt.data import TokenizedPair, collate_pairs
from prefopt.errors import PrefoptError
from prefopt.judges.base import TIE
from prefopt.training.inputs import PairInputs
from prefopt.training.online import JudgedOnlineAlgorithm, OnlineContext, evaluate_samples

# ---------------------------------------------------------------- which registered losses fit


def is_pair_loss(cls: type[Algorithm]) -> bool:
    """Whether a registered algorithm's loss takes chosen/rejected LM log-probs (PairLogps) offline."""
    return not cls.online and cls.inputs == "pairs" and cls.head == "lm"


def pair_loss_names() -> list[str]:
    """Every registered name whose loss fits online DPO, sorted."""
    from prefopt.core import registry

    found = registry.discover()
    return sorted(n for n, es in found.items() if len(es) == 1 and es[0].cls is not None and is_pair_loss(es[0].cls))


def make_pair_loss(name: str, options: str = "", beta: float | None = None, option: str = "loss") -> Algorithm:
    """The registered pair loss `name` with its Config from "k=v,k=v" `options` (and `beta` if given).

    Unknown or unsuitable names, unknown options and a beta the loss does not have are one-line errors
    naming `option` (the option that chose the loss).
    """
    from prefopt.core import registry
    from prefopt.training.config import build, field_types, parse_overrides

    found = registry.discover()
    if name not in found:
        raise PrefoptError(f"option '{option}': unknown pair loss '{name}'; use one of: {', '.join(pair_loss_names())}")
    cls = registry.resolve(found, name, "algorithm")
    if not is_pair_loss(cls):
        raise PrefoptError(f"option '{option}': '{name}' is not a paired offline objective; "
                           f"use one of: {', '.join(pair_loss_names())}")
    values = parse_overrides([kv for kv in options.split(",") if kv.strip()])
    known = field_types(cls.Config)
    for key in values:
        if key not in known:
            listed = ", ".join(known) or "none"
            raise PrefoptError(f"option '{option}_options': '{name}' has no option '{key}' (its options: {listed})")
    if beta is not None:
        if "beta" not in known:
            raise PrefoptError(f"option 'beta': '{name}' has no beta (its options: {', '.join(known) or 'none'})")
        if "beta" in values:
            raise PrefoptError(f"option 'beta': beta is also given in '{option}_options'; give it once")
        values["beta"] = beta
    return cls(build(cls.Config, values))


# ---------------------------------------------------------------- judging and pairing (pure)


@dataclass
class JudgedSamples:
    """A judge's verdicts on N prompts' two samples each (rows 2i and 2i + 1 of the sample list)."""

    decisions: list[float]  # (N,) 1.0: sample 2i is better, 0.0: sample 2i + 1 is, 0.5: a tie
    scores: list[float] | None = None  # (2N,) the judge's score of each sample, when it can score one alone


def is_pairwise(judge) -> bool:
    """Whether the judge decides pairs itself (lm, http, its own compare) rather than by comparing two scores."""
    from prefopt.judges import Judge
    from prefopt.judges.python import can_score

    own_compare = type(judge).compare is not Judge.compare
    return own_compare or callable(getattr(judge, "compare_proba", None)) or not can_score(judge)


def judge_samples(judge, messages: Sequence, texts: Sequence[str]) -> JudgedSamples:
    """Verdicts on the pairs (texts[2i], texts[2i + 1]), prompt i = messages[i].

    A judge that scores scores all 2N texts in one call (kept in ``scores``); a scoring judge's
    decisions compare the two scores, a pairwise one's come from asking it in both orders
    (:func:`~prefopt.evaluation.judge_protocol.judge_pairs`).
    """
    from prefopt.evaluation.judge_protocol import judge_pairs

    if len(texts) != 2 * len(messages):
        raise ValueError(f"expected two samples per prompt, got {len(texts)} for {len(messages)} prompts")
    from prefopt.judges.python import can_score

    scores = None
    if can_score(judge):
        scores = [float(s) for s in judge.score([m for m in messages for _ in range(2)], list(texts))]
    if is_pairwise(judge):
        decisions = list(judge_pairs(judge, messages, list(texts[0::2]), list(texts[1::2])).decisions)
    else:
        decisions = [1.0 if a > b else 0.0 if a < b else TIE for a, b in zip(scores[0::2], scores[1::2])]
    return JudgedSamples(decisions=decisions, scores=scores)


def build_pairs(decisions: Sequence[float], responses: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(chosen row, rejected row) for each prompt the judge decided; rows 2i and 2i + 1 are prompt i's samples.

    A tie is skipped (ties=skip), and so is a pair of token-identical samples (nothing to prefer).
    """
    if len(responses) != 2 * len(decisions):
        raise ValueError(f"expected two responses per decision, got {len(responses)} for {len(decisions)}")
    pairs = []
    for i, d in enumerate(decisions):
        a, b = 2 * i, 2 * i + 1
        if d == TIE or list(responses[a]) == list(responses[b]):
            continue
        pairs.append((a, b) if d > TIE else (b, a))
    return pairs


def check_online_dpo_options(config) -> None:
    check_at_least("updates", config.updates, 1)
    check_at_least("max_new_tokens", config.max_new_tokens, 1)
    if not config.judge.strip():
        raise PrefoptError("option 'judge': give a judge spec, e.g. gold:qa, python:my_rewards:brevity or lm")


# ---------------------------------------------------------------- the algorithm


class OnlineDPO(JudgedOnlineAlgorithm):
    """Online DPO: two on-policy samples per prompt, labelled by any judge, train any registered pair loss (Guo et al. 2024)."""

    shares_prompts = True  # a pair's forwards run its prompt once (run option share_prompt)

    @dataclass
    class Config:
        judge: str = "gold:qa"  # labels the pairs: gold:<task>, reward:<run dir>, python:MODULE:FUNCTION, lm:<model>, http:<url>, or scoring judges comma-separated
        judge_weights: str = ""  # weights of comma-separated judges, e.g. "1,0.5" (empty: 1 each)
        loss: str = "dpo"  # any registered paired offline objective (dpo, ipo, hinge, simpo, ...)
        loss_options: str = ""  # its options, e.g. "label_smoothing=0.1" (empty: its defaults)
        beta: float | None = None  # overrides the loss's beta (None: the loss's own default)
        gold: str = ""  # a second judge logged on every step's samples ("gold"), never trained on
        max_new_tokens: int = 32  # rollout length limit
        temperature: float = 1.0  # sampling temperature (two samples per prompt)
        top_p: float = 1.0  # nucleus sampling
        updates: int = 1  # gradient steps on each step's judged pairs
        ties: Literal["skip"] = "skip"  # pairs the judge ties: skip (dropped from the loss)

        def __post_init__(self):
            check_online_dpo_options(self)

    needs_reference = True
    loss_option = "loss"

    def completions_per_prompt(self) -> int:
        return 2  # a pair  # the Config field naming the pair loss; its options are in "<loss_option>_options"

    def __init__(self, config=None):
        super().__init__(config)
        c = self.config
        name, options = getattr(c, self.loss_option), getattr(c, f"{self.loss_option}_options")
        self.objective = make_pair_loss(name, options, c.beta, self.loss_option)

    def train_step(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        from prefopt.judges import agreement, tie_rate

        t0 = time.perf_counter()
        rollout, _ = ctx.rollout([p for p in prompts for _ in range(2)], self.sampling())  # rows 2i, 2i + 1
        texts = rollout.texts(ctx.tokenizer)
        lengths = rollout.lengths().tolist()
        responses = [rollout.response_ids[i, : lengths[i]].tolist() for i in range(len(texts))]
        t_generated = time.perf_counter()

        verdicts = judge_samples(self.judge, messages, texts)
        row: dict[str, float] = {"tie_share": tie_rate(verdicts.decisions)}
        if verdicts.scores is not None:
            row["reward"] = sum(verdicts.scores) / len(verdicts.scores)
            row.update(self.reward_parts())
        if self.gold is not None:  # the oracle on the same samples, never trained on
            gold = judge_samples(self.gold, messages, texts)
            if gold.scores is not None:
                row["gold"] = sum(gold.scores) / len(gold.scores)
            row["judge_gold_agreement"] = agreement(verdicts.decisions, gold.decisions)
        t_judged = time.perf_counter()

        pairs = build_pairs(verdicts.decisions, responses)
        row["pairs"] = float(len(pairs))
        if pairs:
            row["chosen_length"] = sum(lengths[c] for c, _ in pairs) / len(pairs)
            row["rejected_length"] = sum(lengths[r] for _, r in pairs) / len(pairs)
            if verdicts.scores is not None:
                s = verdicts.scores
                row["preference_margin"] = sum(s[c] - s[r] for c, r in pairs) / len(pairs)
            row.update(self._update(ctx, prompts, responses, pairs))
        row.update({
            "generation_seconds": t_generated - t0,
            "judge_seconds": t_judged - t_generated,
            "update_seconds": time.perf_counter() - t_judged,
        })
        return row

    def _update(self, ctx: OnlineContext, prompts, responses, pairs: list[tuple[int, int]]) -> dict[str, float]:
        """`updates` optimizer steps on the pairs; the loss, its metrics and kl of the first (pre-update) pass."""
        examples = [TokenizedPair(k, prompts[c // 2], responses[c], responses[r]) for k, (c, r) in enumerate(pairs)]
        batch = {k: v.to(ctx.device) for k, v in collate_pairs(examples, ctx.tokenizer.pad_token_id).items()}
        batch = ctx.with_shared_prompts(batch, pair_groups(len(batch["input_ids"])))  # each prompt once per pair
        reference = PairLogps.from_concatenated(ctx.reference_sequence_logps(batch))  # no grad
        objective_reference = reference if self.objective.needs_reference else None
        metrics: dict[str, float] = {}
        for update in range(self.config.updates):
            with ctx.autocast():
                policy = PairInputs().policy(ctx.lm, batch)
            out = self.objective.loss(policy, objective_reference, batch)
            loss = out.losses.mean()
            grad_norm = ctx.update(loss)
            if update == 0:
                logratio = (policy.chosen.sum.detach() - reference.chosen.sum,
                            policy.rejected.sum.detach() - reference.rejected.sum)
                metrics = {name: float(v.float().mean()) for name, v in out.metrics.items()}
                metrics.update({"loss": float(loss.detach()), "grad_norm": grad_norm,
                                "kl": float(sum(x.float().sum() for x in logratio)) / (2 * len(pairs))})
        return metrics

    def evaluate(self, ctx: OnlineContext, prompts: list[list[int]], messages: list) -> dict[str, float]:
        """Held-out samples: the gold judge's score (else the judge's, when it scores), KL to the reference."""
        from prefopt.judges.python import can_score

        judge = self.gold if self.gold is not None else self.judge if can_score(self.judge) else None
        if judge is None or not can_score(judge):
            return {}
        return evaluate_samples(ctx, prompts, messages, judge, self.sampling())
