"""Reasoning domain: orderings, syllogisms, small assignment puzzles, conditionals, sequences and weekday arithmetic.

Each completion explains in a line or two and ends with "Answer: ...". Syllogisms use nonsense words so that only
the form, not world knowledge, decides the answer. Each kind has several phrasings; the last is held out of
training (`training.demo.sampling`).
"""

from __future__ import annotations

import random
from itertools import pairwise

from training.demo.lexicon import NAMES
from training.demo.steps import worked_example

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


Problem = tuple[dict, list[str], str]


def _ordering(rng: random.Random) -> Problem:
    more, less, most, least = rng.choice(RELATIONS)
    people = rng.sample(NAMES, rng.randint(3, 4))  # people[0] has the most of the quality
    facts = []
    for hi, lo in pairwise(people):
        facts.append(f"{hi} is {more} than {lo}." if rng.random() < 0.5 else f"{lo} is {less} than {hi}.")
    rng.shuffle(facts)
    ask_most = rng.random() < 0.5
    which = most if ask_most else least
    answer = people[0] if ask_most else people[-1]
    steps = [f"From {most} to {least}: {', '.join(people)}.", f"So the {which} is {answer}."]
    return {"facts": " ".join(facts), "which": which}, steps, answer


_SYLLOGISMS = (  # (premises, claim, answer, why) over nonsense plurals a, b, c
    ("All {a} are {b}. All {b} are {c}.", "all {a} are {c}", "Yes", "Every {a1} is a {b1}, and every {b1} is a {c1}."),
    ("All {a} are {b}. No {b} are {c}.", "no {a} are {c}", "Yes", "Every {a1} is a {b1}, and no {b1} is a {c1}."),
    ("Some {a} are {b}. All {b} are {c}.", "some {a} are {c}", "Yes", "The {a} that are {b} are also {c}."),
    ("All {a} are {b}. Some {b} are {c}.", "some {a} are {c}", "No", "The {b} that are {c} need not include any {a}."),
    ("All {a} are {b}.", "all {b} are {a}", "No", "There may be {b} that are not {a}."),
    ("No {a} are {b}. All {c} are {b}.", "no {c} are {a}", "Yes",
     "Every {c1} is a {b1}, and no {a1} is a {b1}, so no {c1} is a {a1}."),
)


def _syllogism(rng: random.Random) -> Problem:
    a, b, c = rng.sample(NONSENSE, 3)
    names = {"a": a, "b": b, "c": c, "a1": a[:-1], "b1": b[:-1], "c1": c[:-1]}
    premises, claim, answer, why = (x.format(**names) for x in rng.choice(_SYLLOGISMS))
    return {"premises": premises, "claim": claim}, [why], answer


def _assignment(rng: random.Random) -> Problem:
    things, kind = (PETS, "pet") if rng.random() < 0.5 else (COLOURS, "favourite colour")
    people = rng.sample(NAMES, 3)
    items = rng.sample(things, 3)  # people[i] has items[i]
    p1, p2, p3 = people
    clue_direct = f"{p2} has the {items[1]}." if kind == "pet" else f"{p2}'s favourite colour is {items[1]}."
    clue_not = f"{p1} does not have the {items[2]}." if kind == "pet" else f"{p1} does not like {items[2]}."
    intro = f"{p1}, {p2} and {p3} each have a different {kind}: {', '.join(sorted(items))}."
    target = p1 if rng.random() < 0.5 else p3
    steps = [f"{p2} has {items[1]}, so {p1} and {p3} share {items[0]} and {items[2]}.",
             f"{p1} does not have {items[2]}, so {p1} has {items[0]} and {p3} has {items[2]}."]  # fmt: skip
    answer = items[0] if target == p1 else items[2]
    return {"facts": f"{intro} {clue_direct} {clue_not}", "who": target, "kind": kind}, steps, answer


