"""Judges: decisions, discovery, the reward-model and LM judges on tiny models,
and the HTTP judge against a real chat-completions server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import FakeEntryPoint

from prefopt import judges
from prefopt.core import registry
from prefopt.errors import PrefoptError
from prefopt.judges import (
    GoldJudge,
    HTTPJudge,
    Judge,
    LMJudge,
    RewardModelJudge,
    agreement,
    combine_orders,
    judge_prompt,
    make_judge,
    parse_letter,
    tie_rate,
)
from prefopt.tasks import generate_qa

Q = [{"role": "user", "content": "What is 6 times 7?"}]
SHORT, LONG = "6 times 7 is 42.", "Well, that is an interesting question. 6 times 7 is 42."
KEY = "sk-test-SECRET-9f8e7d6c5b4a"


@pytest.fixture(autouse=True)
def _no_judge_env(monkeypatch):
    """Judge settings and proxies of the machine running the tests must not leak in."""
    for name in ("PREFOPT_JUDGE_URL", "PREFOPT_JUDGE_MODEL", "PREFOPT_JUDGE_API_KEY", "OPENAI_API_KEY",
                 "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- decisions


def test_agreement_counts_equal_decisions_and_ties_only_match_ties():
    """Pairs: (1,1) agree, (0,0) agree, (.5,.5) agree, (.5,1) and (1,0) do not: 3/5."""
    assert agreement([1.0, 0.0, 0.5, 0.5, 1.0], [1.0, 0.0, 0.5, 1.0, 0.0]) == pytest.approx(3 / 5)
    assert agreement([1.0, 0.0], [1.0, 0.0]) == 1.0
    assert agreement([0.5, 0.5], [1.0, 0.0]) == 0.0
    # Soft preferences are snapped to decisions first: 0.9 ~ 1.0, 0.2 ~ 0.0.
    assert agreement([0.9, 0.2, 0.5], [1.0, 0.0, 0.5]) == 1.0
    with pytest.raises(ValueError, match="equally long"):
        agreement([1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="empty"):
        agreement([], [])


def test_tie_rate():
    assert tie_rate([0.5, 1.0, 0.0, 0.5]) == 0.5
    assert tie_rate([1.0, 0.0]) == 0.0
    assert tie_rate([0.5]) == 1.0
    with pytest.raises(ValueError, match="empty"):
        tie_rate([])


def test_two_orders_stand_only_when_they_agree():
    assert combine_orders(1.0, 1.0) == 1.0
    assert combine_orders(0.0, 0.0) == 0.0
    assert combine_orders(1.0, 0.0) == 0.5  # position bias: each order picked its first slot
    assert combine_orders(0.5, 1.0) == 0.5  # one order undecided
    assert combine_orders(0.8, 0.7) == 1.0  # soft votes snap first


@pytest.mark.parametrize(
    "reply, letter",
    [("A", "A"), ("B", "B"), (" B.", "B"), ("**A**", "A"), ("Response B is better", "B"), ("a", "A"), ("b.", "B"),
     ("", None), ("I think so", None), ("AB", None), ("both", None)],
)  # fmt: skip
def test_parse_letter(reply, letter):
    assert parse_letter(reply) == letter


def test_judge_prompt_labels_the_two_responses():
    text = judge_prompt(Q, SHORT, LONG)
    assert text.index("[Response A]\n" + SHORT) < text.index("[Response B]\n" + LONG)
    assert "What is 6 times 7?" in text and text.rstrip().endswith("A or B.")
    multi = judge_prompt([{"role": "system", "content": "Be brief."}, *Q], "x", "y")
    assert "System: Be brief.\nUser: What is 6 times 7?" in multi


# ---------------------------------------------------------------- interface and gold


class LengthScorer(Judge):
    """Scores by negative length: shorter is better."""

    def score(self, prompts, responses):
        return [-float(len(r)) for r in responses]


def test_compare_defaults_to_the_scores_and_score_is_optional():
    assert LengthScorer().compare([Q] * 3, [SHORT, LONG, SHORT], [LONG, SHORT, SHORT]) == [1.0, 0.0, 0.5]
    with pytest.raises(NotImplementedError, match="only compares two responses"):
        Judge().score([Q], [SHORT])
    with pytest.raises(ValueError, match="differ in length"):
        LengthScorer().compare([Q], [SHORT, LONG], [LONG])


def test_gold_judge_prefers_every_chosen_response_of_builtin_qa():
    records = generate_qa(60, seed=3)
    prompts = [r.prompt for r in records]
    judge = make_judge("gold:qa")
    assert isinstance(judge, GoldJudge)
    chosen = judge.score(prompts, [r.chosen for r in records])
    rejected = judge.score(prompts, [r.rejected for r in records])
    assert all(c > r for c, r in zip(chosen, rejected))
    assert judge.compare(prompts, [r.chosen for r in records], [r.rejected for r in records]) == [1.0] * 60
    assert judge.compare(prompts, [r.rejected for r in records], [r.chosen for r in records]) == [0.0] * 60
    # Hand-worked: correct & concise = 1.0; a wrong answer (43) = 0.0; a string prompt works too.
    assert judge.score(["What is 6 times 7?"], [SHORT]) == [1.0]
    assert judge.score([Q], ["6 times 7 is 48."]) == [0.0]
    with pytest.raises(TypeError, match="single message dict"):
        judge.score(Q, [SHORT])


def test_gold_judge_errors():
    with pytest.raises(PrefoptError, match=r"unknown gold task 'math' \(available: constraints, qa, tone\)"):
        make_judge("gold:math")
    with pytest.raises(PrefoptError, match="gold:qa judge, prompt 2: not a question of the built-in qa task"):
        GoldJudge().score([Q, [{"role": "user", "content": "Tell me a joke"}]], [SHORT, SHORT])


# ---------------------------------------------------------------- discovery


class ConstantJudge(Judge):
    """Always a tie (a plugin for tests)."""

    def __init__(self, level: str = "0.5"):
        self.level = float(level)

    def compare(self, prompts, responses_a, responses_b):
        return [self.level] * len(prompts)


def test_builtins_are_always_discoverable():
    kinds = judges.judge_kinds()
    assert {"gold", "reward", "lm", "http"} <= set(kinds)
    assert [(e.package, e.target) for e in kinds["gold"]] == [("prefopt", "prefopt.judges.gold:GoldJudge")]
    assert kinds["lm"][0].description.startswith("A causal LM asked")


def test_plugins_are_found_and_a_broken_one_does_not_break_the_others(monkeypatch):
    eps = [
        FakeEntryPoint("gold", "prefopt.judges.gold:GoldJudge", "prefopt", target=GoldJudge),  # prefopt's own: no clash
        FakeEntryPoint("const", "const_pkg:ConstantJudge", "const-pkg", target=ConstantJudge),
        FakeEntryPoint("broken", "broken_pkg:Judge", "broken-pkg", error=ImportError("No module named 'vllm'")),
        FakeEntryPoint("notjudge", "pkg:thing", "pkg", target=object),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == judges.GROUP else [])
    kinds = judges.judge_kinds()
    assert kinds["broken"][0].description == "error: failed to import broken_pkg:Judge: ImportError: No module named 'vllm'"
    assert "not a prefopt.judges.base.Judge subclass" in kinds["notjudge"][0].description
    assert make_judge("const:1.0").compare([Q], [SHORT], [LONG]) == [1.0]
    assert isinstance(make_judge("gold:qa"), GoldJudge)
    with pytest.raises(PrefoptError, match="judge kind 'broken' from broken-pkg: failed to import"):
        make_judge("broken")


def test_a_plugin_reusing_a_builtin_name_is_an_error(monkeypatch):
    eps = [FakeEntryPoint("lm", "prefopt.judges.lm:LMJudge", "prefopt", target=LMJudge),
           FakeEntryPoint("lm", "other_pkg:LMJudge", "other-pkg", target=ConstantJudge)]  # fmt: skip
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == judges.GROUP else [])
    with pytest.raises(PrefoptError, match=r"'lm' is registered more than once: prefopt \(prefopt.judges.lm:LMJudge\), other-pkg"):
        make_judge("lm:whatever")


def test_make_judge_errors_are_one_line_with_suggestions():
    with pytest.raises(PrefoptError, match=r"unknown judge kind 'gld'; did you mean 'gold'"):
        make_judge("gld:qa")
    with pytest.raises(PrefoptError, match=r"judge 'http' has no option 'timout'; did you mean 'timeout'"):
        make_judge("http:http://127.0.0.1:9/v1", timout=3)
    with pytest.raises(PrefoptError, match="reward judge needs a run folder"):
        make_judge("reward")
    with pytest.raises(PrefoptError, match="needs a server URL"):
        make_judge("http")
    with pytest.raises(PrefoptError, match="must start with http:// or https://"):
        make_judge("http:127.0.0.1:8000")


def test_model_options_reach_only_judges_that_run_a_model(monkeypatch):
    """The bench passes device/precision for any judge spec; a judge without a local model never sees them."""
    assert isinstance(make_judge("gold:qa", model_options={"device": "cpu", "precision": "fp32"}), GoldJudge)
    monkeypatch.setattr(GoldJudge, "runs_model", True)  # now they are passed, and the gold judge has no such option
    with pytest.raises(PrefoptError, match="judge 'gold' has no option 'device'"):
        make_judge("gold:qa", model_options={"device": "cpu"})


def test_http_specs_and_environment(monkeypatch):
    for spec in ("http:http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1", "http:http://127.0.0.1:8000/v1/chat/completions"):
        judge = make_judge(spec, model="m")
        assert isinstance(judge, HTTPJudge) and judge.url == "http://127.0.0.1:8000/v1"
    monkeypatch.setenv("PREFOPT_JUDGE_URL", "https://judge.example/v1")
    monkeypatch.setenv("PREFOPT_JUDGE_MODEL", "qwen")
    judge = make_judge("http")
    assert (judge.url, judge.model) == ("https://judge.example/v1", "qwen")


# ---------------------------------------------------------------- reward model judge


def _reward_model(tiny_model, seed=0):
    from prefopt.core.heads import attach_scalar_head

    torch.manual_seed(seed)
    model = attach_scalar_head(tiny_model).eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)  # rewards that actually differ
    return model


def test_reward_judge_batches_like_one_at_a_time(tiny_model, tiny_tokenizer):
    """Right padding must not move a row's reward: batched == unbatched == a raw forward."""
    from prefopt.data import encode_response, render_prompt

    model = _reward_model(tiny_model)
    prompts = [Q, [{"role": "user", "content": "What is the capital of France?"}], Q, Q]
    responses = [SHORT, "Paris.", LONG, "42"]
    batched = RewardModelJudge.from_model(model, tiny_tokenizer, batch_size=4).score(prompts, responses)
    single = RewardModelJudge.from_model(model, tiny_tokenizer, batch_size=1).score(prompts, responses)
    assert batched == pytest.approx(single, abs=1e-5)
    ids = torch.tensor([render_prompt(tiny_tokenizer, Q) + encode_response(tiny_tokenizer, SHORT)])
    with torch.no_grad():
        raw = model(ids, torch.ones_like(ids)).item()
    assert batched[0] == pytest.approx(raw, abs=1e-5)
    assert len({round(s, 4) for s in batched}) == 4
    decisions = RewardModelJudge.from_model(model, tiny_tokenizer).compare([Q, Q], [SHORT, LONG], [LONG, SHORT])
    expected = 1.0 if single[0] > single[2] else 0.0
    assert decisions == [expected, 1.0 - expected]


