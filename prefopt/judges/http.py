"""The HTTP judge: an OpenAI-compatible chat-completions server asked "A or B?" (standard library only)."""

from __future__ import annotations

import base64
import functools
import http.client
import io
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
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


# -- transport: one deadline for the whole request, no redirects, a bounded reply

_READ_CHUNK = 64 * 1024  # bytes asked of the socket at a time


def _time_left(deadline: float) -> float:
    """Seconds until the deadline; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


class _DeadlineReader(io.RawIOBase):
    """The socket's bytes, every read bounded by the request's deadline.

    Before each read the socket timeout is set to the time left, so a server
    that trickles a byte at a time cannot stretch a request past its deadline.
    """

    def __init__(self, sock, deadline: float):
        self._sock = sock
        self._file = sock.makefile("rb", buffering=0)  # keeps the socket open until closed, as http.client's own
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(_time_left(self._deadline))
        with memoryview(buffer) as view:
            return self._file.readinto(view[:_READ_CHUNK])

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTPResponse whose status line, headers and body are all read under the deadline."""

    def __init__(self, sock, *args, deadline: float, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # http.client's own file; ours checks the deadline before every read
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _DeadlineConnection(http.client.HTTPConnection):
    """Connect, send and read, all within one deadline (not a timeout per socket operation)."""

    def __init__(self, *args, deadline: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline)

    def connect(self):
        self.timeout = _time_left(self._deadline)  # connect (and a TLS handshake) gets what is left
        super().connect()

    def send(self, data):
        if self.sock is not None:
            self.sock.settimeout(_time_left(self._deadline))
        super().send(data)


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(_DeadlineConnection, req, deadline=self._deadline)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float):
        super().__init__()
        self._deadline = deadline

    def https_open(self, req):  # the default context: certificates and host names checked
        return self.do_open(_DeadlineHTTPSConnection, req, deadline=self._deadline)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: the request (and its Authorization header) is never re-sent, to any host."""

    def http_error_302(self, req, fp, code, msg, headers):
        raise urllib.error.HTTPError(req.full_url, code, msg, headers, fp)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(deadline: float) -> urllib.request.OpenerDirector:
    """http(s) only, proxies from the environment as urlopen has them, no redirects, every step under the deadline."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _HTTPHandler(deadline), _HTTPSHandler(deadline),
                    urllib.request.HTTPDefaultErrorHandler(), _NoRedirect(), urllib.request.HTTPErrorProcessor()):  # fmt: skip
        opener.add_handler(handler)
    return opener


# -- secrets in URLs

_SECRET_NAME = re.compile(r"key|token|secret|password|passwd|auth", re.IGNORECASE)


def mask_url(url: str) -> str:
    """The URL as it may be shown: a userinfo password (or a lone user name, often a token) and the values of
    query parameters named like key/token/secret/password/auth become ***. Never raises."""
    text = str.__str__(url) if isinstance(url, _Secret) else str(url)
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # e.g. a broken IPv6 literal: mask anything that looks like userinfo and secret values
        text = re.sub(r"//[^/?#]*@", "//***@", text)
        return re.sub(
            r"([?&][^=&#]*(?:key|token|secret|password|passwd|auth)[^=&#]*=)[^&#]*", r"\1***", text, flags=re.IGNORECASE
        )
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query = "&".join(_mask_param(p) for p in parts.query.split("&")) if parts.query else ""
    masked = parts._replace(netloc=netloc, query=query)
    return urllib.parse.urlunsplit(masked) if masked != parts else text


def _mask_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    return f"{name}=***" if eq and _SECRET_NAME.search(urllib.parse.unquote_plus(name)) else param


