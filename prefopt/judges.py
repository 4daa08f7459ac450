"""Judges: who decides which of two responses is better.

One small interface (:class:`Judge`) with four built-in kinds, found the same
way algorithms are (the entry-point group ``prefopt.judges``), so a package can
add its own judge without touching prefopt::

    make_judge("gold:qa")                     # a built-in task's gold rule (qa, constraints, tone)
    make_judge("reward:runs/reward-2026...")  # a reward model trained by `prefopt run --algo reward`
    make_judge("lm:smollm2-135m-instruct")    # a local causal LM asked "A or B?"
    make_judge("http:http://127.0.0.1:8000/v1", model="qwen")  # an OpenAI-compatible server

Decisions are floats: 1.0 = the first response (a) is better, 0.0 = the second
(b), 0.5 = a tie. The two pairwise judges (``lm``, ``http``) ask in both orders
(a shown as A, then as B) and call a pair a tie when the answers disagree: a
judge that always says "A" (position bias) then produces ties, not wins.
"""

from __future__ import annotations

import difflib
import http.client
import inspect
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefopt import registry
from prefopt.errors import PrefoptError
from prefopt.registry import Entry

Message = dict[str, str]
GROUP = "prefopt.judges"
log = logging.getLogger(__name__)

TIE = 0.5

# The question put to pairwise judges. The answer letter comes right after the
# assistant turn starts, so one next-token distribution decides it.
JUDGE_TEMPLATE = (
    "Which response answers the user better? Judge correctness first, then helpfulness; "
    "do not prefer a response for being longer.\n\n"
    "[Conversation]\n{conversation}\n\n"
    "[Response A]\n{a}\n\n"
    "[Response B]\n{b}\n\n"
    "Answer with a single letter: A or B."
)


# ---------------------------------------------------------------- the interface


