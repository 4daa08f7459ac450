"""The HTTP judge: an OpenAI-compatible chat-completions server asked "A or B?" (standard library only)."""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prefopt.errors import PrefoptError
from prefopt.judges.base import JUDGE_TEMPLATE, TIE, Judge, both_orders, check_same_length, combine_orders

log = logging.getLogger(__name__)


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
            raise PrefoptError(
                "http judge: retries and concurrency must be >= 1 and timeout > 0 "
                f"(got {retries}, {concurrency}, {timeout})"
            )
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
        check_same_length(prompts, responses_a, responses_b)
        texts = both_orders(prompts, responses_a, responses_b, self.template)
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
        return [
            combine_orders(votes_first[x], votes_second[y]) for x, y in self.letters(prompts, responses_a, responses_b)
        ]

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
            raise PrefoptError(
                f"judge server {self.url}: unexpected reply (no choices[0].message.content): "
                f"{self._redact(json.dumps(reply)[:200])}"
            ) from None

    def _model_name(self) -> str:
        """The configured model, else the first one the server lists (llama.cpp and vLLM serve one)."""
        if self.model is None:
            listed = self._request("/models", None).get("data") or []
            if not listed or "id" not in listed[0]:
                raise PrefoptError(
                    f"judge server {self.url} lists no models; give one with model=... or PREFOPT_JUDGE_MODEL"
                )
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
                log.warning(
                    "judge server %s: %s; retry %d/%d in %.2f s", self.url, last, attempt, self.retries - 1, delay
                )
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
        request = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "POST",
        )
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
            raise PrefoptError(
                f"judge server {self.url}: reply is not JSON: {self._redact(raw[:200].decode(errors='replace'))}"
            ) from None

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
        raise PrefoptError(
            "http judge needs a server URL: use http:URL (e.g. http:http://127.0.0.1:8000/v1) or set PREFOPT_JUDGE_URL"
        )
    if not url.startswith(("http://", "https://")):
        raise PrefoptError(f"http judge URL must start with http:// or https://, got '{url}'")
    return url.removesuffix("/chat/completions")