def _url_secrets(url: str) -> list[str]:
    """The secret parts of a URL, raw and decoded, longest first, for redacting a server's echo of them."""
    base, _, query = url.partition("#")[0].partition("?")
    authority = base.partition("://")[2].partition("/")[0]
    userinfo, at, _ = authority.rpartition("@")
    found = []
    if at:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    for param in query.split("&"):
        name, eq, value = param.partition("=")
        if eq and _SECRET_NAME.search(urllib.parse.unquote_plus(name)):
            found.append(value)
    decoded = [urllib.parse.unquote_plus(s) for s in found] + [urllib.parse.unquote(s) for s in found]
    return sorted({s for s in found + decoded if s}, key=len, reverse=True)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


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

    The server is untrusted input. ``timeout`` is the deadline of each whole
    request (connect, send and every read), however slowly the server
    trickles its bytes; a reply larger than ``max_response_bytes`` is an
    error, and the body is never read past that. Redirects are never
    followed: a 3xx answer is an error naming the (masked) Location, so the
    key is never re-sent elsewhere. A key in the URL (``https://user:KEY@host``,
    sent as HTTP Basic auth unless ``api_key`` is given, or ``?api_key=KEY``)
    is shown as ``***`` in ``url``, repr(), errors and logs.
    """

    def __init__(self, url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 30.0, retries: int = 3, max_tokens: int = 1, concurrency: int = 1,
                 template: str = JUDGE_TEMPLATE, backoff: float = 0.5, max_backoff: float = 8.0,
                 sleep: Callable[[float], None] = time.sleep, seed: int | None = None,
                 max_response_bytes: int = 1 << 20):  # fmt: skip
        full = _normalise_url(url or os.environ.get("PREFOPT_JUDGE_URL", ""))
        self._url = _Secret(full)  # as given; shown only through mask_url (the url property)
        self._base, self._query, self._basic_auth = _request_parts(full)
        secrets = _url_secrets(full) + ([self._basic_auth.reveal()] if self._basic_auth else [])
        self._secrets = [_Secret(s) for s in secrets]  # redacted from anything a server sends back
        self.model = model or os.environ.get("PREFOPT_JUDGE_MODEL") or None  # None: ask the server's /models
        key = api_key or os.environ.get("PREFOPT_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self._api_key = _Secret(key) if key else None
        if retries < 1 or timeout <= 0 or concurrency < 1:
            raise PrefoptError(
                "http judge: retries and concurrency must be >= 1 and timeout > 0 "
                f"(got {retries}, {concurrency}, {timeout})"
            )
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes < 1:
            raise PrefoptError(
                f"http judge: max_response_bytes must be a positive integer (got {max_response_bytes!r})"
            )
        self.max_response_bytes = max_response_bytes
        self.timeout, self.retries, self.max_tokens, self.concurrency = timeout, retries, max_tokens, concurrency
        self.template, self.backoff, self.max_backoff, self._sleep = template, backoff, max_backoff, sleep
        self._rng = random.Random(seed)
        self.unparseable = 0  # replies with no A/B letter, all calls together
        self.requests = 0  # HTTP requests sent, retries included
        self._count_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The server's base URL as it may be shown: secrets in it masked as ***."""
        return mask_url(self._url)

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
                    "judge server %s: %s; retry %d/%d in %.2f s",
                    self.url, self._redact(last), attempt, self.retries - 1, delay,
                )  # fmt: skip
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
            self._base.reveal() + path + (f"?{self._query.reveal()}" if self._query else ""),
            data=None if body is None else json.dumps(body).encode(),
            method="GET" if body is None else "POST",
        )
        request.add_header("Content-Type", "application/json")
        if self._api_key:
            request.add_header("Authorization", f"Bearer {self._api_key.reveal()}")
        elif self._basic_auth:
            request.add_header("Authorization", f"Basic {self._basic_auth.reveal()}")
        with self._count_lock:
            self.requests += 1
        deadline = time.monotonic() + self.timeout  # the whole attempt: connect, send, headers and body
        try:
            with _opener(deadline).open(request, timeout=self.timeout) as response:
                raw = self._read_capped(response)
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except urllib.error.URLError as e:
            raise _Retryable(self._reason(e.reason)) from None
        except TimeoutError:
            raise _Retryable(self._timed_out()) from None
        except (OSError, http.client.HTTPException) as e:  # reset or cut short while reading
            raise _Retryable(self._reason(e)) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise PrefoptError(
                f"judge server {self.url}: reply is not JSON: {self._redact(raw[:200].decode(errors='replace'))}"
            ) from None

    def _read_capped(self, response) -> bytes:
        """The body, read in chunks and never past max_response_bytes (+1 byte, to tell a larger reply)."""
        cap = self.max_response_bytes
        length = (response.headers.get("Content-Length") or "").strip()
        if length.isdigit() and int(length) > cap:
            raise self._too_large(f" (Content-Length {int(length)})")
        chunks, size = [], 0
        while chunk := response.read(min(_READ_CHUNK, cap + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise self._too_large("")
        return b"".join(chunks)

    def _too_large(self, length: str) -> PrefoptError:
        return PrefoptError(
            f"judge server {self.url}: reply larger than max_response_bytes={self.max_response_bytes}{length}; "
            "a chat completion is small (raise max_response_bytes if this server's replies really are that big)"
        )

    def _http_error(self, e: urllib.error.HTTPError) -> Exception:
        """3xx is refused (never followed); 429 and 5xx are transient; any other status is the caller's mistake."""
        with e:
            if 300 <= e.code < 400:
                location = _one_line(self._redact(mask_url(e.headers.get("Location") or "") if e.headers else ""))
                return PrefoptError(
                    f"judge server {self.url} answered HTTP {e.code} {_one_line(self._redact(str(e.reason)), 100)}, "
                    f"a redirect to {location or '(no Location)'}; redirects are not followed: give the final URL"
                )
            try:
                detail = e.read(300).decode(errors="replace")  # never more than 300 bytes of an error body
            except (OSError, http.client.HTTPException):  # the body is a courtesy; the status decides
                detail = ""
        reason = self._redact(f"HTTP {e.code} {e.reason}" + (f": {' '.join(detail.split())}" if detail else ""))
        if e.code == 429 or e.code >= 500:
            return _Retryable(reason, _retry_after(e.headers))
        return PrefoptError(f"judge server {self.url} answered {reason}")

    def _timed_out(self) -> str:
        return f"timed out after {self.timeout:g} s (the deadline for the whole request passed)"

    def _reason(self, reason) -> str:
        if isinstance(reason, TimeoutError):
            return self._timed_out()
        return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__

    def _redact(self, text: str) -> str:
        """Never let a key out (the api key, or one in the URL), even if a server echoes it back."""
        for secret in ([self._api_key] if self._api_key else []) + self._secrets:
            text = text.replace(secret.reveal(), "***")
        return text


def _retry_after(headers) -> float | None:
    try:
        return float(headers.get("Retry-After")) if headers is not None and headers.get("Retry-After") else None
    except ValueError:  # an HTTP date: fall back to our own back-off
        return None


def _normalise_url(url: str) -> str:
    """Base URL without a trailing slash or a pasted '/chat/completions' (a query string is kept, a fragment dropped)."""
    base, _, query = url.strip().partition("#")[0].partition("?")
    base = base.rstrip("/")
    if not base:
        raise PrefoptError(
            "http judge needs a server URL: use http:URL (e.g. http:http://127.0.0.1:8000/v1) or set PREFOPT_JUDGE_URL"
        )
    if not base.startswith(("http://", "https://")):
        raise PrefoptError(f"http judge URL must start with http:// or https://, got '{mask_url(url.strip())}'")
    base = base.removesuffix("/chat/completions")
    return f"{base}?{query}" if query else base


def _request_parts(url: str) -> tuple[_Secret, _Secret | None, _Secret | None]:
    """(base URL without userinfo, query string, Basic credentials): userinfo never goes into the host name."""
    base, _, query = url.partition("?")
    scheme, rest = base.split("://", 1)
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    basic = None
    if at:
        user, _, password = userinfo.partition(":")
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        basic = _Secret(base64.b64encode(pair.encode()).decode())
    return _Secret(f"{scheme}://{host}{slash}{path}"), _Secret(query) if query else None, basic