class Judge:
    """Scores responses or picks the better of two. Subclasses implement score or compare (or both)."""

    def score(self, prompts: Sequence[Sequence[Message]], responses: Sequence[str]) -> list[float]:
        """One number per (prompt, response), higher is better."""
        raise NotImplementedError(f"{type(self).__name__} only compares two responses; it cannot score one alone")

    def compare(self, prompts: Sequence[Sequence[Message]], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        """Per pair: 1.0 if a is better, 0.0 if b is, 0.5 for a tie. Default: compare the two scores."""
        _check_same_length(prompts, responses_a, responses_b)
        a = self.score(prompts, responses_a)
        b = self.score(prompts, responses_b)
        return [1.0 if x > y else 0.0 if x < y else TIE for x, y in zip(a, b)]

    @classmethod
    def from_spec(cls, arg: str, **options) -> Judge:
        """Build from the part of a spec after ':' ("" when there is none)."""
        return cls(arg, **options) if arg else cls(**options)


def _check_same_length(*columns: Sequence) -> None:
    lengths = {len(c) for c in columns}
    if len(lengths) > 1:
        raise ValueError(f"judge inputs differ in length: {[len(c) for c in columns]}")


def as_messages(prompt: str | Sequence[Message]) -> list[Message]:
    """A conversation as messages; a bare string is one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, dict):  # a common slip: one conversation passed where a list of them belongs
        raise TypeError("a prompt is a list of messages or a string, got a single message dict; pass one prompt per response")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def last_user_message(prompt: str | Sequence[Message]) -> str:
    """The text the final user turn asks (what a gold rule grades against)."""
    users = [m["content"] for m in as_messages(prompt) if m["role"] == "user"]
    if not users:
        raise PrefoptError("the prompt has no user message to judge against")
    return users[-1]


# ---------------------------------------------------------------- decisions


def _decision(x: float) -> float:
    """Snap a (possibly soft) preference to 1.0 / 0.0 / 0.5 so agreement is well defined."""
    return 1.0 if x > TIE else 0.0 if x < TIE else TIE


def combine_orders(first: float, second: float) -> float:
    """Decision for a from two votes (each in a's terms): equal votes stand, anything else is a tie."""
    first, second = _decision(first), _decision(second)
    return first if first == second else TIE


def agreement(decisions_a: Sequence[float], decisions_b: Sequence[float]) -> float:
    """Fraction of pairs two judges decide the same way; a tie agrees only with a tie."""
    if len(decisions_a) != len(decisions_b):
        raise ValueError(f"agreement needs equally long lists, got {len(decisions_a)} and {len(decisions_b)}")
    if not decisions_a:
        raise ValueError("agreement of empty lists is undefined")
    same = sum(_decision(x) == _decision(y) for x, y in zip(decisions_a, decisions_b))
    return same / len(decisions_a)


def tie_rate(decisions: Sequence[float]) -> float:
    """Fraction of pairs decided as ties: a high rate flags a position-biased or indifferent judge."""
    if not decisions:
        raise ValueError("tie rate of an empty list is undefined")
    return sum(_decision(x) == TIE for x in decisions) / len(decisions)


def render_conversation(prompt: str | Sequence[Message]) -> str:
    """The conversation as the judge reads it: a lone user turn verbatim, else 'Role: text' lines."""
    messages = as_messages(prompt)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def judge_prompt(prompt: str | Sequence[Message], a: str, b: str, template: str = JUDGE_TEMPLATE) -> str:
    """The pairwise question with `a` labelled A and `b` labelled B."""
    return template.format(conversation=render_conversation(prompt), a=a, b=b)


def _both_orders(prompts, responses_a, responses_b, template: str) -> list[str]:
    """2N judge prompts: rows 0..N-1 show a as A, rows N..2N-1 show a as B."""
    first = [judge_prompt(p, a, b, template) for p, a, b in zip(prompts, responses_a, responses_b)]
    second = [judge_prompt(p, b, a, template) for p, a, b in zip(prompts, responses_a, responses_b)]
    return first + second


# ---------------------------------------------------------------- gold


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
        _check_same_length(prompts, responses)
        scores = []
        for i, (prompt, response) in enumerate(zip(prompts, responses), start=1):
            try:
                scores.append(self._rule(last_user_message(prompt), response))
            except PrefoptError as e:
                raise PrefoptError(f"gold:{self.task} judge, prompt {i}: {e}") from None
        return scores

    def __repr__(self) -> str:
        return f"GoldJudge(task={self.task!r})"


# ---------------------------------------------------------------- shared torch helpers


def _device_of(model):
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):  # a parameter-less (scripted) model
        return torch.device("cpu")


def _batches(n: int, size: int):
    if size < 1:
        raise PrefoptError(f"judge batch_size must be at least 1, got {size}")
    return (range(start, min(n, start + size)) for start in range(0, n, size))


# ---------------------------------------------------------------- reward model


class RewardModelJudge(Judge):
    """A trained reward model's scalar score: the proxy an RLHF policy is optimised against."""

    def __init__(self, run_dir: str | Path, batch_size: int = 16, device: str = "cpu", precision: str = "fp32"):
        import yaml
        from transformers import AutoTokenizer

        from prefopt.heads import load_reward_model

        run_dir = Path(run_dir)
        model = load_reward_model(run_dir, device=device)  # checks the folder and the algorithm
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        folder = run_dir / "model" if (run_dir / "model").is_dir() else run_dir / "adapter"
        tokenizer = AutoTokenizer.from_pretrained(folder)  # training saves its tokenizer beside the weights
        self._setup(model, tokenizer, batch_size, precision, config.get("max_length"), config.get("max_prompt_length"))
        self.run_dir = str(run_dir)

    @classmethod
    def from_spec(cls, arg: str, **options) -> Judge:
        if not arg:
            raise PrefoptError("the reward judge needs a run folder: reward:RUN_DIR (trained with prefopt run --algo reward)")
        return cls(arg, **options)

    @classmethod
    def from_model(cls, model, tokenizer, batch_size=16, precision="fp32", max_length=None, max_prompt_length=None):
        """A judge around an already-loaded ScalarHeadModel (tests, in-process pipelines)."""
        judge = cls.__new__(cls)
        judge._setup(model, tokenizer, batch_size, precision, max_length, max_prompt_length)
        judge.run_dir = None
        return judge

    def _setup(self, model, tokenizer, batch_size, precision, max_length, max_prompt_length) -> None:
        from prefopt.models import resolve_precision

        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.precision = resolve_precision(precision, _device_of(model))
        self.max_length, self.max_prompt_length = max_length, max_prompt_length

    def _row(self, prompt, response) -> tuple[list[int], list[int]]:
        """Token ids exactly as training built them, truncated by the run's own policy."""
        from prefopt.data import encode_response, render_prompt

        prompt_ids = render_prompt(self.tokenizer, as_messages(prompt))
        response_ids = encode_response(self.tokenizer, response)
        if self.max_prompt_length and self.max_length and len(prompt_ids) > self.max_prompt_length:
            prompt_ids = prompt_ids[-self.max_prompt_length :]  # keep the question's end
        if self.max_length:
            response_ids = response_ids[: max(1, self.max_length - len(prompt_ids))]
        return prompt_ids, response_ids

    def score(self, prompts, responses) -> list[float]:
        import torch

        from prefopt.heads import forward_rewards
        from prefopt.models import autocast

        _check_same_length(prompts, responses)
        rows = [self._row(p, r) for p, r in zip(prompts, responses)]
        device = _device_of(self.model)
        scores: list[float] = []
        for idx in _batches(len(rows), self.batch_size):
            batch = _right_pad([rows[i][0] + rows[i][1] for i in idx], self.tokenizer.pad_token_id)
            with torch.no_grad(), autocast(self.precision, device):
                rewards = forward_rewards(self.model, {k: v.to(device) for k, v in batch.items()})  # (n,)
            scores += rewards.float().cpu().tolist()
        return scores

    def __repr__(self) -> str:
        return f"RewardModelJudge(run_dir={self.run_dir!r})"


def _right_pad(rows: list[list[int]], pad_id: int) -> dict:
    """(N, T) input_ids and attention_mask, real tokens first (the head reads the last real one)."""
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, T)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _left_pad(rows: list[list[int]], pad_id: int) -> dict:
    """(N, T) rows ending together, so the next-token logits of every row sit at position -1.

    position_ids count real tokens only, so a padded row computes what it would alone.
    """
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, T)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, width - len(r) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


