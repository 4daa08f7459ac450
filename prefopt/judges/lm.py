"""The local LM judge: a causal LM asked "A or B?", read from its next-token log-probs."""

from __future__ import annotations

from prefopt.core.padding import pad_left, position_ids
from prefopt.data.tokenize import render_prompt, render_prompt_text
from prefopt.errors import PrefoptError
from prefopt.judges.base import (
    JUDGE_TEMPLATE,
    Judge,
    average_orders,
    both_orders,
    check_same_length,
    combine_orders,
    device_of,
    index_batches,
)


class LMJudge(Judge):
    """A causal LM asked "A or B?", decided from the next-token log-probs of the two letters.

    Reading log-probs instead of sampling costs one forward per order and has
    no parsing failures; asking in both orders cancels the model's position bias.
    """

    runs_model = True

    def __init__(self, model: str = "smollm2-135m-instruct", batch_size: int = 8, device: str = "cpu",
                 precision: str = "fp32", template: str = JUDGE_TEMPLATE):  # fmt: skip
        from prefopt.core.models import load_model, load_tokenizer

        tokenizer = load_tokenizer(model)
        lm = load_model(model, adapter="full", device=device).eval()
        for p in lm.parameters():
            p.requires_grad_(False)
        self._setup(lm, tokenizer, batch_size, precision, template)
        self.model_name = model

    @classmethod
    def from_model(cls, model, tokenizer, batch_size: int = 8, precision: str = "fp32", template: str = JUDGE_TEMPLATE):
        """A judge around an already-loaded (model, tokenizer): a policy in memory, or a scripted fake in tests."""
        judge = cls.__new__(cls)
        judge._setup(model, tokenizer, batch_size, precision, template)
        judge.model_name = type(model).__name__
        return judge

    def _setup(self, model, tokenizer, batch_size, precision, template) -> None:
        from prefopt.core.models import resolve_precision

        self.model, self.tokenizer, self.batch_size, self.template = model, tokenizer, batch_size, template
        self.precision = resolve_precision(precision, device_of(model))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.letter_ids = (self._answer_token("A"), self._answer_token("B"))
        if self.letter_ids[0] == self.letter_ids[1]:
            raise PrefoptError("the judge tokenizer maps the answers 'A' and 'B' to the same first token")

    def _answer_token(self, letter: str) -> int:
        """First token of `letter` as the model would write it right after the generation prompt."""
        prefix = render_prompt_text(self.tokenizer, [{"role": "user", "content": "?"}])
        head = self.tokenizer(prefix, add_special_tokens=False).input_ids
        full = self.tokenizer(prefix + letter, add_special_tokens=False).input_ids
        if full[: len(head)] == head and len(full) > len(head):
            return full[len(head)]
        return self.tokenizer(letter, add_special_tokens=False).input_ids[0]  # the letter merged into the prefix

    def preferences(self, prompts, responses_a, responses_b) -> list[tuple[float, float]]:
        """Per pair, P("A") in each order: (a shown as A, a shown as B). Unbiased and sure of a: (1, 0)."""
        check_same_length(prompts, responses_a, responses_b)
        p_a = self._p_first_letter(both_orders(prompts, responses_a, responses_b, self.template))
        n = len(prompts)
        return list(zip(p_a[:n], p_a[n:]))

    def compare(self, prompts, responses_a, responses_b) -> list[float]:
        return [
            combine_orders(first, 1.0 - second) for first, second in self.preferences(prompts, responses_a, responses_b)
        ]

    def compare_proba(self, prompts, responses_a, responses_b) -> list[float]:
        """Per pair, P(a better), the two orders averaged: (P("A" | a shown first) + P("B" | a shown second)) / 2.

        Unlike :meth:`compare`, which thresholds each order on its own and calls a disagreement a tie,
        this keeps the content preference of a judge whose position bias outweighs it in both orders
        (Lee et al. 2023). Decide with :func:`prefopt.judges.base.decide`.
        """
        return [average_orders(first, second) for first, second in self.preferences(prompts, responses_a, responses_b)]

    def _p_first_letter(self, texts: list[str]) -> list[float]:
        """P("A") renormalised over {"A", "B"} at the first answer position, per judge prompt."""
        import torch

        from prefopt.core.models import autocast

        rows = [render_prompt(self.tokenizer, [{"role": "user", "content": t}]) for t in texts]
        device = device_of(self.model)
        out: list[float] = []
        for idx in index_batches(len(rows), self.batch_size):
            # Left padding: every row's next-token logits sit at position -1; positions count real tokens only.
            input_ids, attention_mask = pad_left([rows[i] for i in idx], self.pad_id)  # (n, T) each
            batch = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "position_ids": position_ids(attention_mask),
            }
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad(), autocast(self.precision, device):
                logits = self.model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1]  # (n, V)
            logps = torch.log_softmax(logits.float(), dim=-1)[:, list(self.letter_ids)]  # (n, 2): log P(A), log P(B)
            out += torch.sigmoid(logps[:, 0] - logps[:, 1]).cpu().tolist()  # (n,) P(A) / (P(A) + P(B))
        return out

    def __repr__(self) -> str:
        return f"LMJudge(model={self.model_name!r})"
