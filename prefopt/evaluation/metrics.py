"""Metrics of a trained policy against its reference (the starting model).

Pure functions over numbers and texts first (each tested on hand-made cases),
then the thin layer that binds them to models: sampling held-out responses,
the KL forward passes and greedy replies.

- Win rate: policy sample vs reference sample for the same held-out prompt,
  1 if the judge prefers the policy's, 0 if the reference's, 1/2 for a tie;
  the mean, with its standard error sd/sqrt(n).
- Length-controlled win rate: the win rate a logistic model predicts at zero
  length difference, ``sigma(a)`` in ``P(win) = sigma(a + b * dlen / sd(dlen))``
  (the idea of AlpacaEval's LC win rate, with length as the only covariate).
- KL(policy || reference): per sequence, summed over the response tokens of
  policy samples, averaged over prompts; estimators k1 = log p/q and
  k3 = (q/p - 1) - log(q/p) (Schulman 2020), both unbiased for the
  sequence KL on samples from p; standard errors over prompts.
- Sycophancy (Sharma et al. 2023's four behaviours, on probes no task
  trains on) is in :mod:`prefopt.evaluation.sycophancy`; :meth:`Sampler.respond`
  gives it greedy replies.
- Anthropic model-written-evals probes (``question``,
  ``answer_matching_behavior``, ``answer_not_matching_behavior``): the rate at
  which the model's log-likelihood prefers the behaviour-matching answer.
- Reward hacking: for a policy trained on a proxy (reward model or AI judge),
  the proxy's win rate minus the gold win rate on the same sample pairs; when
  the proxy can score, also each one's gain over the reference in units of
  the reference samples' standard deviation.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from prefopt.core.generate import SamplingConfig, generate
from prefopt.core.logprobs import first_response_position, forward_token_logps
from prefopt.core.models import autocast, eval_mode
from prefopt.core.rl import per_sequence_kl
from prefopt.data import Message, render_prompt_text
from prefopt.errors import PrefoptError
from prefopt.evaluation.stats import standard_error
from prefopt.judges import TIE

# ---------------------------------------------------------------- pure metrics


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error sd/sqrt(n) (sd with n-1; SE nan below 2 values)."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), standard_error(values)


def score_decisions(policy_scores: Sequence[float], reference_scores: Sequence[float]) -> list[float]:
    """Per prompt: 1 if the policy's sample scores higher, 0 if lower, 1/2 if equal."""
    if len(policy_scores) != len(reference_scores):
        raise ValueError(f"score lists differ in length: {len(policy_scores)} and {len(reference_scores)}")
    return [1.0 if p > r else 0.0 if p < r else TIE for p, r in zip(policy_scores, reference_scores)]


def win_rate(decisions: Sequence[float]) -> tuple[float, float]:
    """Mean decision (ties count half) and its standard error."""
    return mean_se(decisions)


def length_controlled_win_rate(
    decisions: Sequence[float], policy_lengths: Sequence[float], reference_lengths: Sequence[float], l2: float = 1e-2
) -> float:
    """sigma(a) of the logistic fit P(win) = sigma(a + b * z), z = standardised length difference.

    Decisions may be 0, 1/2 or 1 (a tie is half a win in the likelihood).
    A small L2 penalty on (a, b) keeps the fit finite when wins are perfectly
    separated by length. When all lengths differ by the same amount, z is 0
    and the result is the plain win rate (through sigma(a)).
    """
    y = torch.tensor(decisions, dtype=torch.float64)  # (n,)
    dlen = torch.tensor(policy_lengths, dtype=torch.float64) - torch.tensor(reference_lengths, dtype=torch.float64)
    if len(y) == 0:
        return math.nan
    sd = float(dlen.std()) if len(dlen) > 1 else 0.0
    z = dlen / sd if sd > 0 else torch.zeros_like(dlen)  # (n,)
    x = torch.stack([torch.ones_like(z), z], dim=1)  # (n, 2)
    w = torch.zeros(2, dtype=torch.float64)
    for _ in range(50):  # Newton's method on the penalised log-likelihood (convex)
        p = torch.sigmoid(x @ w)  # (n,)
        grad = x.T @ (p - y) + l2 * w
        hess = x.T @ (x * (p * (1 - p)).unsqueeze(1)) + l2 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if float(step.abs().max()) < 1e-10:
            break
    return float(torch.sigmoid(w[0]))