# ---------------------------------------------------------------- local LM judge


class LMJudge(Judge):
    """A causal LM asked "A or B?", decided from the next-token log-probs of the two letters.

    Reading log-probs instead of sampling costs one forward per order and has
    no parsing failures; asking in both orders cancels the model's position bias.
    """

    def __init__(self, model: str = "smollm2-135m-instruct", batch_size: int = 8, device: str = "cpu",
                 precision: str = "fp32", template: str = JUDGE_TEMPLATE):  # fmt: skip
        from prefopt.models import load_model, load_tokenizer

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
        from prefopt.models import resolve_precision

        self.model, self.tokenizer, self.batch_size, self.template = model, tokenizer, batch_size, template
        self.precision = resolve_precision(precision, _device_of(model))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.letter_ids = (self._answer_token("A"), self._answer_token("B"))
        if self.letter_ids[0] == self.letter_ids[1]:
            raise PrefoptError("the judge tokenizer maps the answers 'A' and 'B' to the same first token")

    def _answer_token(self, letter: str) -> int:
        """First token of `letter` as the model would write it right after the generation prompt."""
        from prefopt.data import prompt_text

        prefix = prompt_text(self.tokenizer, [{"role": "user", "content": "?"}])
        head = self.tokenizer(prefix, add_special_tokens=False).input_ids
        full = self.tokenizer(prefix + letter, add_special_tokens=False).input_ids
        if full[: len(head)] == head and len(full) > len(head):
            return full[len(head)]
        return self.tokenizer(letter, add_special_tokens=False).input_ids[0]  # the letter merged into the prefix

    def preferences(self, prompts, responses_a, responses_b) -> list[tuple[float, float]]:
        """Per pair, P("A") in each order: (a shown as A, a shown as B). Unbiased and sure of a: (1, 0)."""
        _check_same_length(prompts, responses_a, responses_b)
        p_a = self._p_first_letter(_both_orders(prompts, responses_a, responses_b, self.template))
        n = len(prompts)
        return list(zip(p_a[:n], p_a[n:]))

    def compare(self, prompts, responses_a, responses_b) -> list[float]:
        return [combine_orders(first, 1.0 - second) for first, second in self.preferences(prompts, responses_a, responses_b)]

    def _p_first_letter(self, texts: list[str]) -> list[float]:
        """P("A") renormalised over {"A", "B"} at the first answer position, per judge prompt."""
        import torch

        from prefopt.data import render_prompt
        from prefopt.models import autocast

        rows = [render_prompt(self.tokenizer, [{"role": "user", "content": t}]) for t in texts]
        device = _device_of(self.model)
        out: list[float] = []
        for idx in _batches(len(rows), self.batch_size):
            batch = {k: v.to(device) for k, v in _left_pad([rows[i] for i in idx], self.pad_id).items()}
            with torch.no_grad(), autocast(self.precision, device):
                logits = self.model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1]  # (n, V)
            logps = torch.log_softmax(logits.float(), dim=-1)[:, list(self.letter_ids)]  # (n, 2): log P(A), log P(B)
            out += torch.sigmoid(logps[:, 0] - logps[:, 1]).cpu().tolist()  # (n,) P(A) / (P(A) + P(B))
        return out

    def __repr__(self) -> str:
        return f"LMJudge(model={self.model_name!r})"


