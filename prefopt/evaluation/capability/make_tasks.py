"""Generate the two built-in capability tasks (deterministic; rerun to rebuild).

    python -m prefopt.evaluation.capability.make_tasks

writes ``prefopt_arith.jsonl`` and ``prefopt_world.jsonl`` next to this file.
Each line is ``{"question": str, "choices": [4 str], "label": int}`` with
exactly one correct choice at index ``label``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1234
N_ARITH = 60

# (question, correct answer, three wrong answers)
WORLD: list[tuple[str, str, list[str]]] = [
    # capitals
    ("What is the capital of France?", "Paris", ["Lyon", "Marseille", "Nice"]),
    ("What is the capital of Japan?", "Tokyo", ["Osaka", "Kyoto", "Nagoya"]),
    ("What is the capital of Italy?", "Rome", ["Milan", "Naples", "Turin"]),
    ("What is the capital of Germany?", "Berlin", ["Munich", "Hamburg", "Frankfurt"]),
    ("What is the capital of Spain?", "Madrid", ["Barcelona", "Seville", "Valencia"]),
    ("What is the capital of Canada?", "Ottawa", ["Toronto", "Vancouver", "Montreal"]),
    ("What is the capital of Australia?", "Canberra", ["Sydney", "Melbourne", "Perth"]),
    ("What is the capital of Egypt?", "Cairo", ["Alexandria", "Giza", "Luxor"]),
    ("What is the capital of Russia?", "Moscow", ["Saint Petersburg", "Kazan", "Novosibirsk"]),
    ("What is the capital of China?", "Beijing", ["Shanghai", "Shenzhen", "Guangzhou"]),
    ("What is the capital of the United Kingdom?", "London", ["Manchester", "Liverpool", "Leeds"]),
    ("What is the capital of Greece?", "Athens", ["Thessaloniki", "Sparta", "Patras"]),
    ("What is the capital of Portugal?", "Lisbon", ["Porto", "Braga", "Faro"]),
    ("What is the capital of Kenya?", "Nairobi", ["Mombasa", "Kisumu", "Nakuru"]),
    ("What is the capital of Brazil?", "Brasilia", ["Rio de Janeiro", "Sao Paulo", "Salvador"]),
    # animal legs
    ("How many legs does a spider have?", "8", ["6", "4", "10"]),
    ("How many legs does an insect have?", "6", ["8", "4", "2"]),
    ("How many legs does a dog have?", "4", ["2", "6", "8"]),
    ("How many legs does a chicken have?", "2", ["4", "6", "3"]),
    ("How many legs does a horse have?", "4", ["2", "6", "3"]),
    ("How many legs does an ant have?", "6", ["4", "8", "10"]),
    ("How many legs does a snake have?", "0", ["2", "4", "6"]),
    ("How many legs does a duck have?", "2", ["4", "0", "6"]),
    # units
    ("How many centimetres are in a metre?", "100", ["10", "1000", "60"]),
    ("How many metres are in a kilometre?", "1000", ["100", "10", "10000"]),
    ("How many grams are in a kilogram?", "1000", ["100", "10", "500"]),
    ("How many minutes are in an hour?", "60", ["100", "30", "24"]),
    ("How many seconds are in a minute?", "60", ["100", "30", "10"]),
    ("How many hours are in a day?", "24", ["12", "60", "48"]),
    ("How many days are in a week?", "7", ["5", "10", "6"]),
    ("How many months are in a year?", "12", ["10", "6", "24"]),
    ("How many millilitres are in a litre?", "1000", ["100", "10", "500"]),
    ("How many days are in a leap year?", "366", ["365", "364", "360"]),
    # opposites
    ("What is the opposite of hot?", "cold", ["warm", "wet", "big"]),
    ("What is the opposite of up?", "down", ["over", "high", "left"]),
    ("What is the opposite of big?", "small", ["large", "tall", "wide"]),
    ("What is the opposite of happy?", "sad", ["glad", "funny", "calm"]),
    ("What is the opposite of fast?", "slow", ["quick", "loud", "late"]),
    ("What is the opposite of open?", "closed", ["empty", "wide", "free"]),
    ("What is the opposite of day?", "night", ["noon", "week", "morning"]),
    ("What is the opposite of left?", "right", ["down", "back", "north"]),
    ("What is the opposite of old?", "young", ["ancient", "tall", "slow"]),
    ("What is the opposite of full?", "empty", ["heavy", "whole", "round"]),
    ("What is the opposite of light?", "dark", ["bright", "soft", "white"]),
    ("What is the opposite of yes?", "no", ["maybe", "sure", "okay"]),
    # colours
    ("What colour is the sky on a clear day?", "blue", ["green", "red", "brown"]),
    ("What colour is grass?", "green", ["blue", "purple", "orange"]),
    ("What colour is snow?", "white", ["black", "green", "red"]),
    ("What colour is a ripe banana?", "yellow", ["blue", "purple", "black"]),
    ("What colour is coal?", "black", ["white", "yellow", "pink"]),
    ("What colour is a ripe tomato?", "red", ["blue", "white", "black"]),
    ("What colour do you get by mixing blue and yellow?", "green", ["red", "orange", "purple"]),
    ("What colour do you get by mixing red and white?", "pink", ["green", "blue", "black"]),
    ("What colour is an orange?", "orange", ["blue", "purple", "grey"]),
    # misc
    ("Which planet do we live on?", "Earth", ["Mars", "Venus", "Jupiter"]),
    ("What do bees make?", "honey", ["milk", "silk", "wool"]),
    ("At what temperature in Celsius does water freeze?", "0", ["100", "10", "-50"]),
    ("At what temperature in Celsius does water boil?", "100", ["0", "50", "200"]),
    ("Which animal is known as the king of the jungle?", "lion", ["mouse", "rabbit", "sheep"]),
    ("How many sides does a triangle have?", "3", ["4", "5", "6"]),
]


def _record(rng: random.Random, question: str, answer: str, wrong: list[str]) -> dict:
    choices = [answer, *wrong]
    assert len(choices) == 4 and len(set(choices)) == 4, question
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "label": choices.index(answer)}


def arith_records(n: int = N_ARITH, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    records: list[dict] = []
    seen: set[str] = set()
    ops = ["+", "-", "times"]
    while len(records) < n:
        op = ops[len(records) % len(ops)]
        if op == "+":
            a, b = rng.randint(10, 60), rng.randint(10, 40)
            answer = a + b
            question = f"What is {a} + {b}?"
        elif op == "-":
            a = rng.randint(30, 99)
            b = rng.randint(5, a - 5)
            answer = a - b
            question = f"What is {a} - {b}?"
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            answer = a * b
            question = f"What is {a} times {b}?"
        if question in seen:
            continue
        seen.add(question)
        # near misses: off by one, off by ten, a swapped digit...
        pool = {answer + d for d in (-10, -2, -1, 1, 2, 10)} | {int(str(answer)[::-1])}
        pool = sorted(x for x in pool if x > 0 and x != answer)
        wrong = [str(x) for x in rng.sample(pool, 3)]
        records.append(_record(rng, question, str(answer), wrong))
    return records


def world_records(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed + 1)
    return [_record(rng, q, a, list(w)) for q, a, w in WORLD]


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def main() -> None:
    write_jsonl(HERE / "prefopt_arith.jsonl", arith_records())
    write_jsonl(HERE / "prefopt_world.jsonl", world_records())


if __name__ == "__main__":
    main()