def test_reward_judge_truncates_like_training(tiny_model, tiny_tokenizer):
    """Responses that differ only after max_length tokens look the same to the reward model."""
    model = _reward_model(tiny_model)
    judge = RewardModelJudge.from_model(model, tiny_tokenizer, max_length=24, max_prompt_length=16)
    same_start = "The capital of France is Paris. " * 4
    scores = judge.score([Q, Q], [same_start + "yes", same_start + "no no no"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)


def test_reward_judge_loads_a_trained_run_folder(tiny_model_dir, tiny_tokenizer, tmp_path):
    from prefopt.core.heads import HEAD_FILE, attach_scalar_head
    from prefopt.core.models import load_model, save_trained

    torch.manual_seed(1)
    lm = load_model(str(tiny_model_dir), adapter="lora")
    for name, p in lm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter
    model = attach_scalar_head(lm).eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)
    run = tmp_path / "reward-run"
    save_trained(lm, tiny_tokenizer, run)
    model.save_head(run / "adapter")
    (run / "config.yaml").write_text(yaml.safe_dump({"algo": "reward", "model": str(tiny_model_dir)}))

    judge = make_judge(f"reward:{run}", precision="fp32")
    assert isinstance(judge, RewardModelJudge) and str(run) in repr(judge)
    expected = RewardModelJudge.from_model(model, tiny_tokenizer).score([Q, Q], [SHORT, LONG])
    assert judge.score([Q, Q], [SHORT, LONG]) == pytest.approx(expected, abs=1e-5)

    (run / "adapter" / HEAD_FILE).unlink()  # a run without a saved head is no reward model, whatever its algorithm
    with pytest.raises(PrefoptError, match=r"not a reward model run \(no reward head saved\)"):
        make_judge(f"reward:{run}")