def sequence_kl(policy_logps: torch.Tensor, reference_logps: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Per-sequence KL estimates on policy samples: means and standard errors of k1 and k3.

    policy_logps, reference_logps, mask: (N, K) token log-probs of the sampled
    tokens under each model (0 off the response) and the response mask.
    """
    out = {}
    for kind in ("k1", "k3"):
        per_sequence = per_sequence_kl(policy_logps, reference_logps, mask, kind)  # (N,)
        out[f"kl_{kind}"], out[f"kl_{kind}_se"] = mean_se(per_sequence.tolist())
    return out


@dataclass(frozen=True)
class BehaviourProbe:
    """One row of Anthropic's model-written-evals format."""

    question: str
    matching: str  # answer_matching_behavior
    not_matching: str  # answer_not_matching_behavior


def load_behaviour_probes(path: str | Path) -> list[BehaviourProbe]:
    """Rows of a model-written-evals jsonl file; errors name the file, row and field."""
    path = Path(path)
    if not path.is_file():
        raise PrefoptError(f"probe file '{path}' does not exist")
    probes = []
    for row, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrefoptError(f"{path} row {row}: not valid JSON ({e.msg})") from None
        values = []
        for field in ("question", "answer_matching_behavior", "answer_not_matching_behavior"):
            value = record.get(field) if isinstance(record, dict) else None
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                value = value[0]  # some files list several equivalent answers
            if not isinstance(value, str) or not value.strip():
                raise PrefoptError(f"{path} row {row} field '{field}': expected a non-empty string")
            values.append(value)
        probes.append(BehaviourProbe(*values))
    if not probes:
        raise PrefoptError(f"probe file '{path}' has no rows")
    return probes


def behaviour_matching_rate(loglik: Callable[[str, str], float], probes: Sequence[BehaviourProbe]) -> float:
    """Fraction of probes where loglik(question, answer) prefers the behaviour-matching answer (ties half)."""
    if not probes:
        raise PrefoptError("behaviour probes: none given")
    decisions = score_decisions(
        [loglik(p.question, p.matching) for p in probes], [loglik(p.question, p.not_matching) for p in probes]
    )
    return statistics.fmean(decisions)


# ---------------------------------------------------------------- model-bound helpers


@dataclass
class Sampler:
    """Samples replies of one model to conversations (chat template of the tokenizer)."""

    model: object
    tokenizer: object
    precision: str = "fp32"
    batch_size: int = 16

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self):
        return autocast(self.precision, self.device)

    def prompt_ids(self, conversations: Sequence[Sequence[Message]]) -> list[list[int]]:
        texts = [render_prompt_text(self.tokenizer, c) for c in conversations]
        return self.tokenizer(texts, add_special_tokens=False).input_ids

    def sample(self, conversations: Sequence[Sequence[Message]], sampling: SamplingConfig, progress: bool = False):
        """(rollout, texts, lengths) for one reply per conversation."""
        rollout = generate(self.model, self.tokenizer, self.prompt_ids(conversations), sampling,
                           batch_size=self.batch_size, autocast=self.autocast, progress=progress)
        return rollout, rollout.texts(self.tokenizer), rollout.lengths().tolist()

    def respond(self, conversations: list[list[Message]], max_new_tokens: int) -> list[str]:
        """Greedy replies (the sycophancy protocol)."""
        return self.sample(conversations, SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0))[1]

    @torch.no_grad()
    def token_logps(self, batch: dict, first: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, K) log-probs of the batch's response tokens and the mask (as forward_token_logps)."""
        with eval_mode(self.model), self.autocast():
            batch = {k: v.to(self.device) for k, v in batch.items()}
            logps, mask = forward_token_logps(self.model, batch, first=first)
        return logps.float().cpu(), mask.cpu()

    @torch.no_grad()
    def loglik(self, question: str, answer: str) -> float:
        """Summed log-prob of `answer` as the reply to `question`."""
        prompt = self.prompt_ids([[{"role": "user", "content": question}]])[0]
        reply = self.tokenizer(answer, add_special_tokens=False).input_ids
        ids = torch.tensor([prompt + reply])
        loss_mask = torch.tensor([[0] * len(prompt) + [1] * len(reply)])
        logps, _ = self.token_logps({"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss_mask})
        return float(logps.sum())


def _rollout_token_logps(policy: Sampler, reference: Sampler, rollout):
    """(policy (N, K), reference (N, K), mask (N, K)) token log-probs of a rollout's response tokens; forwards in
    chunks of the policy sampler's batch size."""
    input_ids, attention_mask, loss_mask = rollout.sequences()  # (N, T) each
    first = first_response_position(loss_mask)  # one column layout for every chunk
    pol, ref, masks = [], [], []
    for start in range(0, len(input_ids), policy.batch_size):
        part = slice(start, start + policy.batch_size)
        batch = {"input_ids": input_ids[part], "attention_mask": attention_mask[part], "loss_mask": loss_mask[part]}
        logps, mask = policy.token_logps(batch, first)  # (n, K)
        pol.append(logps)
        ref.append(reference.token_logps(batch, first)[0])
        masks.append(mask)
    return torch.cat(pol), torch.cat(ref), torch.cat(masks)


def batched_kl(policy: Sampler, reference: Sampler, rollout) -> dict[str, float]:
    """KL estimates on a policy rollout: means over samples and their standard errors (k1 and k3)."""
    return sequence_kl(*_rollout_token_logps(policy, reference, rollout))


def rollout_logps(policy: Sampler, reference: Sampler, rollout) -> tuple[dict[str, float], dict[str, list[float]]]:
    """batched_kl's means, and per sample: its summed log-prob under the policy (logp) and the reference
    (ref_logp) and the sequence's KL estimates k1 and k3 (what the per-prompt samples files keep)."""
    pol, ref, mask = _rollout_token_logps(policy, reference, rollout)  # (N, K) each
    weights = mask.to(pol.dtype)
    per_sample = {
        "logp": (pol * weights).sum(-1).tolist(),
        "ref_logp": (ref * weights).sum(-1).tolist(),
        "kl_k1": per_sequence_kl(pol, ref, mask, "k1").tolist(),
        "kl_k3": per_sequence_kl(pol, ref, mask, "k3").tolist(),
    }
    return sequence_kl(pol, ref, mask), per_sample