# ---------------------------------------------------------------- HTTP judge


class _Secret(str):
    """A string that prints as *** (repr, str, f-strings, logging); .reveal() gives the value."""

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec) -> str:
        return "***"

    def reveal(self) -> str:
        return str.__str__(self)


class _Retryable(Exception):
    """A failure worth another attempt: connection trouble, a timeout, HTTP 429 or 5xx."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.wait = wait  # the server's Retry-After, when it gave one


_LETTER = re.compile(r"\b([AB])\b")


def parse_letter(reply: str) -> str | None:
    """The first standalone A or B of a reply ("B", "**A**", "Response B."), else a bare lowercase a/b, else None."""
    match = _LETTER.search(reply)
    if match:
        return match.group(1)
    bare = reply.strip().strip("*.:()[]\"' ").upper()
    return bare if bare in ("A", "B") else None


class HTTPJudge(Judge):
    """An OpenAI-compatible chat-completions server (vLLM, llama.cpp, ollama, hosted APIs) asked "A or B?".

    Standard library only. Each pair costs two requests (both orders) at
    temperature 0; an unparseable reply counts as a tie and is counted in
    ``unparseable``. Connection errors, timeouts, HTTP 429 and 5xx are retried
    with exponential back-off and jitter; other 4xx fail at once.
    ``retries`` is the number of attempts in all (1 = no retry).
    """

    def __init__(self, url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 30.0, retries: int = 3, max_tokens: int = 1, concurrency: int = 1,
                 template: str = JUDGE_TEMPLATE, backoff: float = 0.5, max_backoff: float = 8.0,
                 sleep: Callable[[float], None] = time.sleep, seed: int | None = None):  # fmt: skip
        self.url = _normalise_url(url or os.environ.get("PREFOPT_JUDGE_URL", ""))
        self.model = model or os.environ.get("PREFOPT_JUDGE_MODEL") or None  # None: ask the server's /models
        key = api_key or os.environ.get("PREFOPT_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self._api_key = _Secret(key) if key else None
        if retries < 1 or timeout <= 0 or concurrency < 1:
            raise PrefoptError(f"http judge: retries and concurrency must be >= 1 and timeout > 0 (got {retries}, {concurrency}, {timeout})")
        self.timeout, self.retries, self.max_tokens, self.concurrency = timeout, retries, max_tokens, concurrency
        self.template, self.backoff, self.max_backoff, self._sleep = template, backoff, max_backoff, sleep
        self._rng = random.Random(seed)
        self.unparseable = 0  # replies with no A/B letter, all calls together
        self.requests = 0  # HTTP requests sent, retries included
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        key = ", api_key=***" if self._api_key else ""
        return f"HTTPJudge(url={self.url!r}, model={self.model!r}{key})"

    # -- decisions

    def letters(self, prompts, responses_a, responses_b) -> list[tuple[str | None, str | None]]:
        """Per pair, the letter answered in each order (a shown as A, a shown as B); None if unparseable."""
        _check_same_length(prompts, responses_a, responses_b)
        texts = _both_orders(prompts, responses_a, responses_b, self.template)
        self._model_name()  # resolved once, before any worker thread asks
        replies = self._ask_all(texts)
        parsed = [parse_letter(r) for r in replies]
        self.unparseable += sum(p is None for p in parsed)
        n = len(prompts)
        return list(zip(parsed[:n], parsed[n:]))

    def _ask_all(self, texts: list[str]) -> list[str]:
        """Replies in order; after the first failure no further request starts."""
        if self.concurrency == 1:
            return [self._ask(t) for t in texts]
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            return list(pool.map(self._ask, texts))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def compare(self, prompts, responses_a, responses_b) -> list[float]:
        votes_first = {"A": 1.0, "B": 0.0, None: TIE}  # a shown as A
        votes_second = {"A": 0.0, "B": 1.0, None: TIE}  # a shown as B
        return [combine_orders(votes_first[x], votes_second[y]) for x, y in self.letters(prompts, responses_a, responses_b)]

    # -- protocol

    def _ask(self, text: str) -> str:
        """The assistant's reply to one judge prompt."""
        body = {
            "model": self._model_name(),
            "messages": [{"role": "user", "content": text}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        reply = self._request("/chat/completions", body)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise PrefoptError(f"judge server {self.url}: unexpected reply (no choices[0].message.content): {self._redact(json.dumps(reply)[:200])}") from None

    def _model_name(self) -> str:
        """The configured model, else the first one the server lists (llama.cpp and vLLM serve one)."""
        if self.model is None:
            listed = self._request("/models", None).get("data") or []
            if not listed or "id" not in listed[0]:
                raise PrefoptError(f"judge server {self.url} lists no models; give one with model=... or PREFOPT_JUDGE_MODEL")
            self.model = listed[0]["id"]
        return self.model

    def _request(self, path: str, body: dict | None) -> dict:
        """One JSON request with retries; every failure ends as one PrefoptError line."""
        last = ""
        for attempt in range(1, self.retries + 1):
            try:
                return self._send(path, body)
            except _Retryable as e:
                last = str(e)
                if attempt == self.retries:
                    break
                delay = self._delay(attempt, e.wait)
                log.warning("judge server %s: %s; retry %d/%d in %.2f s", self.url, last, attempt, self.retries - 1, delay)
                self._sleep(delay)
        what = "unreachable" if not last.startswith("HTTP ") else "failing"
        raise PrefoptError(f"judge server {self.url} {what} after {self.retries} attempts: {self._redact(last)}")

    def _delay(self, attempt: int, server_wait: float | None) -> float:
        """Exponential back-off with jitter (half fixed, half random), capped; Retry-After wins when larger."""
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        delay = base / 2 + self._rng.uniform(0, base / 2)
        return max(delay, min(server_wait, self.max_backoff)) if server_wait else delay

    def _send(self, path: str, body: dict | None) -> dict:
        """One attempt. Raises _Retryable for transient failures, PrefoptError for final ones."""
        request = urllib.request.Request(self.url + path, data=None if body is None else json.dumps(body).encode(), method="GET" if body is None else "POST")
        request.add_header("Content-Type", "application/json")
        if self._api_key:
            request.add_header("Authorization", f"Bearer {self._api_key.reveal()}")
        with self._count_lock:
            self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except urllib.error.URLError as e:
            raise _Retryable(self._reason(e.reason)) from None
        except TimeoutError:
            raise _Retryable(f"timed out after {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as e:  # reset or cut short while reading
            raise _Retryable(self._reason(e)) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise PrefoptError(f"judge server {self.url}: reply is not JSON: {self._redact(raw[:200].decode(errors='replace'))}") from None

    def _http_error(self, e: urllib.error.HTTPError) -> Exception:
        """429 and 5xx are transient; any other status is the caller's mistake and final."""
        try:
            detail = e.read()[:300].decode(errors="replace")
        except (OSError, http.client.HTTPException):  # the body is a courtesy; the status decides
            detail = ""
        reason = self._redact(f"HTTP {e.code} {e.reason}" + (f": {' '.join(detail.split())}" if detail else ""))
        if e.code == 429 or e.code >= 500:
            return _Retryable(reason, _retry_after(e.headers))
        return PrefoptError(f"judge server {self.url} answered {reason}")

    def _reason(self, reason) -> str:
        if isinstance(reason, TimeoutError):
            return f"timed out after {self.timeout:g} s"
        return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__

    def _redact(self, text: str) -> str:
        """Never let the key out, even if a server echoes it back."""
        return text.replace(self._api_key.reveal(), "***") if self._api_key else text


def _retry_after(headers) -> float | None:
    try:
        return float(headers.get("Retry-After")) if headers is not None and headers.get("Retry-After") else None
    except ValueError:  # an HTTP date: fall back to our own back-off
        return None


def _normalise_url(url: str) -> str:
    """Base URL without a trailing slash or a pasted '/chat/completions'."""
    url = url.strip().rstrip("/")
    if not url:
        raise PrefoptError("http judge needs a server URL: use http:URL (e.g. http:http://127.0.0.1:8000/v1) or set PREFOPT_JUDGE_URL")
    if not url.startswith(("http://", "https://")):
        raise PrefoptError(f"http judge URL must start with http:// or https://, got '{url}'")
    return url.removesuffix("/chat/completions")


# ---------------------------------------------------------------- discovery


BUILTIN_JUDGES: dict[str, type[Judge]] = {"gold": GoldJudge, "reward": RewardModelJudge, "lm": LMJudge, "http": HTTPJudge}


def _target(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def judge_kinds() -> dict[str, list[Entry]]:
    """Every judge kind: the entry points of group prefopt.judges (prefopt registers
    its built-ins there too) plus the built-ins themselves, so a source tree that
    was never pip-installed still has them. An entry point naming a built-in's own
    class is that built-in; any other provider of a built-in's name is a clash.
    """
    found = registry.discover(GROUP, Judge)
    for name, cls in BUILTIN_JUDGES.items():
        own = [e for e in found.get(name, []) if e.target == _target(cls)]
        others = [e for e in found.get(name, []) if e.target != _target(cls)]
        found[name] = (own or [Entry(name, "prefopt", _target(cls), cls)]) + others
    return found


def _split_spec(spec: str) -> tuple[str, str]:
    """'kind:arg' -> (kind, arg); a bare http(s) URL is the http judge."""
    spec = spec.strip()
    if spec.startswith(("http://", "https://")):
        return "http", spec
    kind, _, arg = spec.partition(":")
    return kind.strip(), arg.strip()


def _check_options(kind: str, cls: type[Judge], options: dict) -> None:
    """Unknown option names are a one-line error with a suggestion, not a TypeError deep inside."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n in params if n != "self"]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f" (options: {', '.join(known)})"
            raise PrefoptError(f"judge '{kind}' has no option '{name}'{hint}")


def make_judge(spec: str, **options) -> Judge:
    """A judge from 'kind:arg' ('gold:qa', 'reward:RUN_DIR', 'lm:MODEL', 'http:URL'); options go to its constructor."""
    kind, arg = _split_spec(spec)
    kinds = judge_kinds()
    cls = registry.resolve(kinds, kind, "judge kind", f" (available: {', '.join(sorted(kinds))})")
    _check_options(kind, cls, options)
    return cls.from_spec(arg, **options)