# ---------------------------------------------------------------- local LM judge


_RESPONSES = re.compile(r"\[Response A\]\n(.*?)\n\n\[Response B\]\n(.*?)\n\nAnswer with", re.DOTALL)


class ScriptedLM(torch.nn.Module):
    """A fake causal LM: reads each (left-padded) judge prompt and puts its logit mass on one letter."""

    def __init__(self, tokenizer, pick):
        super().__init__()
        self.tokenizer, self.pick = tokenizer, pick  # pick(a_text, b_text) -> "A" | "B"
        self.letter = {L: tokenizer(L, add_special_tokens=False).input_ids[0] for L in "AB"}
        self.calls = []

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=None, logits_to_keep=0):
        self.calls.append(input_ids.shape)
        assert (attention_mask[:, -1] == 1).all(), "rows must be left-padded: every row ends at the last position"
        logits = torch.zeros(input_ids.shape[0], 1, len(self.tokenizer))  # (N, 1, V)
        for i, row in enumerate(input_ids):
            text = self.tokenizer.decode(row[attention_mask[i].bool()])
            a, b = _RESPONSES.search(text).groups()
            logits[i, 0, self.letter[self.pick(a, b)]] = 5.0
        return SimpleNamespace(logits=logits)


def test_lm_judge_answer_tokens(tiny_tokenizer, tiny_model):
    judge = LMJudge.from_model(tiny_model, tiny_tokenizer)
    assert [tiny_tokenizer.decode([t]) for t in judge.letter_ids] == ["A", "B"]


