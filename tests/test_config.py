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


# ---------------------------------------------------------------- ranges (checked when a RunConfig is made)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("steps", "0", "option 'steps': must be >= 1, got 0"),
        ("steps", "-3", "option 'steps': must be >= 1, got -3"),
        ("batch_size", "0", "option 'batch_size': must be >= 1, got 0"),
        ("batch_size", "-1", "option 'batch_size': must be >= 1, got -1"),
        ("grad_accum", "0", "option 'grad_accum': must be >= 1, got 0"),
        ("eval_size", "-1", "option 'eval_size': must be >= 0, got -1"),
        ("eval_every", "-1", "option 'eval_every': must be >= 0, got -1"),
        ("save_every", "-1", "option 'save_every': must be >= 0, got -1"),
        ("warmup_ratio", "-5", r"option 'warmup_ratio': must be in \[0, 1\], got -5.0"),
        ("warmup_ratio", "1.5", r"option 'warmup_ratio': must be in \[0, 1\], got 1.5"),
        ("lr", "inf", "option 'lr': must be a finite number, got inf"),
        ("lr", "1e999", "option 'lr': must be a finite number, got inf"),
        ("lr", "-1e-4", "option 'lr': must be >= 0, got -0.0001"),
        ("weight_decay", "-0.1", "option 'weight_decay': must be >= 0, got -0.1"),
        ("weight_decay", ".inf", "option 'weight_decay': must be a finite number, got inf"),
        ("max_grad_norm", "-1", "option 'max_grad_norm': must be >= 0, got -1.0"),
        ("max_grad_norm", "-inf", "option 'max_grad_norm': must be a finite number, got -inf"),
        ("max_length", "1", "option 'max_length': must be >= 2, got 1"),
        ("max_prompt_length", "0", "option 'max_prompt_length': must be >= 1, got 0"),
        ("lora_r", "0", "option 'lora_r': must be >= 1, got 0"),
        ("lora_alpha", "0", "option 'lora_alpha': must be >= 1, got 0"),
        ("lora_dropout", "1", r"option 'lora_dropout': must be in \[0, 1\), got 1.0"),
        ("lora_dropout", "-0.1", r"option 'lora_dropout': must be in \[0, 1\), got -0.1"),
        ("seed", "-1", r"option 'seed': must be in \[0, 4294967295\], got -1"),
        ("seed", str(2**64), r"option 'seed': must be in \[0, 4294967295\], got 18446744073709551616"),
        ("lr", "nan", "option 'lr': expected a number, got 'nan'"),
    ],
)
def test_out_of_range_options_name_the_option(option, value, message):
    with pytest.raises(PrefoptError, match=f"^{message}$"):
        split_options(parse_overrides([f"{option}={value}"]), AlgoConfig, "options")


def test_range_checks_run_whenever_a_run_config_is_made():
    with pytest.raises(PrefoptError, match=r"^option 'steps': must be >= 1, got 0$"):
        RunConfig(steps=0)


@pytest.mark.parametrize(
    "pairs",
    [
        ["steps=1", "batch_size=1", "grad_accum=1", "eval_size=0", "eval_every=0", "save_every=0"],
        ["warmup_ratio=0", "warmup_ratio=1", "lr=0", "weight_decay=0", "max_grad_norm=0", "lora_dropout=0"],
        ["max_length=2", "max_prompt_length=1", "lora_r=1", "lora_alpha=1", "seed=0", "lora_dropout=0.99"],
        ["max_length=64"],  # the default max_prompt_length=128 is more than it: the prompt budget is max_length - 1
        [f"seed={2**32 - 1}", "lr=1e30", "steps=1000000000"],
    ],
)
def test_boundary_values_are_accepted(pairs):
    run, _ = split_options(parse_overrides(pairs), AlgoConfig, "options")
    assert isinstance(run, RunConfig)


def test_huge_numbers_are_one_line_errors():
    digits = "9" * 5000  # past Python's int-from-string digit limit: YAML's int() raises ValueError
    with pytest.raises(PrefoptError, match=r"^option 'steps': expected int, got '9+\.\.\.9+'$"):
        split_options(parse_overrides([f"steps={digits}"]), AlgoConfig, "options")
    with pytest.raises(PrefoptError, match=r"^option 'beta': number too large"):
        split_options({"beta": 10**400}, AlgoConfig, "options")


def test_non_string_and_long_option_names(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("1: 2\n")
    with pytest.raises(PrefoptError, match=r"^c\.yaml: unknown option 1 \(option names are words\)$"):
        split_options(read_yaml(str(config)), AlgoConfig, "c.yaml")
    with pytest.raises(PrefoptError, match=r"^options: unknown option 'xxxx+\.\.\.'$"):
        split_options({"x" * 10_000: 1}, AlgoConfig, "options")


def test_config_file_not_utf8(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"steps: 3\nmodel: caf\xe9\n")
    with pytest.raises(PrefoptError, match=r"^config file '.*bad\.yaml' line 2: not valid UTF-8 text \(byte 0xe9\); "
                                           r"save it as UTF-8$"):
        read_yaml(str(bad))


def test_config_file_utf16_is_refused_and_utf8_bom_is_read(tmp_path):
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("steps: 3\n".encode("utf-16"))  # with a byte-order mark
    with pytest.raises(PrefoptError, match=r"utf16\.yaml': UTF-16 or UTF-32 text .*save it as UTF-8$"):
        read_yaml(str(utf16))
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbfsteps: 3\n")
    assert read_yaml(str(bom)) == {"steps": 3}


FLOW_NESTING = "steps: " + "[" * 200_000
BLOCK_NESTING = "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 3000))


@pytest.mark.parametrize("text", [FLOW_NESTING, BLOCK_NESTING], ids=["flow", "block"])
def test_config_file_nested_too_deeply(tmp_path, text):
    """Flow nesting ([[[[...) is refused before PyYAML's scanner, which slows with its square, reads it; block
    nesting ends in a RecursionError inside PyYAML."""
    deep = tmp_path / "deep.yaml"
    deep.write_text(text)
    with pytest.raises(PrefoptError, match=r"^config file '.*deep\.yaml': YAML nested too deeply"):
        read_yaml(str(deep))


def test_deep_override_value_is_kept_as_text():
    (value,) = parse_overrides(["model=" + "[" * 200_000]).values()
    assert value == "[" * 200_000


def test_yaml_alias_bomb_error_is_short(tmp_path):
    """A few lines of aliases make a list with 9**12 items; the error shows a bounded sketch of it."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 13)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nsteps: *a12\n")
    values = {k: v for k, v in read_yaml(str(bomb)).items() if k == "steps"}
    with pytest.raises(PrefoptError, match=r"^option 'steps': expected int, got \[\[") as info:
        split_options(values, AlgoConfig, "options")
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("value", ["5", "[dpo]", "{a: 1}", "true"])
def test_config_file_algo_must_be_a_name(tmp_path, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"algo: {value}\n")
    with pytest.raises(PrefoptError, match=r"c\.yaml': 'algo' must be an algorithm name, got "):
        read_yaml(str(config))
