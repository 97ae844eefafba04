"""Reasoning domain: orderings, syllogisms, small assignment puzzles, conditionals, sequences and weekday arithmetic.

Each completion explains in a line or two and ends with "Answer: ...". Syllogisms use nonsense words so that only
the form, not world knowledge, decides the answer.
"""

from __future__ import annotations

import random
from itertools import pairwise

from training.demo.lexicon import NAMES

# (comparative, opposite comparative, superlative, opposite superlative)
RELATIONS: tuple[tuple[str, str, str, str], ...] = (
    ("taller", "shorter", "tallest", "shortest"),
    ("older", "younger", "oldest", "youngest"),
    ("faster", "slower", "fastest", "slowest"),
    ("heavier", "lighter", "heaviest", "lightest"),
    ("stronger", "weaker", "strongest", "weakest"),
)

NONSENSE: tuple[str, ...] = (
    "blorps", "zents", "quibs", "farls", "mibbles", "trosks", "vels", "gorns", "plinks", "wumps", "dralls", "snerps",
    "yiffs", "kobs", "lurns", "hexels",
)  # fmt: skip

PETS: tuple[str, ...] = ("cat", "dog", "fish", "bird", "rabbit", "turtle", "hamster")
COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow", "black", "white", "purple")

CONDITIONALS: tuple[tuple[str, str, str, str], ...] = (
    # (if-clause, then-clause, negated if-clause, negated then-clause)
    ("it rains", "the street is wet", "it does not rain", "the street is not wet"),
    ("the alarm rings", "Tom wakes up", "the alarm does not ring", "Tom does not wake up"),
    ("the light is green", "the cars move", "the light is not green", "the cars do not move"),
    ("the oven is on", "the kitchen is warm", "the oven is not on", "the kitchen is not warm"),
    ("the shop is open", "the sign is lit", "the shop is not open", "the sign is not lit"),
    ("Mia studies", "Mia passes the test", "Mia does not study", "Mia does not pass the test"),
)

WEEKDAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _ordering(rng: random.Random) -> tuple[str, list[str], str]:
    more, less, most, least = rng.choice(RELATIONS)
    people = rng.sample(NAMES, rng.randint(3, 5))  # people[0] has the most of the quality
    facts = []
    for hi, lo in pairwise(people):
        facts.append(f"{hi} is {more} than {lo}." if rng.random() < 0.5 else f"{lo} is {less} than {hi}.")
    rng.shuffle(facts)
    ask_most = rng.random() < 0.5
    question = f"Who is the {most if ask_most else least}?"
    answer = people[0] if ask_most else people[-1]
    steps = [f"From {most} to {least}: {', '.join(people)}.", f"So the {most if ask_most else least} is {answer}."]
    return " ".join([*facts, question]), steps, answer


def _syllogism(rng: random.Random) -> tuple[str, list[str], str]:
    a, b, c = rng.sample(NONSENSE, 3)
    form = rng.randrange(6)
    if form == 0:
        premises, claim, answer = f"All {a} are {b}. All {b} are {c}.", f"all {a} are {c}", "Yes"
        why = f"Every {a[:-1]} is a {b[:-1]}, and every {b[:-1]} is a {c[:-1]}."
    elif form == 1:
        premises, claim, answer = f"All {a} are {b}. No {b} are {c}.", f"no {a} are {c}", "Yes"
        why = f"Every {a[:-1]} is a {b[:-1]}, and no {b[:-1]} is a {c[:-1]}."
    elif form == 2:
        premises, claim, answer = f"Some {a} are {b}. All {b} are {c}.", f"some {a} are {c}", "Yes"
        why = f"The {a} that are {b} are also {c}."
    elif form == 3:
        premises, claim, answer = f"All {a} are {b}. Some {b} are {c}.", f"some {a} are {c}", "No"
        why = f"The {b} that are {c} need not include any {a}."
    elif form == 4:
        premises, claim, answer = f"All {a} are {b}.", f"all {b} are {a}", "No"
        why = f"There may be {b} that are not {a}."
    else:
        premises, claim, answer = f"No {a} are {b}. All {c} are {b}.", f"no {c} are {a}", "Yes"
        why = f"Every {c[:-1]} is a {b[:-1]}, and no {a[:-1]} is a {b[:-1]}, so no {c[:-1]} is a {a[:-1]}."
    return f"{premises} Does it follow that {claim}?", [why], answer


