"""Fuzz tests: untrusted data files and options give records / a RunConfig, or one PrefoptError; never another
exception. Hypothesis runs a fixed, derandomized budget per test, so CI time is bounded and runs are repeatable."""

from __future__ import annotations

import json
import math

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")  # the `test` extra installs it

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefopt.core import registry
from prefopt.data import KINDS, load_records, tokenize_pairs, tokenize_prompts, tokenize_unpaired
from prefopt.data.records import PreferenceRecord, PromptRecord, UnpairedRecord
from prefopt.errors import PrefoptError
from prefopt.training.config import SEED_MAX, RunConfig, parse_overrides, read_yaml, split_options

BUDGET = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KNOWN_COLUMNS = ["prompt", "chosen", "rejected", "completion", "label"]
ROLES = ["user", "assistant", "system", "", " ", "tool", "Human"]

# ---------------------------------------------------------------- data loader

# text as JSON can spell it: \ud800 escapes (unpaired surrogates), control characters, NUL
odd_text = st.text(st.characters(categories=("Cs", "Cc", "Zs", "Ll", "Lo")), max_size=12)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    odd_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.one_of(st.sampled_from(ROLES), json_values),
        "content": st.one_of(st.text(max_size=30), odd_text,
                             st.sampled_from(["", "  ", "\n\nHuman: hi\n\nAssistant: yo"]), json_values),
        "name": st.text(max_size=5),
    },
)
messages = st.lists(st.one_of(message, json_values), max_size=4)
hh_text = st.lists(
    st.tuples(st.sampled_from(["\n\nHuman:", "\n\nAssistant:", "Human:", ""]), st.text(max_size=12)), max_size=4
).map(lambda parts: "".join(marker + text for marker, text in parts))
labels = st.sampled_from(["true", "false", "0", "1", 0, 1, 2.5, True, False])
field_values = st.one_of(st.text(max_size=40), odd_text, hh_text, messages, json_values, labels)
any_row = st.dictionaries(
    st.one_of(st.sampled_from(KNOWN_COLUMNS + ["Prompt", "promt", "rejcted", "lable", "id"]), st.text(max_size=8)),
    field_values, max_size=6,
)
# rows of a real format whose values are mostly well formed, so that the later checks (and tokenising) are reached
plain = st.one_of(st.text(min_size=1, max_size=20), odd_text.filter(str.strip))
turns = st.lists(st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": plain}), min_size=1, max_size=3)
text_or_turns = st.one_of(plain, plain, hh_text, turns)
formats = st.one_of(
    st.fixed_dictionaries({"prompt": text_or_turns, "chosen": text_or_turns, "rejected": text_or_turns}),
    st.fixed_dictionaries({"chosen": text_or_turns, "rejected": text_or_turns}),
    st.fixed_dictionaries({"prompt": text_or_turns, "completion": text_or_turns, "label": labels}),
    st.fixed_dictionaries({"prompt": text_or_turns, "completion": text_or_turns}),
    st.fixed_dictionaries({"prompt": text_or_turns}),
)
rows = st.one_of(st.lists(any_row, max_size=6), formats.flatmap(lambda row: st.lists(st.just(row), min_size=1,
                                                                                     max_size=3)))


def _tokenize_all(records: list, tokenizer) -> None:
    """The records of any kind through the tokenisation rules: PrefoptError or token ids, nothing else."""
    if not records:
        return
    if isinstance(records[0], PreferenceRecord):
        tokenize_pairs(records, tokenizer, max_length=64, max_prompt_length=48, source="f")
    elif isinstance(records[0], UnpairedRecord):
        tokenize_unpaired(records, tokenizer, max_length=64, max_prompt_length=48, source="f")
    else:
        assert isinstance(records[0], PromptRecord)
        tokenize_prompts(records, tokenizer, max_length=64, max_prompt_length=48, source="f")


def _load_or_error(path, kind, tokenizer=None):
    try:
        records = load_records(str(path), kind)
    except PrefoptError as e:
        assert "\n" not in str(e)
        return None
    assert isinstance(records, list)
    if tokenizer is not None:
        try:
            _tokenize_all(records, tokenizer)
        except PrefoptError as e:
            assert "\n" not in str(e)
    return records


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@BUDGET
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json"]), kind=st.sampled_from(KINDS))
def test_arbitrary_bytes_as_a_data_file(fuzz_dir, data, suffix, kind):
    path = fuzz_dir / f"bytes{suffix}"
    path.write_bytes(data)
    _load_or_error(path, kind)


@BUDGET
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b"\\u", b"d800", b":", b",", b"\n", b"\xff",
                                  b"\xef\xbb\xbf", b"\x00", b"1e999", b"-", b"0", b'"prompt"', b'"chosen"',
                                  b'"rejected"', b"null", b"true"]),
                 max_size=60).map(b"".join),
    ),
    kind=st.sampled_from(KINDS),
)
def test_json_like_bytes_as_a_data_file(fuzz_dir, data, kind):
    """Bytes built from JSON's own tokens reach the parser's deeper paths more often than random bytes."""
    path = fuzz_dir / "tokens.jsonl"
    path.write_bytes(data)
    _load_or_error(path, kind)


