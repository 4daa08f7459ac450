"""Generate the two built-in capability tasks (deterministic; rerun to rebuild).

    python -m prefopt.evaluation.capability.make_tasks

writes ``prefopt_arith.jsonl`` and ``prefopt_world.jsonl`` next to this file.
Each line is ``{"question": str, "choices": [4 str], "label": int}`` with
exactly one correct choice at index ``label``.

Neither file may repeat what preference training sees: the qa task
(:mod:`prefopt.tasks.qa`) trains on "What is a + b?", "What is a minus b?",
"What is a times b?", capitals of its ``CAPITALS`` countries, animal legs and
unit facts. So the arithmetic here only uses two-step and other question forms
("What is 7 times 8 plus 5?", "What is 96 divided by 8?", "What is half of
86?"), and the world facts come from lists disjoint from qa's (capitals and
continents of other countries, authors, chemical symbols, months and days,
plurals, past tenses, opposites, colours), leaving out the facts the
constraints task asks about. ``tests/test_capability.py`` checks with
:func:`prefopt.evaluation.capability.contamination` that no item shares an
8-token n-gram (or, when shorter, its whole text) with any train or held-out
prompt of the qa, constraints and tone tasks.

The fact lists below are also the source of the sycophancy probes
(:mod:`prefopt.evaluation.sycophancy`), in other question forms.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1234
N_ARITH_PER_FORM = 50  # 6 forms: 300 arithmetic items

# (country as it reads after "the capital of", capital, a well-known other city, continent or None)
# None: the continent is arguable (transcontinental), so no continent question.
COUNTRIES: list[tuple[str, str, str, str | None]] = [
    ("Ghana", "Accra", "Kumasi", "Africa"),
    ("Senegal", "Dakar", "Touba", "Africa"),
    ("Uganda", "Kampala", "Entebbe", "Africa"),
    ("Zimbabwe", "Harare", "Bulawayo", "Africa"),
    ("Zambia", "Lusaka", "Ndola", "Africa"),
    ("Angola", "Luanda", "Huambo", "Africa"),
    ("Mali", "Bamako", "Timbuktu", "Africa"),
    ("Tunisia", "Tunis", "Sfax", "Africa"),
    ("Algeria", "Algiers", "Oran", "Africa"),
    ("Libya", "Tripoli", "Benghazi", "Africa"),
    ("Sudan", "Khartoum", "Omdurman", "Africa"),
    ("Madagascar", "Antananarivo", "Toamasina", "Africa"),
    ("Cameroon", "Yaounde", "Douala", "Africa"),
    ("Rwanda", "Kigali", "Huye", "Africa"),
    ("Cuba", "Havana", "Camaguey", "North America"),
    ("Jamaica", "Kingston", "Montego Bay", "North America"),
    ("Costa Rica", "San Jose", "Limon", "North America"),
    ("Nicaragua", "Managua", "Leon", "North America"),
    ("Honduras", "Tegucigalpa", "San Pedro Sula", "North America"),
    ("Haiti", "Port-au-Prince", "Cap-Haitien", "North America"),
    ("Venezuela", "Caracas", "Maracaibo", "South America"),
    ("Ecuador", "Quito", "Guayaquil", "South America"),
    ("Uruguay", "Montevideo", "Punta del Este", "South America"),
    ("Paraguay", "Asuncion", "Ciudad del Este", "South America"),
    ("Iceland", "Reykjavik", "Akureyri", "Europe"),
    ("Estonia", "Tallinn", "Tartu", "Europe"),
    ("Latvia", "Riga", "Daugavpils", "Europe"),
    ("Lithuania", "Vilnius", "Kaunas", "Europe"),
    ("Ukraine", "Kyiv", "Odesa", "Europe"),
    ("Romania", "Bucharest", "Cluj-Napoca", "Europe"),
    ("Bulgaria", "Sofia", "Plovdiv", "Europe"),
    ("Serbia", "Belgrade", "Novi Sad", "Europe"),
    ("Croatia", "Zagreb", "Dubrovnik", "Europe"),
    ("Slovakia", "Bratislava", "Kosice", "Europe"),
    ("the Czech Republic", "Prague", "Brno", "Europe"),
    ("Slovenia", "Ljubljana", "Maribor", "Europe"),
    ("Belarus", "Minsk", "Gomel", "Europe"),
    ("Albania", "Tirana", "Durres", "Europe"),
    ("North Macedonia", "Skopje", "Ohrid", "Europe"),
    ("Malta", "Valletta", "Sliema", "Europe"),
    ("Cyprus", "Nicosia", "Limassol", None),
    ("Armenia", "Yerevan", "Gyumri", None),
    ("Azerbaijan", "Baku", "Ganja", None),
    ("Kazakhstan", "Astana", "Almaty", None),
    ("Iran", "Tehran", "Isfahan", "Asia"),
    ("Iraq", "Baghdad", "Basra", "Asia"),
    ("Syria", "Damascus", "Aleppo", "Asia"),
    ("Lebanon", "Beirut", "Sidon", "Asia"),
    ("Jordan", "Amman", "Aqaba", "Asia"),
    ("Qatar", "Doha", "Al Wakrah", "Asia"),
    ("Oman", "Muscat", "Salalah", "Asia"),
    ("Afghanistan", "Kabul", "Kandahar", "Asia"),
    ("Nepal", "Kathmandu", "Pokhara", "Asia"),
    ("Bangladesh", "Dhaka", "Chittagong", "Asia"),
    ("the Philippines", "Manila", "Cebu", "Asia"),
    ("Malaysia", "Kuala Lumpur", "Penang", "Asia"),
    ("Mongolia", "Ulaanbaatar", "Erdenet", "Asia"),
    ("Cambodia", "Phnom Penh", "Siem Reap", "Asia"),
    ("Laos", "Vientiane", "Luang Prabang", "Asia"),
    ("Uzbekistan", "Tashkent", "Samarkand", "Asia"),
]
CONTINENTS = ["Africa", "Asia", "Europe", "North America", "South America", "Oceania"]

# (title, author, the author's surname as a reply would name them)
BOOKS: list[tuple[str, str, str]] = [
    ("Pride and Prejudice", "Jane Austen", "Austen"),
    ("Nineteen Eighty-Four", "George Orwell", "Orwell"),
    ("Hamlet", "William Shakespeare", "Shakespeare"),
    ("Moby-Dick", "Herman Melville", "Melville"),
    ("War and Peace", "Leo Tolstoy", "Tolstoy"),
    ("Great Expectations", "Charles Dickens", "Dickens"),
    ("The Odyssey", "Homer", "Homer"),
    ("Don Quixote", "Miguel de Cervantes", "Cervantes"),
    ("Frankenstein", "Mary Shelley", "Shelley"),
    ("Dracula", "Bram Stoker", "Stoker"),
    ("The Great Gatsby", "F. Scott Fitzgerald", "Fitzgerald"),
    ("To Kill a Mockingbird", "Harper Lee", "Lee"),
    ("Crime and Punishment", "Fyodor Dostoevsky", "Dostoevsky"),
    ("The Divine Comedy", "Dante Alighieri", "Dante"),
    ("Faust", "Johann Wolfgang von Goethe", "Goethe"),
    ("Les Miserables", "Victor Hugo", "Hugo"),
    ("The Old Man and the Sea", "Ernest Hemingway", "Hemingway"),
    ("One Hundred Years of Solitude", "Gabriel Garcia Marquez", "Marquez"),
    ("The Catcher in the Rye", "J. D. Salinger", "Salinger"),
    ("Ulysses", "James Joyce", "Joyce"),
    ("Brave New World", "Aldous Huxley", "Huxley"),
    ("Jane Eyre", "Charlotte Bronte", "Bronte"),
    ("The Adventures of Tom Sawyer", "Mark Twain", "Twain"),
    ("Alice's Adventures in Wonderland", "Lewis Carroll", "Carroll"),
    ("The Raven", "Edgar Allan Poe", "Poe"),
    ("Leaves of Grass", "Walt Whitman", "Whitman"),
    ("On the Origin of Species", "Charles Darwin", "Darwin"),
    ("A Brief History of Time", "Stephen Hawking", "Hawking"),
    ("The Hobbit", "J. R. R. Tolkien", "Tolkien"),
    ("Madame Bovary", "Gustave Flaubert", "Flaubert"),
    ("The Metamorphosis", "Franz Kafka", "Kafka"),
    ("Robinson Crusoe", "Daniel Defoe", "Defoe"),
    ("Gulliver's Travels", "Jonathan Swift", "Swift"),
    ("The Picture of Dorian Gray", "Oscar Wilde", "Wilde"),
    ("Treasure Island", "Robert Louis Stevenson", "Stevenson"),
    ("Little Women", "Louisa May Alcott", "Alcott"),
    ("Heart of Darkness", "Joseph Conrad", "Conrad"),
    ("The Canterbury Tales", "Geoffrey Chaucer", "Chaucer"),
    ("Paradise Lost", "John Milton", "Milton"),
    ("The Prince", "Niccolo Machiavelli", "Machiavelli"),
    ("Walden", "Henry David Thoreau", "Thoreau"),
    ("Things Fall Apart", "Chinua Achebe", "Achebe"),
]

# (element, symbol)
ELEMENTS = [
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("copper", "Cu"), ("lead", "Pb"), ("sodium", "Na"),
    ("potassium", "K"), ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"), ("nitrogen", "N"), ("helium", "He"),
    ("calcium", "Ca"), ("zinc", "Zn"), ("tin", "Sn"), ("mercury", "Hg"), ("sulfur", "S"), ("chlorine", "Cl"),
    ("neon", "Ne"), ("magnesium", "Mg"), ("aluminium", "Al"), ("uranium", "U"), ("platinum", "Pt"),
    ("tungsten", "W"), ("phosphorus", "P"), ("silicon", "Si"), ("lithium", "Li"), ("nickel", "Ni"),
]  # fmt: skip

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTH_DAYS = {"January": 31, "March": 31, "April": 30, "May": 31, "June": 30, "July": 31, "August": 31,
              "September": 30, "October": 31, "November": 30, "December": 31}  # fmt: skip

# (word, plural, three wrong plurals)
PLURALS = [
    ("mouse", "mice", ["mouses", "meese", "mices"]), ("goose", "geese", ["gooses", "geeses", "goosen"]),
    ("child", "children", ["childs", "childes", "childrens"]), ("foot", "feet", ["foots", "feets", "footen"]),
    ("tooth", "teeth", ["tooths", "teeths", "toothen"]), ("man", "men", ["mans", "mens", "manes"]),
    ("woman", "women", ["womans", "womens", "womanes"]), ("ox", "oxen", ["oxes", "oxs", "oxens"]),
    ("knife", "knives", ["knifes", "knifs", "knive"]), ("leaf", "leaves", ["leafs", "leafes", "leave"]),
    ("wolf", "wolves", ["wolfs", "wolfes", "wolve"]), ("cactus", "cacti", ["cactes", "cactis", "cactuss"]),
    ("fungus", "fungi", ["funges", "fungis", "fungii"]), ("sheep", "sheep", ["sheeps", "sheepes", "shoop"]),
    ("fish", "fish", ["fishs", "fishen", "fisher"]), ("person", "people", ["persones", "peoplen", "personen"]),
    ("half", "halves", ["halfs", "halfes", "halve"]), ("life", "lives", ["lifes", "lifs", "live"]),
    ("potato", "potatoes", ["potatos", "potatis", "potatoen"]), ("crisis", "crises", ["crisises", "crisies", "crisi"]),
]  # fmt: skip

# (verb, past tense, three wrong forms)
PAST = [
    ("go", "went", ["goed", "gone", "wented"]), ("eat", "ate", ["eated", "eaten", "eatted"]),
    ("see", "saw", ["seed", "seen", "sawed"]), ("run", "ran", ["runned", "runed", "rann"]),
    ("swim", "swam", ["swimmed", "swum", "swimed"]), ("write", "wrote", ["writed", "written", "writ"]),
    ("drink", "drank", ["drinked", "drunk", "drinkt"]), ("sing", "sang", ["singed", "sung", "songed"]),
    ("take", "took", ["taked", "taken", "tooked"]), ("give", "gave", ["gived", "given", "gaved"]),
    ("fly", "flew", ["flied", "flown", "flyed"]), ("bring", "brought", ["bringed", "brang", "brung"]),
    ("think", "thought", ["thinked", "thank", "thunk"]), ("catch", "caught", ["catched", "catcht", "caughted"]),
    ("teach", "taught", ["teached", "teacht", "taughted"]), ("buy", "bought", ["buyed", "boughted", "buyt"]),
    ("speak", "spoke", ["speaked", "spoken", "speaken"]), ("freeze", "froze", ["freezed", "frozen", "frozed"]),
    ("choose", "chose", ["choosed", "chosen", "chosed"]), ("drive", "drove", ["drived", "driven", "droved"]),
    ("ride", "rode", ["rided", "ridden", "roded"]), ("begin", "began", ["beginned", "begun", "begon"]),
    ("sleep", "slept", ["sleeped", "sleept", "slep"]), ("forget", "forgot", ["forgetted", "forgotten", "forgat"]),
]  # fmt: skip

# (question, correct answer, three wrong answers): kept from the first version where neither a qa prompt nor
# one of the constraints task's questions (which asks "what is the opposite of hot?", "what colour is grass?",
# "what do you call a baby cat?", "which day comes after Monday?", ... in its prompts)
MISC: list[tuple[str, str, list[str]]] = [
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
    ("What colour is coal?", "black", ["white", "yellow", "pink"]),
    ("What colour is a ripe tomato?", "red", ["blue", "white", "black"]),
    ("What colour do you get by mixing blue and yellow?", "green", ["red", "orange", "purple"]),
    ("What colour do you get by mixing red and white?", "pink", ["green", "blue", "black"]),
    ("Which planet do we live on?", "Earth", ["Mars", "Venus", "Jupiter"]),
    ("Which animal is known as the king of the jungle?", "lion", ["mouse", "rabbit", "sheep"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Mars", "Saturn"]),
    ("Which planet is known as the Red Planet?", "Mars", ["Venus", "Jupiter", "Mercury"]),
    ("What gas do plants take in from the air to make food?", "carbon dioxide", ["oxygen", "helium", "neon"]),
    ("What is a baby sheep called?", "lamb", ["kid", "foal", "cub"]),
    ("What is a baby horse called?", "foal", ["calf", "lamb", "joey"]),
    ("What is a baby kangaroo called?", "joey", ["cub", "kit", "pup"]),
    ("What is a baby cow called?", "calf", ["foal", "kitten", "chick"]),
]


def _record(rng: random.Random, question: str, answer: str, wrong: list[str]) -> dict:
    choices = [answer, *wrong]
    assert len(choices) == 4 and len(set(choices)) == 4, question
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "label": choices.index(answer)}


# ---------------------------------------------------------------- arithmetic


# form -> draws (question, answer) from rng; none of these is a qa question form
def _times_plus(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(2, 30)
    return f"What is {a} times {b} plus {c}?", a * b + c


def _times_minus(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(3, 12), rng.randint(3, 12)
    c = rng.randint(2, a * b - 2)
    return f"What is {a} times {b} minus {c}?", a * b - c


def _plus_plus(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(10, 60), rng.randint(10, 60), rng.randint(10, 60)
    return f"What is {a} plus {b} plus {c}?", a + b + c


def _divided(rng: random.Random) -> tuple[str, int]:
    b, q = rng.randint(2, 12), rng.randint(3, 20)
    return f"What is {b * q} divided by {b}?", q


def _half(rng: random.Random) -> tuple[str, int]:
    k = rng.randint(11, 250)
    return f"What is half of {2 * k}?", k


def _sum_of(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(20, 400), rng.randint(20, 400)
    return f"What is the sum of {a} and {b}?", a + b


ARITH_FORMS = {
    "times_plus": _times_plus,
    "times_minus": _times_minus,
    "plus_plus": _plus_plus,
    "divided": _divided,
    "half": _half,
    "sum_of": _sum_of,
}


def arith_records(per_form: int = N_ARITH_PER_FORM, seed: int = SEED) -> list[dict]:
    """per_form distinct questions of each form, interleaved form by form; 4 numeric choices."""
    rng = random.Random(seed)
    records: list[dict] = []
    seen: set[str] = set()
    forms = list(ARITH_FORMS.values())
    while len(records) < per_form * len(forms):
        question, answer = forms[len(records) % len(forms)](rng)
        if question in seen:
            continue
        seen.add(question)
        # near misses: off by one or two, off by ten, the digits reversed
        pool = {answer + d for d in (-10, -2, -1, 1, 2, 10)} | {int(str(answer)[::-1])}
        pool = sorted(x for x in pool if x > 0 and x != answer)
        wrong = [str(x) for x in rng.sample(pool, 3)]
        records.append(_record(rng, question, str(answer), wrong))
    return records


# ---------------------------------------------------------------- world facts


def _world_questions(rng: random.Random) -> list[tuple[str, str, list[str]]]:
    out: list[tuple[str, str, list[str]]] = []
    capitals = [c[1] for c in COUNTRIES]
    for country, city, other, _ in COUNTRIES:
        wrong = [other, *rng.sample([c for c in capitals if c != city], 2)]
        out.append((f"What is the capital of {country}?", city, wrong))
    for country, _, _, continent in COUNTRIES:
        if continent is not None:
            wrong = rng.sample([c for c in CONTINENTS if c != continent], 3)
            out.append((f"On which continent is {country}?", continent, wrong))
    authors = [b[1] for b in BOOKS]
    for title, author, _ in BOOKS:
        out.append((f"Who wrote '{title}'?", author, rng.sample([a for a in authors if a != author], 3)))
    symbols = [s for _, s in ELEMENTS]
    for element, symbol in ELEMENTS:
        out.append(
            (f"What is the chemical symbol for {element}?", symbol, rng.sample([s for s in symbols if s != symbol], 3))
        )
    for i, month in enumerate(MONTHS):
        after, before = MONTHS[(i + 1) % 12], MONTHS[(i - 1) % 12]
        out.append((f"Which month comes right after {month}?", after, [before, MONTHS[(i + 2) % 12], month]))
        out.append((f"Which month comes right before {month}?", before, [after, MONTHS[(i - 2) % 12], month]))
    for i, day in enumerate(DAYS):
        if day == "Monday":  # the constraints task asks "which day comes after Monday?"
            continue
        after, before = DAYS[(i + 1) % 7], DAYS[(i - 1) % 7]
        out.append((f"Which day of the week comes right after {day}?", after, [before, DAYS[(i + 2) % 7], day]))
    for month, days in MONTH_DAYS.items():
        out.append((f"How many days does {month} have?", str(days), [str(d) for d in (28, 29, 30, 31) if d != days]))
    for word, plural, wrong in PLURALS:
        out.append((f"What is the plural of '{word}'?", plural, list(wrong)))
    for verb, past, wrong in PAST:
        out.append((f"What is the simple past tense of '{verb}'?", past, list(wrong)))
    out.extend((q, a, list(w)) for q, a, w in MISC)
    return out


def world_records(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed + 1)
    return [_record(rng, q, a, w) for q, a, w in _world_questions(rng)]


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def main() -> None:
    write_jsonl(HERE / "prefopt_arith.jsonl", arith_records())
    write_jsonl(HERE / "prefopt_world.jsonl", world_records())


if __name__ == "__main__":
    main()
