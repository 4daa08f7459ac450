"""Judges: who decides which of two responses is better.

One small interface (:class:`Judge`, :mod:`prefopt.judges.base`) with five
built-in kinds, found the same way algorithms are (the entry-point group
``prefopt.judges``, :mod:`prefopt.judges.registry`), so a package can add its
own judge without touching prefopt::

    make_judge("gold:qa")                     # a built-in task's gold rule (qa, constraints, tone)
    make_judge("reward:runs/reward-2026...")  # a reward model trained by `prefopt run --algo reward`
    make_judge("lm:smollm2-135m-instruct")    # a local causal LM asked "A or B?"
    make_judge("http:http://127.0.0.1:8000/v1", model="qwen")  # an OpenAI-compatible server
    make_judge("python:my_rewards:brevity")  # a Python reward function, trl's signature
    make_judge("python:my_rewards:brevity,gold:qa", weights=[1, 0.5])  # a weighted sum of scoring judges

Decisions are floats: 1.0 = the first response (a) is better, 0.0 = the second
(b), 0.5 = a tie. The two pairwise judges (``lm``, ``http``) ask in both orders
(a shown as A, then as B) and call a pair a tie when the answers disagree: a
judge that always says "A" (position bias) then produces ties, not wins.
"""

from __future__ import annotations

from prefopt.judges.base import (
    JUDGE_TEMPLATE,
    TIE,
    Judge,
    agreement,
    as_messages,
    combine_orders,
    judge_prompt,
    render_conversation,
    tie_rate,
)
from prefopt.judges.gold import GoldJudge
from prefopt.judges.http import HTTPJudge, parse_letter
from prefopt.judges.lm import LMJudge
from prefopt.judges.python import PythonJudge, WeightedJudge, can_score
from prefopt.judges.registry import GROUP, judge_kinds, make_judge, split_spec, split_specs
from prefopt.judges.reward_model import RewardModelJudge

__all__ = [
    "GROUP",
    "JUDGE_TEMPLATE",
    "TIE",
    "GoldJudge",
    "HTTPJudge",
    "Judge",
    "LMJudge",
    "PythonJudge",
    "RewardModelJudge",
    "WeightedJudge",
    "agreement",
    "as_messages",
    "can_score",
    "combine_orders",
    "judge_kinds",
    "judge_prompt",
    "make_judge",
    "parse_letter",
    "render_conversation",
    "split_spec",
    "split_specs",
    "tie_rate",
]