@BUDGET
@given(rows=rows, as_list=st.booleans(), kind=st.sampled_from(KINDS))
def test_arbitrary_rows(fuzz_dir, tiny_tokenizer, rows, as_list, kind):
    """Any JSON rows (known and unknown columns, nested values, wrong types) -> records (which tokenise) or one
    PrefoptError."""
    if as_list:
        path = fuzz_dir / "rows.json"
        path.write_text(json.dumps(rows))
    else:
        path = fuzz_dir / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = _load_or_error(path, kind, tiny_tokenizer)
    if records is not None and kind == "native":
        assert len(records) == len(rows)


# ---------------------------------------------------------------- options

RUN_KEYS = list(RunConfig.__dataclass_fields__)
ALGOS = {name: registry.get(name).Config for name in ("dpo", "kto", "ppo", "robust-dpo", "simpo", "sft")}
TRICKY_VALUES = [
    "0", "-1", "1", "2", "0.5", "1.0", "-0.0", "inf", "-inf", ".inf", "nan", ".nan", "1e999", "1e-4", "1e30", "true",
    "false", "null", "~", "", " ", "[1, 2]", "{a: 1}", "[[[[", "]]", "!!binary aGk=", "!!python/object:os.system",
    "2001-12-14", "0x10", "0o7", "1_000", "1:20", "'quoted'", "a,b", "lora", "full", "cosine", "k3",
    "9" * 5000, "[" * 2000, "&a [*a]", "*a", "- x", "? x", "%YAML", "\x00", "\ud800",
]
values = st.one_of(st.sampled_from(TRICKY_VALUES), st.text(max_size=12),
                   st.integers().map(str), st.floats().map(str))
keys = st.one_of(st.sampled_from(RUN_KEYS + ["beta", "judge", "kl_target", "stpes", "algo"]), st.text(max_size=8))
pairs = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, values), st.text(max_size=12)), max_size=5
)


def _check_run(run: RunConfig) -> None:
    """A RunConfig that came back holds options inside their ranges."""
    assert run.steps >= 1 and run.batch_size >= 1 and run.grad_accum >= 1
    assert run.eval_size >= 0 and run.eval_every >= 0 and run.save_every >= 0
    assert 0 <= run.warmup_ratio <= 1 and 0 <= run.lora_dropout < 1
    assert math.isfinite(run.lr) and run.lr >= 0
    assert math.isfinite(run.weight_decay) and run.weight_decay >= 0
    assert math.isfinite(run.max_grad_norm) and run.max_grad_norm >= 0
    assert run.max_length >= 2 and run.max_prompt_length >= 1
    assert run.lora_r >= 1 and run.lora_alpha >= 1 and 0 <= run.seed <= SEED_MAX


def _options_or_error(values_: dict, algo: str) -> None:
    try:
        run, _ = split_options(values_, ALGOS[algo], "options")
    except PrefoptError as e:
        assert "\n" not in str(e)
        return
    _check_run(run)


def _config_file_or_error(path, algo: str) -> None:
    try:
        loaded = read_yaml(str(path))
    except PrefoptError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(loaded, dict)
    _options_or_error(loaded, algo)


@BUDGET
@given(pairs=pairs, algo=st.sampled_from(sorted(ALGOS)))
def test_arbitrary_key_value_options(pairs, algo):
    try:
        parsed = parse_overrides(pairs)
    except PrefoptError:
        return
    _options_or_error(parsed, algo)


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.sampled_from(TRICKY_VALUES)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
yaml_keys = st.one_of(keys, st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False))


@BUDGET
@given(mapping=st.dictionaries(yaml_keys, yaml_values, max_size=6), algo=st.sampled_from(sorted(ALGOS)))
def test_arbitrary_yaml_config_files(fuzz_dir, mapping, algo):
    path = fuzz_dir / "config.yaml"
    path.write_text(yaml.safe_dump(mapping, allow_unicode=True), encoding="utf-8")
    _config_file_or_error(path, algo)


@BUDGET
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.lists(st.sampled_from(TRICKY_VALUES[:-2] + ["steps: ", "lr: ", "\n", "  ", ": ", "- "]), max_size=20)
        .map(lambda parts: "".join(parts).encode("utf-8")),
    ),
    algo=st.sampled_from(sorted(ALGOS)),
)
def test_arbitrary_bytes_as_a_config_file(fuzz_dir, data, algo):
    path = fuzz_dir / "bytes.yaml"
    path.write_bytes(data)
    _config_file_or_error(path, algo)