def _assignment(rng: random.Random) -> tuple[str, list[str], str]:
    things, kind = (PETS, "pet") if rng.random() < 0.5 else (COLOURS, "favourite colour")
    people = rng.sample(NAMES, 3)
    items = rng.sample(things, 3)  # people[i] has items[i]
    p1, p2, p3 = people
    clue_direct = f"{p2} has the {items[1]}." if kind == "pet" else f"{p2}'s favourite colour is {items[1]}."
    clue_not = f"{p1} does not have the {items[2]}." if kind == "pet" else f"{p1} does not like {items[2]}."
    intro = f"{p1}, {p2} and {p3} each have a different {kind}: {', '.join(sorted(items))}."
    ask_first = rng.random() < 0.5
    target = p1 if ask_first else p3
    question = f"What is {target}'s {kind}?"
    steps = [f"{p2} has {items[1]}, so {p1} and {p3} share {items[0]} and {items[2]}.",
             f"{p1} does not have {items[2]}, so {p1} has {items[0]} and {p3} has {items[2]}."]  # fmt: skip
    return f"{intro} {clue_direct} {clue_not} {question}", steps, items[0] if ask_first else items[2]


def _conditional(rng: random.Random) -> tuple[str, list[str], str]:
    p, q, not_p, not_q = rng.choice(CONDITIONALS)
    form = rng.randrange(4)
    if form == 0:  # modus ponens
        fact, ask, answer = f"{p.capitalize()}.", f"Is it true that {q}?", "Yes"
        why = f"{p.capitalize()}, and if {p}, then {q}."
    elif form == 1:  # modus tollens
        fact, ask, answer = f"{not_q.capitalize()}.", f"Is it true that {p}?", "No"
        why = f"If {p}, then {q}; but {not_q}, so it is not true that {p}."
    elif form == 2:  # affirming the consequent
        fact, ask, answer = f"{q.capitalize()}.", f"Is it true that {p}?", "Cannot tell"
        why = f"Knowing that {q} does not tell us whether {p}."
    else:  # denying the antecedent
        fact, ask, answer = f"{not_p.capitalize()}.", f"Is it true that {q}?", "Cannot tell"
        why = f"Knowing that {not_p} does not tell us whether {q}."
    return f"If {p}, then {q}. {fact} {ask}", [why], answer


def _sequence(rng: random.Random) -> tuple[str, list[str], str]:
    start, length = rng.randint(1, 20), rng.randint(4, 5)
    if rng.random() < 0.6:
        step = rng.randint(2, 12)
        terms = [start + i * step for i in range(length + 1)]
        rule = f"Each term adds {step}. {terms[-2]} + {step} = {terms[-1]}."
    else:
        start, ratio = rng.randint(1, 5), rng.randint(2, 3)
        terms = [start * ratio**i for i in range(length + 1)]
        rule = f"Each term is multiplied by {ratio}. {terms[-2]} * {ratio} = {terms[-1]}."
    shown = ", ".join(str(t) for t in terms[:-1])
    return f"What number comes next: {shown}, ...?", [rule], str(terms[-1])


def _weekday(rng: random.Random) -> tuple[str, list[str], str]:
    today, days = rng.randrange(7), rng.randint(2, 60)
    later = WEEKDAYS[(today + days) % 7]
    steps = [f"{days} = 7 * {days // 7} + {days % 7}.", f"{WEEKDAYS[today]} + {days % 7} days is {later}."]
    return f"If today is {WEEKDAYS[today]}, what day of the week will it be in {days} days?", steps, later


TEMPLATES = (_ordering, _syllogism, _assignment, _conditional, _sequence, _weekday)


def sample(rng: random.Random) -> dict:
    """One reasoning example: {"prompt", "completion", "answer"} (the answer is dropped outside test splits)."""
    prompt, steps, answer = rng.choice(TEMPLATES)(rng)
    return {"prompt": prompt + "\n", "completion": "\n".join([*steps, f"Answer: {answer}"]), "answer": answer}