def test_lm_judge_position_bias_becomes_ties(tiny_tokenizer):
    lm = ScriptedLM(tiny_tokenizer, pick=lambda a, b: "A")
    judge = LMJudge.from_model(lm, tiny_tokenizer, batch_size=3)
    prefs = judge.preferences([Q] * 2, [SHORT, LONG], [LONG, SHORT])
    p = torch.sigmoid(torch.tensor(5.0)).item()  # logit gap 5 between A and B
    assert prefs == [pytest.approx((p, p), abs=1e-6)] * 2
    assert [shape[0] for shape in lm.calls] == [3, 1]  # 4 judge prompts in batches of 3
    decisions = judge.compare([Q] * 2, [SHORT, LONG], [LONG, SHORT])
    assert decisions == [0.5, 0.5] and tie_rate(decisions) == 1.0


def test_lm_judge_consistent_preference_decides_in_both_orders(tiny_tokenizer):
    shorter = ScriptedLM(tiny_tokenizer, pick=lambda a, b: "A" if len(a) < len(b) else "B")
    judge = LMJudge.from_model(shorter, tiny_tokenizer)
    p = torch.sigmoid(torch.tensor(5.0)).item()
    assert judge.preferences([Q, Q], [SHORT, LONG], [LONG, SHORT]) == [pytest.approx((p, 1 - p), abs=1e-6), pytest.approx((1 - p, p), abs=1e-6)]
    assert judge.compare([Q, Q, Q], [SHORT, LONG, "42"], [LONG, SHORT, SHORT]) == [1.0, 0.0, 1.0]
    with pytest.raises(NotImplementedError, match="LMJudge only compares two responses"):
        judge.score([Q], [SHORT])


