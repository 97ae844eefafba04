"""Math domain: multi-step arithmetic word problems with worked steps and a final "Answer: N" line.

Each template picks its numbers so every intermediate result is a whole number, writes one "a op b = c" line per
step, and ends with "Answer: N". The row's "answer" is str(N).
"""

from __future__ import annotations

import random

from training.demo.lexicon import NAMES, PRONOUNS, SHOP_ITEMS, THINGS


def _shopping(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    item1, item2 = rng.sample(SHOP_ITEMS, 2)
    n1, p1, n2, p2 = rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 9), rng.randint(2, 12)
    a, b = n1 * p1, n2 * p2
    total = a + b
    bill = next(v for v in (20, 50, 100, 200) if v > total)
    prompt = (
        f"{name} buys {n1} {item1} at {p1} dollars each and {n2} {item2} at {p2} dollars each. "
        f"{PRONOUNS[name].capitalize()} pays with a {bill} dollar bill. How much change does {PRONOUNS[name]} get?"
    )
    steps = [f"{n1} * {p1} = {a}", f"{n2} * {p2} = {b}", f"{a} + {b} = {total}", f"{bill} - {total} = {bill - total}"]
    return prompt, steps, bill - total


def _travel(rng: random.Random) -> tuple[str, list[str], int]:
    vehicle = rng.choice(("train", "bus", "car", "truck", "boat"))
    v1, t1 = rng.choice(range(20, 125, 5)), rng.randint(2, 6)
    v2, t2 = rng.choice(range(20, 125, 5)), rng.randint(1, 5)
    a, b = v1 * t1, v2 * t2
    prompt = (
        f"A {vehicle} travels at {v1} km/h for {t1} hours, then at {v2} km/h for {t2} hours. "
        f"How many kilometres does it travel in total?"
    )
    return prompt, [f"{v1} * {t1} = {a}", f"{v2} * {t2} = {b}", f"{a} + {b} = {a + b}"], a + b


def _sharing(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    trays, per, friends = rng.randint(2, 9), rng.randint(4, 12), rng.randint(2, 8)
    total = trays * per
    rest = friends * rng.randint(1, total // friends)  # a whole, non-zero number of cookies per friend
    eaten = total - rest
    prompt = (
        f"{name} bakes {trays} trays of {per} cookies. {PRONOUNS[name].capitalize()} eats {eaten} of them and "
        f"shares the rest equally among {friends} friends. How many cookies does each friend get?"
    )
    steps = [f"{trays} * {per} = {total}", f"{total} - {eaten} = {rest}", f"{rest} / {friends} = {rest // friends}"]
    return prompt, steps, rest // friends


def _ages(rng: random.Random) -> tuple[str, list[str], int]:
    older, younger = rng.sample(NAMES, 2)
    times, age, years = rng.randint(2, 5), rng.randint(3, 15), rng.randint(2, 20)
    now = times * age
    prompt = (
        f"{older} is {times} times as old as {younger}. {younger} is {age} years old. "
        f"How old will {older} be in {years} years?"
    )
    return prompt, [f"{times} * {age} = {now}", f"{now} + {years} = {now + years}"], now + years


def _discount(rng: random.Random) -> tuple[str, list[str], int]:
    thing = rng.choice(THINGS)
    percent = rng.choice((10, 20, 25, 30, 40, 50, 75))
    price = rng.randint(1, 30) * 20  # a multiple of 20 makes every listed percentage a whole number of dollars
    off = price * percent // 100
    prompt = f"A {thing} costs {price} dollars. It is on sale for {percent}% off. What is the sale price in dollars?"
    return prompt, [f"{price} * {percent} / 100 = {off}", f"{price} - {off} = {price - off}"], price - off


def _savings(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    start, weekly, weeks = rng.randint(0, 60), rng.randint(3, 25), rng.randint(2, 12)
    saved = weekly * weeks
    have = start + saved
    spent = rng.randint(1, have)
    prompt = (
        f"{name} has {start} dollars and saves {weekly} dollars each week for {weeks} weeks, then spends "
        f"{spent} dollars on a {rng.choice(THINGS)}. How many dollars does {PRONOUNS[name]} have now?"
    )
    steps = [f"{weekly} * {weeks} = {saved}", f"{start} + {saved} = {have}", f"{have} - {spent} = {have - spent}"]
    return prompt, steps, have - spent


def _fence(rng: random.Random) -> tuple[str, list[str], int]:
    length, width, cost = rng.randint(3, 40), rng.randint(2, 30), rng.randint(2, 15)
    half = length + width
    perimeter = 2 * half
    prompt = (
        f"A garden is {length} m long and {width} m wide. Fencing costs {cost} dollars per metre. "
        f"How much does it cost to fence the whole garden?"
    )
    steps = [f"{length} + {width} = {half}", f"2 * {half} = {perimeter}", f"{perimeter} * {cost} = {perimeter * cost}"]
    return prompt, steps, perimeter * cost


def _reading(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(NAMES)
    p, d, q, e = rng.randint(5, 30), rng.randint(2, 7), rng.randint(5, 30), rng.randint(2, 7)
    a, b = p * d, q * e
    read = a + b
    pages = read + rng.randint(0, 200)
    prompt = (
        f"{name} reads {p} pages a day for {d} days and then {q} pages a day for {e} days. "
        f"The book has {pages} pages. How many pages are left?"
    )
    steps = [f"{p} * {d} = {a}", f"{q} * {e} = {b}", f"{a} + {b} = {read}", f"{pages} - {read} = {pages - read}"]
    return prompt, steps, pages - read


TEMPLATES = (_shopping, _travel, _sharing, _ages, _discount, _savings, _fence, _reading)


def sample(rng: random.Random) -> dict:
    """One word problem: {"prompt", "completion", "answer"} (the answer is dropped outside test splits)."""
    prompt, steps, answer = rng.choice(TEMPLATES)(rng)
    return {"prompt": prompt + "\n", "completion": "\n".join([*steps, f"Answer: {answer}"]), "answer": str(answer)}
