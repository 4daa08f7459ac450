from dataclasses import dataclass
from typing import Literal

import pytest

from prefopt.errors import PrefoptError
from prefopt.training.config import RunConfig, coerce, parse_overrides, read_yaml, split_options


@dataclass
class AlgoConfig:
    beta: float = 0.1
    name: str = "x"


def test_overrides_are_typed_yaml_scalars():
    assert parse_overrides(["lr=0.5", "merge=true", "steps=3", "model=a/b"]) == {
        "lr": 0.5, "merge": True, "steps": 3, "model": "a/b"}


def test_exponent_without_dot_is_read_as_float():
    """YAML 1.1 reads 1e-4 as a string; float options still accept it."""
    run, _ = split_options(parse_overrides(["lr=1e-4"]), AlgoConfig, "options")
    assert run.lr == 1e-4


def test_routing_and_types():
    run, algo = split_options({"steps": 3, "beta": 1, "adapter": "full"}, AlgoConfig, "options")
    assert run.steps == 3 and run.adapter == "full"
    assert algo.beta == 1.0 and isinstance(algo.beta, float)  # int widened to float


@pytest.mark.parametrize(
    "values, message",
    [
        ({"stpes": 3}, "unknown option 'stpes'; did you mean 'steps'"),
        ({"steps": "ten"}, "option 'steps': expected int, got 'ten'"),
        ({"steps": 2.5}, "option 'steps': expected int"),
        ({"merge": "yes"}, "option 'merge': expected bool"),
        ({"adapter": "dora"}, "option 'adapter': expected one of 'lora', 'qlora', 'full'"),
        ({"beta": True}, "option 'beta': expected float"),
    ],
)
def test_bad_options_name_the_key(values, message):
    with pytest.raises(PrefoptError, match=message):
        split_options(values, AlgoConfig, "options")


def test_clash_between_algorithm_and_run_options_is_an_error():
    @dataclass
    class Clashing:
        lr: float = 1.0

    with pytest.raises(PrefoptError, match="clash"):
        split_options({}, Clashing, "options")


def test_literal_and_list_coercion():
    assert coerce("a", Literal["a", "b"], "k") == "a"
    assert coerce("x, y", list[str], "k") == ["x", "y"]


def test_yaml_errors(tmp_path):
    with pytest.raises(PrefoptError, match="does not exist"):
        read_yaml(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(PrefoptError, match="expected a mapping"):
        read_yaml(str(bad))


def test_defaults_are_a_complete_config():
    assert RunConfig().model == "smollm2-135m-instruct"
    assert RunConfig().data == "builtin:qa"


def test_option_help_is_read_from_the_field_comments():
    from prefopt.training.config import describe_options

    rows = {name: (default, comment) for name, default, comment in describe_options(RunConfig)}
    assert rows["steps"] == ("60", "optimizer steps")
    assert rows["model"][0] == "'smollm2-135m-instruct'"
    assert all(comment for _, comment in rows.values())  # every run option is documented
