"""The built-in tasks' gold rules as Python reward functions, with trl's ``reward_funcs`` signature.

    prefopt run --algo grpo judge=python:prefopt.tasks.rewards:qa

scores each completion as ``judge=gold:qa`` does, through the same path as any user's reward function
(a verifiable reward: the rule knows the right answer). The same functions can be handed to trl's
GRPOTrainer(reward_funcs=[qa]) with conversational or plain-text prompts.
"""

from __future__ import annotations

from prefopt.tasks.base import get_task


def _texts(items) -> list:
    """trl passes completions as strings (standard format) or as [{"role": "assistant", "content": ...}]."""
    return [c[-1]["content"] if isinstance(c, list) else c for c in items]


def qa(prompts, completions, **kwargs) -> list[float]:
    """builtin:qa's gold rule: the right answer naming the question's subject 1, a near miss 0, each minus a
    capped length penalty; anything else -0.5."""
    return get_task("qa").gold_scores(prompts, _texts(completions))


def constraints(prompts, completions, **kwargs) -> list[float]:
    """builtin:constraints' gold rule: the share of the prompt's checks an on-task reply passes (0 to 1)."""
    return get_task("constraints").gold_scores(prompts, _texts(completions))


def tone(prompts, completions, **kwargs) -> list[float]:
    """builtin:tone's gold rule: polite minus rude words (-1 off topic), minus a rambling penalty (-1.5 to 1)."""
    return get_task("tone").gold_scores(prompts, _texts(completions))