def test_lm_judge_on_a_real_tiny_model_is_swap_symmetric_and_padding_free(tiny_model, tiny_tokenizer):
    prompts = [Q, [{"role": "user", "content": "What is the capital of Japan?"}], Q]
    a, b = [SHORT, "Tokyo.", "42"], [LONG, "The capital of Japan is Osaka, I think.", SHORT]
    judge = LMJudge.from_model(tiny_model, tiny_tokenizer, batch_size=6)
    batched = judge.preferences(prompts, a, b)
    one_by_one = LMJudge.from_model(tiny_model, tiny_tokenizer, batch_size=1).preferences(prompts, a, b)
    for x, y in zip(batched, one_by_one):
        assert x == pytest.approx(y, abs=1e-5)
        assert all(0.0 < v < 1.0 for v in x)
    forward = judge.compare(prompts, a, b)
    assert set(forward) <= {0.0, 0.5, 1.0}
    assert judge.compare(prompts, b, a) == [1.0 - d for d in forward]


# ---------------------------------------------------------------- HTTP judge: a real local server


class ChatServer:
    """A chat-completions server on 127.0.0.1 (port 0) with scripted behaviour.

    rule(a, b) -> reply text; fail: list of statuses to answer first, one per request;
    sleep: seconds to stall before answering; location: a Location header for failures (redirects);
    raw(handler, stop): writes the whole answer itself (trickling, oversized). Every request is recorded.
    """

    def __init__(self, rule=None, fail=(), sleep=0.0, status=None, echo_auth=False, models=("served-model",), reply=None,
                 location=None, raw=None):  # fmt: skip
        self.rule = rule or (lambda a, b: "A" if len(a) < len(b) else "B")
        self.fail, self.sleep, self.status, self.echo_auth = list(fail), sleep, status, echo_auth
        self.models, self.reply, self.location, self.raw = models, reply, location, raw
        self.requests: list[dict] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.handle_error = lambda request, address: None  # a client that timed out is not a test failure
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.stop.set()  # wakes stalled handlers
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def answer(self, handler, method):
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length)) if length else None
        with self.lock:
            self.requests.append({"method": method, "path": handler.path, "body": body, "auth": handler.headers.get("Authorization")})
            failure = self.fail.pop(0) if self.fail else self.status
        if self.sleep:
            self.stop.wait(self.sleep)
        if failure:
            auth = handler.headers.get("Authorization")
            detail = f"echo {auth} {handler.path}" if self.echo_auth else "scripted failure"
            headers = {"Retry-After": "0.01"} if failure == 429 else {}
            headers.update({"Location": self.location} if self.location else {})
            return failure, {"error": {"message": detail}}, headers
        route = handler.path.partition("?")[0]
        if method == "GET" and route == "/v1/models":
            return 200, {"object": "list", "data": [{"id": m} for m in self.models]}, {}
        if method != "POST" or route != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {handler.path}"}}, {}
        problem = self.invalid(body)
        if problem:
            return 400, {"error": {"message": problem}}, {}
        if self.reply is not None:
            return 200, self.reply, {}
        a, b = _RESPONSES.search(body["messages"][-1]["content"]).groups()
        content = self.rule(a, b)
        return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length"}]}, {}

    @staticmethod
    def invalid(body) -> str | None:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
            return "model is required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all({"role", "content"} <= set(m) for m in messages):
            return "messages must be a non-empty list of {role, content}"
        if body.get("temperature") != 0 or not isinstance(body.get("max_tokens"), int):
            return "expected temperature 0 and an integer max_tokens"
        return None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _respond(self, method):
                if server.raw:
                    record = {"method": method, "path": self.path, "auth": self.headers.get("Authorization")}
                    with server.lock:
                        server.requests.append(record)
                    try:
                        server.raw(self, server.stop)
                    except OSError:  # the client gave up (deadline, size cap)
                        pass
                    return
                status, payload, headers = server.answer(self, method)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def do_POST(self):
                self._respond("POST")

            def do_GET(self):
                self._respond("GET")

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def serve():
    servers = []

    def start(**kwargs):
        servers.append(ChatServer(**kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


class Sleeps(list):
    """Records back-off delays instead of sleeping."""

    def __call__(self, seconds):
        self.append(seconds)


def test_http_judge_decides_in_both_orders(serve):
    server = serve()
    judge = HTTPJudge(server.url, model="judge-model", sleep=Sleeps())
    assert judge.letters([Q, Q], [SHORT, LONG], [LONG, SHORT]) == [("A", "B"), ("B", "A")]
    assert judge.compare([Q, Q], [SHORT, LONG], [LONG, SHORT]) == [1.0, 0.0]
    assert len(server.requests) == 8 and judge.requests == 8 and judge.unparseable == 0
    sent = server.requests[0]
    assert sent["body"]["model"] == "judge-model" and sent["body"]["temperature"] == 0 and sent["body"]["max_tokens"] == 1
    assert sent["auth"] is None  # no key configured: no header


def test_http_judge_position_bias_and_unparseable_replies_are_ties(serve):
    biased = serve(rule=lambda a, b: "A")
    decisions = HTTPJudge(biased.url, model="m").compare([Q, Q], [SHORT, LONG], [LONG, SHORT])
    assert decisions == [0.5, 0.5] and tie_rate(decisions) == 1.0
    chatty = serve(rule=lambda a, b: "Both are fine")
    judge = HTTPJudge(chatty.url, model="m")
    assert judge.compare([Q, Q, Q], [SHORT] * 3, [LONG] * 3) == [0.5] * 3
    assert judge.unparseable == 6


def test_http_judge_asks_the_server_for_its_model_and_runs_concurrently(serve):
    server = serve()
    judge = HTTPJudge(server.url, concurrency=4)
    prompts, a, b = [Q] * 6, [SHORT, LONG] * 3, [LONG, SHORT] * 3
    assert judge.compare(prompts, a, b) == [1.0, 0.0] * 3
    assert judge.model == "served-model"
    assert [r["path"] for r in server.requests].count("/v1/models") == 1
    assert {r["body"]["model"] for r in server.requests if r["body"]} == {"served-model"}


def test_http_judge_retries_429_and_5xx_with_growing_backoff(serve):
    server = serve(fail=[503, 429, 502])
    sleeps = Sleeps()
    judge = HTTPJudge(server.url, model="m", retries=4, backoff=0.5, sleep=sleeps, seed=0)
    assert judge.compare([Q], [SHORT], [LONG]) == [1.0]
    assert len(server.requests) == 5  # 3 failures, then both orders
    # attempt k waits between half and all of 0.5 * 2**(k-1); 429's Retry-After (0.01 s) is smaller
    assert len(sleeps) == 3
    for k, delay in enumerate(sleeps, start=1):
        assert 0.25 * 2 ** (k - 1) <= delay <= 0.5 * 2 ** (k - 1)


def test_http_judge_gives_up_after_its_attempts(serve):
    server = serve(status=500)
    sleeps = Sleeps()
    with pytest.raises(PrefoptError, match=rf"judge server {re.escape(server.url)} failing after 3 attempts: HTTP 500"):
        HTTPJudge(server.url, model="m", sleep=sleeps).compare([Q], [SHORT], [LONG])
    assert len(server.requests) == 3 and len(sleeps) == 2


def test_http_judge_does_not_retry_a_client_error(serve):
    server = serve(status=400)
    sleeps = Sleeps()
    with pytest.raises(PrefoptError, match=r"answered HTTP 400 Bad Request: .*scripted failure"):
        HTTPJudge(server.url, model="m", sleep=sleeps).compare([Q], [SHORT], [LONG])
    assert len(server.requests) == 1 and sleeps == []


def test_http_judge_rejects_a_malformed_reply(serve):
    server = serve(reply={"id": "x", "object": "chat.completion"})
    with pytest.raises(PrefoptError, match=r"unexpected reply \(no choices\[0\].message.content\)"):
        HTTPJudge(server.url, model="m").compare([Q], [SHORT], [LONG])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_judge_unreachable_server_is_one_line_within_bounded_time():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    sleeps = Sleeps()
    start = time.monotonic()
    with pytest.raises(PrefoptError) as info:
        HTTPJudge(url, model="m", timeout=2, sleep=sleeps).compare([Q], [SHORT], [LONG])
    assert str(info.value) == f"judge server {url} unreachable after 3 attempts: Connection refused"
    assert time.monotonic() - start < 5 and len(sleeps) == 2


def test_http_judge_times_out_a_stalled_server(serve):
    server = serve(sleep=3.0)
    start = time.monotonic()
    with pytest.raises(PrefoptError, match=r"unreachable after 2 attempts: timed out after 0.2 s"):
        HTTPJudge(server.url, model="m", timeout=0.2, retries=2, sleep=Sleeps()).compare([Q], [SHORT], [LONG])
    assert time.monotonic() - start < 2.0
    assert len(server.requests) == 2


def test_http_judge_api_key_is_sent_but_never_shown(serve, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    ok = serve()
    monkeypatch.setenv("PREFOPT_JUDGE_API_KEY", KEY)
    judge = make_judge(f"http:{ok.url}", model="m")
    assert judge.compare([Q], [SHORT], [LONG]) == [1.0]
    assert {r["auth"] for r in ok.requests} == {f"Bearer {KEY}"}
    assert KEY not in repr(judge) and "api_key=***" in repr(judge) and KEY not in f"{vars(judge)}"

    # A server that echoes the Authorization header in its errors, first transient then final.
    echo = serve(fail=[503], status=401, echo_auth=True)
    judge = HTTPJudge(echo.url, model="m", sleep=Sleeps())
    with pytest.raises(PrefoptError) as info:
        judge.compare([Q], [SHORT], [LONG])
    assert "HTTP 401" in str(info.value) and "Bearer ***" in str(info.value) and KEY not in str(info.value)
    assert "retry 1/2" in caplog.text and KEY not in caplog.text
    assert {r["auth"] for r in echo.requests} == {f"Bearer {KEY}"}


def test_http_judge_falls_back_to_openai_api_key(serve, monkeypatch):
    server = serve()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    HTTPJudge(server.url, model="m").compare([Q], [SHORT], [LONG])
    assert server.requests[0]["auth"] == f"Bearer {KEY}"
    explicit = HTTPJudge(server.url, model="m", api_key="sk-other")
    assert explicit._api_key.reveal() == "sk-other"


# ---------------------------------------------------------------- HTTP judge: an untrusted server


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_http_judge_never_follows_a_redirect(serve, status):
    """The key must not travel to another origin, and the POST must not come back as a GET: nothing is re-sent."""
    elsewhere = serve()  # another origin (another port) that records any Authorization it receives
    target = f"{elsewhere.url}/chat/completions?api_key=LOCATION-SECRET"
    redirecting = serve(status=status, location=target)
    judge = HTTPJudge(redirecting.url, model="m", api_key=KEY, retries=3, sleep=Sleeps())
    start = time.monotonic()
    with pytest.raises(PrefoptError) as info:
        judge.compare([Q], [SHORT], [LONG])
    message = str(info.value)
    assert elsewhere.requests == []
    assert [r["method"] for r in redirecting.requests] == ["POST"]  # once: a redirect is final, not retried
    assert f"answered HTTP {status}" in message and "redirects are not followed" in message and "\n" not in message
    assert f"{elsewhere.url}/chat/completions?api_key=***" in message
    assert "LOCATION-SECRET" not in message and KEY not in message
    assert time.monotonic() - start < 2.0


def _oversized(declare_length: bool):
    def raw(handler, stop):
        chunk, total = b"x" * 65536, 64 * 2**20
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if declare_length:
            handler.send_header("Content-Length", str(total))
        handler.end_headers()
        for _ in range(total // len(chunk)):
            if stop.is_set():
                return
            handler.wfile.write(chunk)

    return raw


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "until-close"])
def test_http_judge_refuses_a_reply_larger_than_its_cap(serve, declare_length):
    server = serve(raw=_oversized(declare_length))
    assert HTTPJudge(server.url).max_response_bytes == 2**20
    judge = HTTPJudge(server.url, model="m", max_response_bytes=65536, sleep=Sleeps())
    start = time.monotonic()
    with pytest.raises(PrefoptError) as info:
        judge.compare([Q], [SHORT], [LONG])
    message = str(info.value)
    assert message.startswith(f"judge server {server.url}: reply larger than max_response_bytes=65536")
    assert "\n" not in message and len(server.requests) == 1  # final, not retried
    assert time.monotonic() - start < 1.0  # 64 MiB were offered; at most 64 KiB + 1 were read
    with pytest.raises(PrefoptError, match="max_response_bytes must be a positive integer"):
        HTTPJudge(server.url, max_response_bytes=0)


def _trickle(part: str):
    """Headers or body one byte every 0.2 s: each read succeeds, so only an overall deadline can end it."""
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "A"}}]}).encode()

    def raw(handler, stop):
        head = f"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        slow = (b"X-Slow: " + b"." * 40 + b"\r\n\r\n" + body) if part == "headers" else body
        handler.wfile.write(head.encode() + (b"" if part == "headers" else b"\r\n"))
        for byte in slow:
            if stop.wait(0.2):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    return raw