def _conditional(rng: random.Random) -> Problem:
    p, q, not_p, not_q = rng.choice(CONDITIONALS)
    form = rng.randrange(4)
    if form == 0:  # modus ponens
        fact, ask, answer, why = p, q, "Yes", f"{p.capitalize()}, and if {p}, then {q}."
    elif form == 1:  # modus tollens
        fact, ask, answer, why = not_q, p, "No", f"If {p}, then {q}; but {not_q}, so it is not true that {p}."
    elif form == 2:  # affirming the consequent
        fact, ask, answer, why = q, p, "Cannot tell", f"Knowing that {q} does not tell us whether {p}."
    else:  # denying the antecedent
        fact, ask, answer, why = not_p, q, "Cannot tell", f"Knowing that {not_p} does not tell us whether {q}."
    return {"p": p, "q": q, "fact": fact[0].upper() + fact[1:], "ask": ask}, [why], answer


def _sequence(rng: random.Random) -> Problem:
    start, length = rng.randint(1, 20), rng.randint(4, 5)
    if rng.random() < 0.6:
        step = rng.randint(2, 12)
        terms = [start + i * step for i in range(length + 1)]
        rule = f"Each term adds {step}. {terms[-2]} + {step} = {terms[-1]}."
    else:
        start, ratio = rng.randint(1, 5), rng.randint(2, 3)
        terms = [start * ratio**i for i in range(length + 1)]
        rule = f"Each term is multiplied by {ratio}. {terms[-2]} * {ratio} = {terms[-1]}."
    return {"shown": ", ".join(str(t) for t in terms[:-1])}, [rule], str(terms[-1])


def _weekday(rng: random.Random) -> Problem:
    today, days = rng.randrange(7), rng.randint(2, 30)
    later = WEEKDAYS[(today + days) % 7]
    steps = [f"{days} = 7 * {days // 7} + {days % 7}.", f"{WEEKDAYS[today]} + {days % 7} days is {later}."]
    return {"today": WEEKDAYS[today], "days": days}, steps, later


# kind -> (problem, phrasings); the last phrasing of each kind is held out of training
KINDS: dict[str, tuple] = {
    "ordering": (_ordering, (
        "{facts} Who is the {which}?",
        "{facts} Which person is the {which}?",
        "Here are some facts. {facts} Name the {which} one.",
        "Read carefully: {facts} Who is {which} of all?",
    )),
    "syllogism": (_syllogism, (
        "{premises} Does it follow that {claim}?",
        "{premises} Can we conclude that {claim}?",
        "Suppose: {premises} Is it then certain that {claim}?",
        "Take these statements as true: {premises} Must it be the case that {claim}?",
    )),
    "assignment": (_assignment, (
        "{facts} What is {who}'s {kind}?",
        "{facts} Which {kind} does {who} have?",
        "Solve the puzzle. {facts} Find {who}'s {kind}.",
    )),
    "conditional": (_conditional, (
        "If {p}, then {q}. {fact}. Is it true that {ask}?",
        "Rule: if {p}, then {q}. Fact: {fact}. Does it follow that {ask}?",
        "We know that whenever {p}, {q}. Observation: {fact}. Can we say that {ask}?",
    )),
    "sequence": (_sequence, (
        "What number comes next: {shown}, ...?",
        "Continue the sequence: {shown}, ?",
        "Find the next term of {shown}.",
        "What is the next number in the pattern {shown}?",
    )),
    "weekday": (_weekday, (
        "If today is {today}, what day of the week will it be in {days} days?",
        "Today is {today}. Which weekday is it {days} days from now?",
        "What day of the week is {days} days after a {today}?",
    )),
}  # fmt: skip


def render(kind: str, phrasing: int, rng: random.Random) -> dict:
    """One example of `kind` in phrasing `phrasing`: {"prompt", "completion", "answer"}."""
    return worked_example(KINDS, kind, phrasing, rng)
