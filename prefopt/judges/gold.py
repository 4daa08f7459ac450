"""The gold judge: a built-in task's own rule, which knows the right answer.

A policy optimised against a proxy (a reward model, an AI judge) is measured
against this, so reward hacking shows as a gap between the two.
"""

from __future__ import annotations

from collections.abc import Callable

from prefopt.data.records import last_user_message
from prefopt.errors import PrefoptError
from prefopt.judges.base import Judge, check_same_length


def _gold_rules() -> dict[str, Callable[[str, str], float]]:
    from prefopt.tasks import get_task, task_names

    return {name: get_task(name).gold for name in task_names()}  # qa, constraints, tone


class GoldJudge(Judge):
    """The built-in task's gold rule: knows the right answer, so it measures what proxies only estimate."""

    def __init__(self, task: str = "qa"):
        rules = _gold_rules()
        if task not in rules:
            raise PrefoptError(f"unknown gold task '{task}' (available: {', '.join(sorted(rules))})")
        self.task = task
        self._rule = rules[task]

    def score(self, prompts, responses) -> list[float]:
        check_same_length(prompts, responses)
        scores = []
        for i, (prompt, response) in enumerate(zip(prompts, responses), start=1):
            try:
                scores.append(self._rule(last_user_message(prompt), response))
            except PrefoptError as e:
                raise PrefoptError(f"gold:{self.task} judge, prompt {i}: {e}") from None
        return scores

    def __repr__(self) -> str:
        return f"GoldJudge(task={self.task!r})"