@pytest.mark.parametrize("part", ["headers", "body"])
def test_http_judge_deadline_holds_against_a_trickling_server(serve, part):
    server = serve(raw=_trickle(part))
    start = time.monotonic()
    with pytest.raises(PrefoptError) as info:
        HTTPJudge(server.url, model="m", timeout=1, retries=1, sleep=Sleeps()).compare([Q], [SHORT], [LONG])
    assert time.monotonic() - start < 1.5
    assert str(info.value) == (
        f"judge server {server.url} unreachable after 1 attempts: "
        "timed out after 1 s (the deadline for the whole request passed)"
    )


def test_http_judge_masks_a_key_in_the_url(serve, caplog):
    caplog.set_level(logging.DEBUG)
    port = _free_port()
    url = f"http://user:SECRET@127.0.0.1:{port}/v1?api_key=SECRET&api-version=2024"
    judge = HTTPJudge(url, model="m", timeout=2, retries=2, sleep=Sleeps())
    masked = f"http://user:***@127.0.0.1:{port}/v1?api_key=***&api-version=2024"
    assert judge.url == masked and "SECRET" not in repr(judge) and "SECRET" not in f"{vars(judge)}"
    with pytest.raises(PrefoptError) as info:  # nothing listens: the error names the masked URL
        judge.compare([Q], [SHORT], [LONG])
    assert str(info.value) == f"judge server {masked} unreachable after 2 attempts: Connection refused"
    with pytest.raises(PrefoptError) as info:
        HTTPJudge("ftp://user:SECRET@host/v1")
    assert "SECRET" not in str(info.value) and "ftp://user:***@host/v1" in str(info.value)

    # A live server: the query reaches the endpoint, userinfo goes as Basic auth (not into the host name),
    # and a server echoing both back (first transiently, then finally) has them redacted in errors and logs.
    ok = serve()
    HTTPJudge(ok.url.replace("//", "//user:SECRET@") + "?api_key=SECRET", model="m").compare([Q], [SHORT], [LONG])
    assert {r["path"] for r in ok.requests} == {"/v1/chat/completions?api_key=SECRET"}
    assert {r["auth"] for r in ok.requests} == {"Basic dXNlcjpTRUNSRVQ="}  # user:SECRET
    echo = serve(fail=[503], status=401, echo_auth=True)
    judge = HTTPJudge(echo.url.replace("//", "//user:SECRET@") + "?api_key=SECRET", model="m", sleep=Sleeps())
    with pytest.raises(PrefoptError) as info:
        judge.compare([Q], [SHORT], [LONG])
    assert "HTTP 401" in str(info.value) and "Basic ***" in str(info.value) and "api_key=***" in str(info.value)
    assert "SECRET" not in str(info.value)
    assert "retry 1/2" in caplog.text and "SECRET" not in caplog.text
