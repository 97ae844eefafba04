"""Math domain: arithmetic and multi-step word problems with worked steps and a final "Answer: N" line.

The everyday word problems of `training.demo.word_problems` (labelled steps, varied surface forms) join the kinds
below.

Every kind below draws its numbers (so every intermediate result is a whole number and one factor of every product
is a single digit), writes one worked line per step (`training.demo.steps`) and ends with "Answer: N". Each kind
has several phrasings; `training.demo.sampling` holds out the last phrasing of every kind from training, so the
held-out figures measure new wordings of known problems.
"""

from __future__ import annotations

import random

from training.demo import word_problems
from training.demo.lexicon import NAMES, PRONOUNS, SHOP_ITEMS, THINGS
from training.demo.steps import add_line, div_line, mul_line, sub_line, worked_example
from training.demo.surface import vary

Problem = tuple[dict, list[str], str]  # (fields for the phrasing, worked lines, answer)


def _add(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 499), rng.randint(10, 99)
    return {"a": a, "b": b}, [add_line(a, b)], str(a + b)


def _sub(rng: random.Random) -> Problem:
    b = rng.randint(10, 99)
    a = b + rng.randint(5, 400)
    return {"a": a, "b": b}, [sub_line(a, b)], str(a - b)


def _mul(rng: random.Random) -> Problem:
    a, b = rng.randint(11, 99), rng.randint(2, 9)
    return {"a": a, "b": b}, [mul_line(a, b)], str(a * b)


def _div(rng: random.Random) -> Problem:
    b, q = rng.randint(2, 9), rng.randint(3, 30)
    return {"a": q * b, "b": b}, [div_line(q * b, b)], str(q)


def _shopping(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    item1, item2 = rng.sample(SHOP_ITEMS, 2)
    n1, p1, n2, p2 = rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 9), rng.randint(2, 12)
    a, b = n1 * p1, n2 * p2
    total = a + b
    bill = next(v for v in (50, 100, 200) if v > total)
    f = {"name": name, "they": PRONOUNS[name], "They": PRONOUNS[name].capitalize(), "item1": item1, "item2": item2,
         "n1": n1, "p1": p1, "n2": n2, "p2": p2, "bill": bill}
    return f, [mul_line(n1, p1), mul_line(n2, p2), add_line(a, b), sub_line(bill, total)], str(bill - total)


def _travel(rng: random.Random) -> Problem:
    v1, t1 = rng.choice(range(20, 125, 5)), rng.randint(2, 6)
    v2, t2 = rng.choice(range(20, 125, 5)), rng.randint(2, 5)
    a, b = v1 * t1, v2 * t2
    f = {"vehicle": rng.choice(("train", "bus", "car", "truck", "boat")), "v1": v1, "t1": t1, "v2": v2, "t2": t2}
    return f, [mul_line(v1, t1), mul_line(v2, t2), add_line(a, b)], str(a + b)


