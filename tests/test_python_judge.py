"""Python reward functions as judges (python:MODULE:FUNCTION) and weighted sums of scoring judges."""

from __future__ import annotations

import itertools
import sys
import textwrap

import pytest

from prefopt.errors import PrefoptError
from prefopt.judges import Judge, LMJudge, PythonJudge, WeightedJudge, judge_kinds, make_judge, split_specs

REWARDS = textwrap.dedent(
    """
    import math

    CALLS = []

    def length(prompts, completions, **kwargs):
        CALLS.append((prompts, completions, kwargs))
        return [float(len(c)) for c in completions]

    def brevity(prompts, completions, **kwargs):
        return [-len(c) / 100 for c in completions]

    def boom(prompts, completions, **kwargs):
        raise ValueError("reward server down\\nsecond line of the message")

    def short(prompts, completions, **kwargs):
        return [1.0] * (len(completions) - 1)

    def nan_at_2(prompts, completions, **kwargs):
        return [0.0, math.nan] + [0.0] * (len(completions) - 2)

    def inf_at_1(prompts, completions, **kwargs):
        return [math.inf] + [0.0] * (len(completions) - 1)

    def text(prompts, completions, **kwargs):
        return "0.5"

    def text_at_3(prompts, completions, **kwargs):
        return [0.0, 0.0, "high"] + [0.0] * (len(completions) - 3)

    def none_at_4(prompts, completions, **kwargs):
        return [0.0, 0.0, 0.0, None]

    def positional(texts, replies):
        return [0.0] * len(replies)

    class Scorer:
        @staticmethod
        def flags(prompts, completions, **kwargs):
            return [c.endswith(".") for c in completions]

    not_callable = 3
    """
)

_counter = itertools.count()
QA = [
    [{"role": "user", "content": "What is 6 times 7?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 17 + 25?"}],
]


@pytest.fixture
def rewards(tmp_path, monkeypatch):
    """A reward module in a tmp folder put on sys.path; a fresh module name per test (no sys.modules reuse)."""
    name = f"prefopt_test_rewards_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_python_is_a_builtin_judge_kind():
    assert [(e.package, e.target) for e in judge_kinds()["python"]] == [
        ("prefopt", "prefopt.judges.python:PythonJudge")
    ]


def test_scores_are_the_functions_values_called_trl_style(rewards):
    judge = make_judge(f"python:{rewards}:length")
    assert isinstance(judge, PythonJudge) and judge.name == f"python:{rewards}:length"
    # "6 times 7 is 42." has 16 characters, "17 + 25 = 41." has 13
    assert judge.score(QA, ["6 times 7 is 42.", "17 + 25 = 41."]) == [16.0, 13.0]
    calls = sys.modules[rewards].CALLS
    # keyword arguments prompts= (the last user turn's text) and completions=, no dataset columns yet
    assert calls[-1] == (["What is 6 times 7?", "What is 17 + 25?"], ["6 times 7 is 42.", "17 + 25 = 41."], {})
    assert judge.score([], []) == []  # an empty batch does not call the function
    assert len(calls) == 1


def test_compare_is_derived_from_the_scores(rewards):
    judge = make_judge(f"python:{rewards}:length")
    # longer is better for this reward: a wins, b wins, a tie (equal lengths)
    assert judge.compare(QA + QA[:1], ["abcd", "ab", "xy"], ["abc", "abc", "zw"]) == [1.0, 0.0, 0.5]


def test_dotted_attributes_bools_and_direct_callables(rewards):
    judge = make_judge(f"python:{rewards}:Scorer.flags")
    assert judge.score(QA, ["Yes.", "no"]) == [1.0, 0.0]  # bools count as 1 / 0
    direct = PythonJudge(lambda prompts, completions, **kw: [len(p) for p in prompts])
    assert direct.score(QA, ["", ""]) == [18.0, 16.0]
    assert direct.name.startswith(f"python:{__name__}:") and "<lambda>" in direct.name


