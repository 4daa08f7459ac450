"""The reward-model judge: a trained scalar head's score, the proxy an RLHF policy is optimised against."""

from __future__ import annotations

from pathlib import Path

from prefopt.core.padding import pad_right
from prefopt.data.tokenize import encode_response, render_prompt
from prefopt.errors import PrefoptError
from prefopt.judges.base import Judge, as_messages, check_same_length, device_of, index_batches


class RewardModelJudge(Judge):
    """A trained reward model's scalar score: the proxy an RLHF policy is optimised against."""

    runs_model = True

    def __init__(self, run_dir: str | Path, batch_size: int = 16, device: str = "cpu", precision: str = "fp32"):
        import yaml
        from transformers import AutoTokenizer

        from prefopt.core.heads import load_reward_model

        run_dir = Path(run_dir)
        model = load_reward_model(run_dir, device=device)  # checks the folder holds a reward head
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        folder = run_dir / "model" if (run_dir / "model").is_dir() else run_dir / "adapter"
        tokenizer = AutoTokenizer.from_pretrained(folder)  # training saves its tokenizer beside the weights
        self._setup(model, tokenizer, batch_size, precision, config.get("max_length"), config.get("max_prompt_length"))
        self.run_dir = str(run_dir)

    @classmethod
    def from_spec(cls, arg: str, **options) -> Judge:
        if not arg:
            raise PrefoptError(
                "the reward judge needs a run folder: reward:RUN_DIR (trained with prefopt run --algo reward)"
            )
        return cls(arg, **options)

    @classmethod
    def from_model(cls, model, tokenizer, batch_size=16, precision="fp32", max_length=None, max_prompt_length=None):
        """A judge around an already-loaded ScalarHeadModel (tests, in-process pipelines)."""
        judge = cls.__new__(cls)
        judge._setup(model, tokenizer, batch_size, precision, max_length, max_prompt_length)
        judge.run_dir = None
        return judge

    def _setup(self, model, tokenizer, batch_size, precision, max_length, max_prompt_length) -> None:
        from prefopt.core.models import resolve_precision

        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.precision = resolve_precision(precision, device_of(model))
        self.max_length, self.max_prompt_length = max_length, max_prompt_length

    def _row(self, prompt, response) -> tuple[list[int], list[int]]:
        """Token ids exactly as training built them, truncated by the run's own lengths.

        Encoding is training's own (prefopt.data.tokenize); truncation is not
        tokenize_pairs' policy, on purpose: a judge must score whatever it is
        given, so a prompt longer than max_length is cut to its end, not an
        error; lengths the run did not record (None) mean no limit; and at
        least one response token is always kept. For a run whose
        max_prompt_length < max_length (the usual case) the ids equal training's.
        """
        prompt_ids = render_prompt(self.tokenizer, as_messages(prompt))
        response_ids = encode_response(self.tokenizer, response)
        if self.max_prompt_length and self.max_length and len(prompt_ids) > self.max_prompt_length:
            prompt_ids = prompt_ids[-self.max_prompt_length :]  # keep the question's end
        if self.max_length:
            response_ids = response_ids[: max(1, self.max_length - len(prompt_ids))]
        return prompt_ids, response_ids

    def score(self, prompts, responses) -> list[float]:
        import torch

        from prefopt.core.heads import forward_rewards
        from prefopt.core.models import autocast

        check_same_length(prompts, responses)
        rows = [self._row(p, r) for p, r in zip(prompts, responses)]
        device = device_of(self.model)
        scores: list[float] = []
        for idx in index_batches(len(rows), self.batch_size):
            # Right padding: the head reads each row's last real token.
            input_ids, attention_mask = pad_right([rows[i][0] + rows[i][1] for i in idx], self.tokenizer.pad_token_id)
            batch = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}  # (n, T) each
            with torch.no_grad(), autocast(self.precision, device):
                rewards = forward_rewards(self.model, batch)  # (n,)
            scores += rewards.float().cpu().tolist()
        return scores

    def __repr__(self) -> str:
        return f"RewardModelJudge(run_dir={self.run_dir!r})"