def _sharing(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    trays, per, friends = rng.randint(2, 9), rng.randint(4, 12), rng.randint(2, 8)
    total = trays * per
    rest = friends * rng.randint(1, total // friends)
    eaten = total - rest
    f = {"name": name, "They": PRONOUNS[name].capitalize(), "trays": trays, "per": per, "friends": friends,
         "eaten": eaten}
    return f, [mul_line(trays, per), sub_line(total, eaten), div_line(rest, friends)], str(rest // friends)


def _ages(rng: random.Random) -> Problem:
    older, younger = rng.sample(NAMES, 2)
    times, age, years = rng.randint(2, 5), rng.randint(3, 15), rng.randint(2, 20)
    now = times * age
    f = {"older": older, "younger": younger, "times": times, "age": age, "years": years}
    return f, [mul_line(age, times), add_line(now, years)], str(now + years)


_PERCENT_DIVISOR = {10: 10, 20: 5, 25: 4, 50: 2}


def _discount(rng: random.Random) -> Problem:
    percent = rng.choice(sorted(_PERCENT_DIVISOR))
    price = rng.randint(2, 30) * 20
    off = price // _PERCENT_DIVISOR[percent]
    f = {"thing": rng.choice(THINGS), "price": price, "percent": percent}
    steps = [f"{percent}% of {price} = {price} / {_PERCENT_DIVISOR[percent]} = {off}", sub_line(price, off)]
    return f, steps, str(price - off)


def _savings(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    start, weekly, weeks = rng.randint(0, 60), rng.randint(3, 25), rng.randint(2, 9)
    saved = weekly * weeks
    have = start + saved
    spent = rng.randint(1, have)
    f = {"name": name, "they": PRONOUNS[name], "start": start, "weekly": weekly, "weeks": weeks, "spent": spent,
         "thing": rng.choice(THINGS)}
    return f, [mul_line(weekly, weeks), add_line(start, saved), sub_line(have, spent)], str(have - spent)


def _fence(rng: random.Random) -> Problem:
    length, width, cost = rng.randint(3, 40), rng.randint(2, 30), rng.randint(2, 9)
    half = length + width
    perimeter = 2 * half
    f = {"length": length, "width": width, "cost": cost}
    return f, [add_line(length, width), mul_line(half, 2), mul_line(perimeter, cost)], str(perimeter * cost)


def _reading(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    p, d, q, e = rng.randint(5, 30), rng.randint(2, 7), rng.randint(5, 30), rng.randint(2, 7)
    a, b = p * d, q * e
    read = a + b
    pages = read + rng.randint(5, 200)
    f = {"name": name, "p": p, "d": d, "q": q, "e": e, "pages": pages}
    return f, [mul_line(p, d), mul_line(q, e), add_line(a, b), sub_line(pages, read)], str(pages - read)


# kind -> (problem, phrasings); the last phrasing of each kind is held out of training
KINDS: dict[str, tuple] = {
    "add": (_add, (
        "What is {a} + {b}?",
        "Add {a} and {b}.",
        "Calculate {a} plus {b}.",
        "What do you get if you add {b} to {a}?",
        "Find the sum of {a} and {b}.",
    )),
    "sub": (_sub, (
        "What is {a} - {b}?",
        "Subtract {b} from {a}.",
        "Calculate {a} minus {b}.",
        "How much is {a} take away {b}?",
    )),
    "mul": (_mul, (
        "What is {a} * {b}?",
        "What is {a} times {b}?",
        "Multiply {a} by {b}.",
        "Compute the product of {a} and {b}.",
    )),
    "div": (_div, (
        "What is {a} divided by {b}?",
        "Divide {a} by {b}.",
        "What is {a} / {b}?",
        "How many times does {b} go into {a}?",
    )),
    "shopping": (_shopping, (
        "{name} buys {n1} {item1} at {p1} dollars each and {n2} {item2} at {p2} dollars each. {They} pays with a "
        "{bill} dollar bill. How much change does {they} get?",
        "{n1} {item1} cost {p1} dollars each and {n2} {item2} cost {p2} dollars each. {name} buys them all and hands "
        "over {bill} dollars. What change comes back?",
        "At the shop, {name} picks {n1} {item1} ({p1} dollars each) and {n2} {item2} ({p2} dollars each), and pays "
        "{bill} dollars. How many dollars of change should {they} receive?",
    )),
    "travel": (_travel, (
        "A {vehicle} travels at {v1} km/h for {t1} hours, then at {v2} km/h for {t2} hours. How many kilometres does "
        "it travel in total?",
        "For {t1} hours a {vehicle} goes {v1} km/h, and for the next {t2} hours it goes {v2} km/h. What total distance "
        "does it cover, in km?",
        "How far does a {vehicle} go if it drives {t1} hours at {v1} km/h and then {t2} hours at {v2} km/h?",
    )),
    "sharing": (_sharing, (
        "{name} bakes {trays} trays of {per} cookies. {They} eats {eaten} of them and shares the rest equally among "
        "{friends} friends. How many cookies does each friend get?",
        "There are {trays} trays with {per} cookies on each. After {eaten} cookies are eaten, the rest are split "
        "evenly between {friends} friends. How many does each friend receive?",
        "{name} has {trays} boxes holding {per} cookies each, gives away {eaten}, and divides what is left equally "
        "among {friends} children. How many cookies does each child get?",
    )),
    "ages": (_ages, (
        "{older} is {times} times as old as {younger}. {younger} is {age} years old. How old will {older} be in "
        "{years} years?",
        "{younger} is {age}. {older}'s age is {times} times {younger}'s age. What will {older}'s age be {years} "
        "years from now?",
        "In {years} years, how old will {older} be, if {older} is now {times} times as old as {younger}, who is "
        "{age}?",
    )),
    "discount": (_discount, (
        "A {thing} costs {price} dollars. It is on sale for {percent}% off. What is the sale price in dollars?",
        "The price of a {thing} is {price} dollars, and the shop takes {percent}% off. How much does it cost now?",
        "With a {percent}% discount, what do you pay for a {thing} that normally costs {price} dollars?",
    )),
    "savings": (_savings, (
        "{name} has {start} dollars and saves {weekly} dollars each week for {weeks} weeks, then spends {spent} "
        "dollars on a {thing}. How many dollars does {they} have now?",
        "{name} starts with {start} dollars, puts away {weekly} dollars a week for {weeks} weeks, and buys a {thing} "
        "for {spent} dollars. How much money is left?",
        "After saving {weekly} dollars every week for {weeks} weeks on top of {start} dollars, {name} pays {spent} "
        "dollars for a {thing}. What does {they} have left?",
    )),
    "fence": (_fence, (
        "A garden is {length} m long and {width} m wide. Fencing costs {cost} dollars per metre. How much does it "
        "cost to fence the whole garden?",
        "To put a fence around a {length} m by {width} m field at {cost} dollars a metre, how many dollars are "
        "needed?",
        "What does it cost to fence a rectangle {length} metres long and {width} metres wide, if fence is {cost} "
        "dollars per metre?",
    )),
    "reading": (_reading, (
        "{name} reads {p} pages a day for {d} days and then {q} pages a day for {e} days. The book has {pages} "
        "pages. How many pages are left?",
        "A book has {pages} pages. {name} reads {p} pages daily for {d} days, then {q} pages daily for {e} days. "
        "How many pages remain?",
        "How many pages of a {pages}-page book are still unread after {name} reads {p} a day for {d} days and {q} a "
        "day for {e} more days?",
    )),
}  # fmt: skip
KINDS.update(word_problems.KINDS)  # everyday word problems with labelled steps (issue 22)


def render(kind: str, phrasing: int, rng: random.Random) -> dict:
    """One example of `kind` in phrasing `phrasing`: {"prompt", "completion", "answer"}; word problems' prompts are
    varied (training.demo.surface)."""
    ex = worked_example(KINDS, kind, phrasing, rng)
    if kind in word_problems.KINDS:
        text = vary(ex["prompt"], rng)
        ex["prompt"] = text[0].upper() + text[1:]
    return ex