def one_line_error(spec: str, n: int = 4) -> str:
    judge = make_judge(spec)
    with pytest.raises(PrefoptError) as info:
        judge.score(QA * (n // 2), ["a", "bb", "ccc", "dddd"][:n])
    message = str(info.value)
    assert "\n" not in message and message.startswith(spec)
    return message


def test_each_bad_return_is_one_line_naming_the_function_and_the_row(rewards):
    spec = f"python:{rewards}"
    assert one_line_error(f"{spec}:boom") == (f"{spec}:boom raised ValueError on a batch of 4 rows: reward server down")
    assert one_line_error(f"{spec}:short") == f"{spec}:short returned 3 scores for 4 completions"
    assert one_line_error(f"{spec}:nan_at_2") == f"{spec}:nan_at_2: row 2 of 4: nan (scores must be finite)"
    assert one_line_error(f"{spec}:inf_at_1") == f"{spec}:inf_at_1: row 1 of 4: inf (scores must be finite)"
    assert one_line_error(f"{spec}:text") == f"{spec}:text returned a str, expected a list of 4 numbers"
    assert one_line_error(f"{spec}:text_at_3") == f"{spec}:text_at_3: row 3 of 4: 'high' is a str, not a number"
    assert one_line_error(f"{spec}:none_at_4") == (
        f"{spec}:none_at_4: row 4 of 4: None (return a number for every completion)"
    )
    message = one_line_error(f"{spec}:positional")
    assert "unexpected keyword argument 'prompts'" in message and "**kwargs" in message


def test_the_user_exception_stays_attached_for_debugging(rewards):
    with pytest.raises(PrefoptError) as info:
        make_judge(f"python:{rewards}:boom").score(QA, ["a", "b"])
    assert isinstance(info.value.__cause__, ValueError)


def test_loading_errors_are_one_line_naming_the_function(rewards, tmp_path):
    cases = {
        "python:prefopt_no_such_module:f": "python:prefopt_no_such_module:f: no module named 'prefopt_no_such_module'",
        f"python:{rewards}:lenght": f"python:{rewards}:lenght: module {rewards} (",
        f"python:{rewards}:not_callable": f"python:{rewards}:not_callable: {rewards}.not_callable is a int, not a callable",
        f"python:{rewards}": f"python:{rewards}: a python judge is python:MODULE:FUNCTION",
        "python": "the python judge needs a function: python:MODULE:FUNCTION",
    }
    for spec, start in cases.items():
        with pytest.raises(PrefoptError) as info:
            make_judge(spec)
        assert str(info.value).startswith(start) and "\n" not in str(info.value), (spec, str(info.value))
    with pytest.raises(PrefoptError, match=r"has no attribute 'lenght'; did you mean 'length'\?"):
        make_judge(f"python:{rewards}:lenght")

    (tmp_path / "prefopt_test_broken_rewards.py").write_text("import prefopt_missing_dependency\n")
    try:
        with pytest.raises(PrefoptError) as info:
            make_judge("python:prefopt_test_broken_rewards:f")
    finally:
        sys.modules.pop("prefopt_test_broken_rewards", None)
    assert str(info.value) == (
        "python:prefopt_test_broken_rewards:f: importing prefopt_test_broken_rewards failed: "
        "ModuleNotFoundError: No module named 'prefopt_missing_dependency'"
    )


def test_the_current_directory_is_searched_first_for_that_import_only(tmp_path, monkeypatch):
    name = f"prefopt_test_cwd_rewards_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    try:
        assert make_judge(f"python:{name}:brevity").score(QA[:1], ["abcd"]) == [-0.04]
    finally:
        sys.modules.pop(name, None)
    assert sys.path == before


# ---------------------------------------------------------------- weighted sums


def test_weighted_sum_of_a_python_reward_and_the_gold_rule(rewards):
    """brevity = -len/100; gold:qa: right and concise 1.0, near miss ("41" for 42, concise length) 0.0.

    row 1: "6 times 7 is 42." (16 chars): -0.16 + 0.5 * 1.0 = 0.34
    row 2: "17 + 25 = 41."    (13 chars): -0.13 + 0.5 * 0.0 = -0.13
    """
    spec = f"python:{rewards}:brevity,gold:qa"
    for weights in ([1, 0.5], "1, 0.5"):
        judge = make_judge(spec, weights=weights)
        assert isinstance(judge, WeightedJudge) and judge.weights == [1.0, 0.5]
        assert judge.score(QA, ["6 times 7 is 42.", "17 + 25 = 41."]) == pytest.approx([0.34, -0.13])
        assert judge.last_components == {
            f"python:{rewards}:brevity": pytest.approx([-0.16, -0.13]),
            "gold:qa": [1.0, 0.0],
        }
        assert judge.component_means() == pytest.approx({f"python:{rewards}:brevity": -0.145, "gold:qa": 0.5})
    # no weights: all 1.0. row 2 answered right: -0.13 + 1.0 = 0.87
    judge = make_judge(f"python:{rewards}:brevity, gold:qa")
    assert judge.score(QA, ["6 times 7 is 42.", "17 + 25 = 42."]) == pytest.approx([0.84, 0.87])
    # compare from the weighted sums: the rambling right answer (55 chars, gold 1 - 0.002 * 39 = 0.922) loses
    # -0.16 + 1.0 = 0.84 against -0.55 + 0.922 = 0.372
    rambling = "Well, that is an interesting question. 6 times 7 is 42."
    assert judge.compare(QA[:1], ["6 times 7 is 42."], [rambling]) == [1.0]
    assert judge.compare(QA[:1], [rambling], ["6 times 7 is 42."]) == [0.0]
    # weights alone give a weighted judge of one part (a scaled reward)
    single = make_judge("gold:qa", weights=[2.0])
    assert single.score(QA[:1], ["6 times 7 is 42."]) == [2.0]
    assert single.last_components == {"gold:qa": [1.0]}
    # a repeated spec keeps both components apart
    twice = make_judge("gold:qa,gold:qa", weights=[1, -1])
    assert twice.score(QA[:1], ["6 times 7 is 42."]) == [0.0]
    assert list(twice.last_components) == ["gold:qa", "gold:qa#2"]


def test_a_component_error_is_the_components_own(rewards):
    judge = make_judge(f"gold:qa,python:{rewards}:short")
    with pytest.raises(PrefoptError, match=rf"^python:{rewards}:short returned 1 scores for 2 completions$"):
        judge.score(QA, ["a", "b"])


def test_weight_errors_are_one_line(rewards):
    spec = f"python:{rewards}:brevity,gold:qa"
    with pytest.raises(PrefoptError, match=rf"^3 judge weights for 2 judges in '{spec}': give one weight per judge"):
        make_judge(spec, weights=[1, 0.5, 2])
    with pytest.raises(PrefoptError, match="^1 judge weights for 2 judges"):
        make_judge(spec, weights="1")
    with pytest.raises(PrefoptError, match="^judge weight 'x' is not a number$"):
        make_judge(spec, weights="1,x")
    with pytest.raises(PrefoptError, match="^judge weight nan is not a finite number$"):
        make_judge(spec, weights=[1, float("nan")])
    with pytest.raises(PrefoptError, match=r"judge options \(batch_size\) apply to one judge"):
        make_judge(spec, batch_size=4)


def test_compare_only_judges_are_refused_before_any_is_built(rewards, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a judge was built")

    monkeypatch.setattr(LMJudge, "from_spec", classmethod(never))
    monkeypatch.setattr(PythonJudge, "from_spec", classmethod(never))
    for spec, name in [
        (f"python:{rewards}:brevity,lm", "lm"),
        (f"lm:smollm2-135m-instruct,python:{rewards}:brevity", "lm:smollm2-135m-instruct"),
        ("gold:qa,http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
    ]:
        with pytest.raises(PrefoptError) as info:
            make_judge(spec)
        assert str(info.value).startswith(f"judge '{name}' only compares two responses"), str(info.value)
        assert "cannot be part of a weighted sum" in str(info.value)

    class Pairwise(Judge):
        def compare(self, prompts, responses_a, responses_b):
            return [0.5] * len(prompts)

    with pytest.raises(PrefoptError, match="^judge 'pairwise' only compares two responses"):
        WeightedJudge([make_judge("gold:qa"), Pairwise()], names=["gold:qa", "pairwise"])


def test_specs_split_only_before_a_judge_kind():
    kinds = ["gold", "http", "lm", "python", "reward"]
    assert split_specs("python:a:f,python:b.c:g", kinds) == ["python:a:f", "python:b.c:g"]
    assert split_specs("python:a:f , gold:qa,lm", kinds) == ["python:a:f", "gold:qa", "lm"]
    assert split_specs("lm,gold:qa", kinds) == ["lm", "gold:qa"]
    assert split_specs("gold:qa,https://x.example/v1", kinds) == ["gold:qa", "https://x.example/v1"]
    # commas inside a path or a URL stay
    assert split_specs("reward:runs/a,b", kinds) == ["reward:runs/a,b"]
    assert split_specs("http:https://x.example/v1?tags=a,b,lmx", kinds) == ["http:https://x.example/v1?tags=a,b,lmx"]
    assert split_specs("gold:qa", kinds) == ["gold:qa"]


# ---------------------------------------------------------------- the built-in gold rules as reward functions


@pytest.mark.parametrize("task", ["qa", "constraints", "tone"])
def test_builtin_reward_functions_are_the_tasks_gold_rules(task, monkeypatch):
    from prefopt import tasks

    # a stand-in rule whose scores identify the (prompt, response) each was asked about
    monkeypatch.setattr(type(tasks.get_task(task)), "gold", lambda self, prompt, response: len(prompt) + 0.5 * len(response))
    prompts = [[{"role": "user", "content": "abc"}], "defgh"]
    assert make_judge(f"python:prefopt.tasks.rewards:{task}").score(prompts, ["xy", ""]) == [3 + 1.0, 5 + 0.0]


def test_the_qa_reward_function_scores_the_builtin_pairs_as_the_gold_judge():
    from prefopt.tasks import load_dataset

    records = load_dataset("builtin:qa", "paired")[:6]
    prompts = [r.prompt for r in records] * 2  # chat messages, as a training loop passes them
    replies = [r.chosen for r in records] + [r.rejected for r in records]
    as_function = make_judge("python:prefopt.tasks.rewards:qa").score(prompts, replies)
    assert as_function == make_judge("gold:qa").score(prompts, replies)
    assert sum(as_function[:6]) > sum(as_function[6:])  # chosen above rejected: real scores, not a constant


def test_builtin_reward_function_takes_trl_conversational_completions():
    from prefopt.tasks.rewards import qa

    prompt = [{"role": "user", "content": "What is 26 + 47?"}]
    chat = [[{"role": "assistant", "content": "26 + 47 = 73."}], [{"role": "assistant", "content": "73"}]]
    assert qa([prompt, prompt], chat) == qa(["What is 26 + 47?"] * 2, ["26 + 47 = 73.", "73"]) == [1.0, -0.5]
