"""Math word problems in everyday settings, with labelled worked steps (issue 22's skill data).

Each kind is one everyday pattern (giving away, groups, buying, wages, speed, unit conversion, scaling, clock
times, percentages, sharing, comparing, totals, unit prices) with a randomised setting: names, objects and units
from word lists, numbers drawn so every step is exact. Every step line names what it computes, from the problem's
own words ("Given away: 27 + 18 = 45", "Left: 95 - 45 = 50"), so the model learns to map the sentence to the
operation, then the number; the arithmetic is split as in `training.demo.steps`. The kinds join `math_data.KINDS`,
whose prompts `training.demo.surface.vary` rewrites (distractors, framing, question order).
"""

from __future__ import annotations

import random

from training.demo.lexicon import NAMES, PRONOUNS
from training.demo.steps import add_line, div_line, mul_line, sub_line

Problem = tuple[dict, list[str], str]

# (plural object, container) pairs for stories about things
STUFF: tuple[tuple[str, str], ...] = (
    ("stickers", "packs"), ("pencils", "boxes"), ("marbles", "bags"), ("cookies", "trays"), ("eggs", "cartons"),
    ("apples", "crates"), ("cards", "decks"), ("batteries", "packs"), ("books", "shelves"), ("beads", "jars"),
    ("balloons", "bags"), ("crayons", "boxes"), ("cupcakes", "trays"), ("stamps", "sheets"), ("shells", "buckets"),
)  # fmt: skip
PRICED: tuple[str, ...] = (
    "notebook", "pen", "sandwich", "ticket", "toy car", "mug", "scarf", "juice box", "comic", "plant",
    "poster", "candle", "ball", "hat", "puzzle",
)  # fmt: skip
PEOPLE: tuple[str, ...] = ("a brother", "a sister", "a friend", "a neighbour", "a cousin", "the teacher",
                           "the class", "a classmate")
VEHICLES: tuple[str, ...] = ("car", "train", "bus", "cyclist", "truck", "boat", "runner", "plane")
DONE_WITH: tuple[str, ...] = ("uses", "gives away", "sells", "loses", "eats", "hands out")

# unit -> (smaller unit, factor): the conversions a word problem may need
UNITS: dict[str, tuple[str, int]] = {
    "weeks": ("days", 7), "days": ("hours", 24), "hours": ("minutes", 60), "minutes": ("seconds", 60),
    "kilograms": ("grams", 1000), "metres": ("centimetres", 100), "litres": ("millilitres", 1000),
    "dollars": ("cents", 100), "dozen": ("items", 12), "kilometres": ("metres", 1000), "years": ("months", 12),
}  # fmt: skip


def plural(word: str) -> str:
    return word + "es" if word.endswith(("x", "s", "ch", "sh")) else word + "s"


def _who(rng: random.Random) -> dict:
    name = rng.choice(NAMES)
    return {"name": name, "they": PRONOUNS[name], "They": PRONOUNS[name].capitalize(),
            "their": {"she": "her", "he": "his"}[PRONOUNS[name]]}


def _remove_two(rng: random.Random) -> Problem:
    obj, _ = rng.choice(STUFF)
    a, b = rng.randint(5, 60), rng.randint(5, 60)
    start = a + b + rng.randint(3, 120)
    p1, p2 = rng.sample(PEOPLE, 2)
    f = {**_who(rng), "obj": obj, "start": start, "a": a, "b": b, "p1": p1, "p2": p2}
    steps = [f"Given away: {add_line(a, b)}", f"Left: {sub_line(start, a + b)}"]
    return f, steps, str(start - a - b)


def _groups_left(rng: random.Random) -> Problem:
    obj, box = rng.choice(STUFF)
    n, per = rng.randint(2, 12), rng.randint(4, 36)
    total = n * per
    k = rng.randint(1, total - 1)
    f = {**_who(rng), "obj": obj, "box": box, "n": n, "per": per, "k": k, "done": rng.choice(DONE_WITH)}
    return f, [f"In all: {mul_line(n, per)}", f"Left: {sub_line(total, k)}"], str(total - k)


def _buy_two(rng: random.Random) -> Problem:
    i1, i2 = rng.sample(PRICED, 2)
    n1, p1, n2, p2 = rng.randint(2, 9), rng.randint(1, 15), rng.randint(2, 9), rng.randint(1, 15)
    a, b = n1 * p1, n2 * p2
    f = {**_who(rng), "i1": i1, "i2": i2, "i1s": plural(i1), "i2s": plural(i2), "n1": n1, "p1": p1, "n2": n2,
         "p2": p2}
    steps = [f"{plural(i1).capitalize()}: {mul_line(n1, p1)}", f"{plural(i2).capitalize()}: {mul_line(n2, p2)}",
             f"Total: {add_line(a, b)}"]
    return f, steps, str(a + b)


def _change(rng: random.Random) -> Problem:
    item = rng.choice(PRICED)
    n, p = rng.randint(2, 9), rng.randint(2, 19)
    cost = n * p
    bill = next(v for v in (10, 20, 50, 100, 200) if v > cost)
    f = {**_who(rng), "item": item, "items": plural(item), "n": n, "p": p, "bill": bill}
    return f, [f"Cost: {mul_line(n, p)}", f"Change: {sub_line(bill, cost)}"], str(bill - cost)


def _wage(rng: random.Random) -> Problem:
    rate, hours, days = rng.randint(8, 30), rng.randint(2, 9), rng.randint(2, 7)
    total_h = hours * days
    f = {**_who(rng), "rate": rate, "hours": hours, "days": days}
    steps = [f"Hours worked: {mul_line(hours, days)}", f"Pay: {mul_line(total_h, rate)}"]
    return f, steps, str(total_h * rate)


def _speed(rng: random.Random) -> Problem:
    v = rng.choice(range(10, 130, 10)) if rng.random() < 0.6 else rng.randint(4, 90)
    half = rng.random() < 0.35 and v % 2 == 0
    hours = rng.randint(1 if half else 2, 8)  # never "for 1 hours"
    f = {"vehicle": rng.choice(VEHICLES), "v": v, "t": f"{hours}.5" if half else str(hours)}
    if half:
        steps = [f"Whole hours: {mul_line(v, hours)}", f"Half an hour: {div_line(v, 2)}",
                 f"Distance: {add_line(v * hours, v // 2)}"]
        return f, steps, str(v * hours + v // 2)
    return f, [f"Distance: {mul_line(v, hours)}"], str(v * hours)


def _convert(rng: random.Random) -> Problem:
    unit = rng.choice(sorted(UNITS))
    small, factor = UNITS[unit]
    n = rng.randint(2, 15) if factor >= 100 else rng.randint(2, 40)
    f = {"n": n, "unit": unit, "small": small}
    one = "A dozen is 12 items." if unit == "dozen" else f"One {unit.rstrip('s')} is {factor} {small}."
    return f, [one, f"{small.capitalize()}: {mul_line(n, factor)}"], str(n * factor)


def _rate_over_time(rng: random.Random) -> Problem:
    unit, (small, factor) = rng.choice((("weeks", UNITS["weeks"]), ("hours", UNITS["hours"]),
                                        ("days", UNITS["days"]), ("years", UNITS["years"])))
    n, per = rng.randint(2, 6), rng.randint(2, 25)
    thing = rng.choice(("pages", "steps", "emails", "bottles", "cups of water", "drawings", "pictures"))
    f = {**_who(rng), "n": n, "unit": unit, "small": small, "single": small.rstrip("s"), "per": per,
         "thing": thing}
    total = n * factor
    steps = [f"{small.capitalize()}: {mul_line(n, factor)}", f"{thing.capitalize()}: {mul_line(total, per)}"]
    return f, steps, str(total * per)


def _scale(rng: random.Random) -> Problem:
    what, unit = rng.choice((("cake", "grams of flour"), ("loaf", "grams of sugar"), ("shirt", "buttons"),
                             ("batch of soup", "millilitres of milk"), ("table", "screws"), ("kite", "cm of string")))
    q = rng.choice((rng.randint(2, 40), rng.randint(1, 9) * 50, rng.randint(1, 9) * 25))
    n = rng.randint(2, 12)
    f = {"what": what, "unit": unit, "q": q, "n": n}
    return f, [f"{unit.capitalize()}: {mul_line(q, n)}"], str(q * n)


def _clock(rng: random.Random) -> Problem:
    h1 = rng.randint(1, 9)
    h2 = h1 + rng.randint(1, 3)
    m1 = rng.choice(range(0, 60, 5))
    m2 = rng.choice(range(m1, 60, 5))
    hours = h2 - h1
    f = {"t1": f"{h1}:{m1:02d}", "t2": f"{h2}:{m2:02d}", "event": rng.choice(
        ("the train ride", "the lesson", "the film", "the game", "the meeting", "the trip"))}
    steps = [f"From {h1}:{m1:02d} to {h2}:{m1:02d}: {mul_line(hours, 60)} minutes",
             f"From {h2}:{m1:02d} to {h2}:{m2:02d}: {m2} - {m1} = {m2 - m1} minutes",
             f"Total: {add_line(hours * 60, m2 - m1)}"]
    return f, steps, str(hours * 60 + m2 - m1)


_PERCENT = {10: "/ 10", 20: "/ 5", 25: "/ 4", 50: "/ 2", 5: "/ 20"}


def _percent_lines(percent: int, price: int) -> tuple[list[str], int]:
    if percent == 75:
        q = price // 4
        return [f"25% of {price} = {price} / 4 = {q}", f"75% of {price} = 3 * {q} = {3 * q}"], 3 * q
    d = int(_PERCENT[percent].split()[1])
    return [f"{percent}% of {price} = {price} / {d} = {price // d}"], price // d


def _percent_off(rng: random.Random) -> Problem:
    percent = rng.choice((10, 20, 25, 50, 75, 5))
    price = rng.randint(1, 30) * 20
    lines, off = _percent_lines(percent, price)
    f = {"item": rng.choice(PRICED), "price": price, "percent": percent}
    return f, [*lines, f"Sale price: {sub_line(price, off)}"], str(price - off)


def _percent_of(rng: random.Random) -> Problem:
    percent = rng.choice((10, 20, 25, 50, 75))
    total = rng.randint(2, 30) * 20
    lines, part = _percent_lines(percent, total)
    f = {"total": total, "percent": percent, "group": rng.choice(
        ("students", "people at the party", "trees in the park", "seats", "runners", "tickets"))}
    return f, lines, str(part)


def _share(rng: random.Random) -> Problem:
    k = rng.randint(2, 9)
    each = rng.randint(2, 30)
    total = k * each
    a = rng.randint(1, total - 1)
    obj, _ = rng.choice(STUFF)
    f = {**_who(rng), "a": a, "b": total - a, "k": k, "obj": obj}
    return f, [f"In all: {add_line(a, total - a)}", f"Each: {div_line(total, k)}"], str(each)


def _compare(rng: random.Random) -> Problem:
    n1, n2 = rng.sample(NAMES, 2)
    a, more = rng.randint(5, 90), rng.randint(2, 40)
    fewer = rng.random() < 0.4 and a > more
    b = a - more if fewer else a + more
    obj, _ = rng.choice(STUFF)
    f = {"n1": n1, "n2": n2, "a": a, "more": more, "obj": obj, "word": "fewer" if fewer else "more"}
    first = f"{n2}: {sub_line(a, more)}" if fewer else f"{n2}: {add_line(a, more)}"
    return f, [first, f"Together: {add_line(a, b)}"], str(a + b)


def _totals(rng: random.Random) -> Problem:
    parts = [rng.randint(10, 250) for _ in range(rng.choice((2, 2, 3)))]
    what = rng.choice(("muffins", "tickets", "newspapers", "ice creams", "plants", "books"))
    times = ("in the morning", "in the afternoon", "in the evening")
    f = {"what": what, "list": ", ".join(f"{p} {t}" for p, t in zip(parts[:-1], times, strict=False)) +
         f" and {parts[-1]} {times[len(parts) - 1]}"}
    steps, acc = [], parts[0]
    for i, p in enumerate(parts[1:], start=2):
        steps.append(f"{'Total' if i == len(parts) else 'So far'}: {add_line(acc, p)}")
        acc += p
    return f, steps, str(acc)


def _unit_price(rng: random.Random) -> Problem:
    n, unit, m = rng.randint(2, 9), rng.randint(2, 25), rng.randint(2, 12)
    item = rng.choice(PRICED)
    f = {"n": n, "cost": n * unit, "m": m, "item": item, "items": plural(item)}
    return f, [f"One {item}: {div_line(n * unit, n)}", f"{m} {plural(item)}: {mul_line(unit, m)}"], str(unit * m)


# kind -> (problem, phrasings); the last phrasing of each kind is held out of training
KINDS: dict[str, tuple] = {
    "remove_two": (_remove_two, (
        "{name} had {start} {obj}. {They} gave {a} to {p1} and {b} to {p2}. How many {obj} does {they} have left?",
        "{name} starts with {start} {obj}, gives {p1} {a} and gives {p2} {b}. How many are left?",
        "There were {start} {obj} in a box. {a} were taken out in the morning and {b} in the afternoon. How many "
        "{obj} are still in the box?",
        "After giving {a} {obj} to {p1} and {b} to {p2}, how many of {their} {start} {obj} does {name} still have?",
        "{name} owned {start} {obj}, then lost {a} and later gave away {b}. What is left?",
    )),
    "groups_left": (_groups_left, (
        "There are {n} {box} with {per} {obj} in each. {name} {done} {k} of them. How many {obj} are left?",
        "{name} has {n} {box} of {obj}, {per} in every one, and {done} {k}. How many {obj} remain?",
        "Each of the {n} {box} holds {per} {obj}. If {k} {obj} are used, how many are left over?",
        "{n} {box}, {per} {obj} per box. Take away {k}. How many {obj} now?",
    )),
    "buy_two": (_buy_two, (
        "A {i1} costs ${p1} and a {i2} costs ${p2}. How much do {n1} {i1s} and {n2} {i2s} cost, in dollars?",
        "{name} buys {n1} {i1s} at {p1} dollars each and {n2} {i2s} at {p2} dollars each. What is the total cost?",
        "What do {n1} {i1s} and {n2} {i2s} cost altogether if one {i1} is ${p1} and one {i2} is ${p2}?",
        "{i1s} are ${p1} each, {i2s} are ${p2} each. {name} gets {n1} {i1s} and {n2} {i2s}. How many dollars is that?",
    )),
    "change": (_change, (
        "{name} buys {n} {items} at ${p} each and pays with a ${bill} bill. How much change does {they} get?",
        "Each {item} costs {p} dollars. {name} buys {n} of them and hands over {bill} dollars. What is the change?",
        "How much change from ${bill} does {name} get after buying {n} {items} that cost ${p} each?",
        "{n} {items} at {p} dollars apiece, paid with {bill} dollars. How many dollars come back?",
    )),
    "wage": (_wage, (
        "{name} earns ${rate} an hour and works {hours} hours a day for {days} days. How much does {they} earn?",
        "{name} is paid {rate} dollars per hour. {They} works {hours} hours each day for {days} days. What is {their} "
        "total pay in dollars?",
        "At ${rate} per hour, how much does {name} make working {hours} hours a day for {days} days?",
        "For {days} days, {name} works {hours} hours daily at {rate} dollars an hour. How much money is that?",
    )),
    "speed": (_speed, (
        "A {vehicle} travels at {v} km per hour. How far does it go in {t} hours, in km?",
        "How many kilometres does a {vehicle} cover in {t} hours at {v} km/h?",
        "Going {v} km an hour for {t} hours, what distance does the {vehicle} travel?",
        "A {vehicle} moves at a steady {v} km/h. What distance in km does it cover in {t} hours?",
    )),
    "convert": (_convert, (
        "How many {small} are in {n} {unit}?",
        "Convert {n} {unit} to {small}.",
        "{n} {unit} is how many {small}?",
        "Write {n} {unit} in {small}.",
    )),
    "rate_over_time": (_rate_over_time, (
        "{name} does {per} {thing} every {single}. How many {thing} is that in {n} {unit}?",
        "Every {single}, {name} makes {per} {thing}. How many {thing} does {they} make in {n} {unit}?",
        "If {name} manages {per} {thing} each {single}, how many {thing} will {they} have after {n} {unit}?",
        "{per} {thing} per {single}, for {n} {unit}. How many {thing} in total?",
    )),
    "scale": (_scale, (
        "One {what} needs {q} {unit}. How many {unit} are needed for {n} of them?",
        "To make {n} of the {what}, each needing {q} {unit}, how many {unit} do you need?",
        "A {what} takes {q} {unit}. How much is needed for {n}, in {unit}?",
        "If each {what} uses {q} {unit}, what do {n} use altogether?",
    )),
    "clock": (_clock, (
        "How many minutes are there between {t1} and {t2}?",
        "{event} starts at {t1} and ends at {t2} the same day. How many minutes long is it?",
        "From {t1} to {t2}, how many minutes pass?",
        "If {event} begins at {t1} and finishes at {t2}, how long does it last in minutes?",
    )),
    "percent_off": (_percent_off, (
        "A {item} costs ${price} and is on sale for {percent}% off. What is the sale price in dollars?",
        "The price of a {item} is {price} dollars. The shop gives {percent}% off. What does it cost now?",
        "With {percent}% off, how much is a {item} that normally costs ${price}?",
        "A {item} priced at {price} dollars is reduced by {percent}%. What is the new price?",
    )),
    "percent_of": (_percent_of, (
        "What is {percent}% of {total}?",
        "There are {total} {group}. {percent}% of them are new. How many is that?",
        "Find {percent} percent of {total}.",
        "Out of {total} {group}, {percent}% were chosen. How many were chosen?",
    )),
    "share": (_share, (
        "{name} has {a} {obj} and gets {b} more. {They} shares them equally among {k} friends. How many does each "
        "friend get?",
        "{a} {obj} plus {b} {obj} are split evenly between {k} children. How many does each child get?",
        "If {k} people share {a} {obj} and another {b} {obj} equally, how many {obj} does each person get?",
        "{name} collects {a} {obj} on Monday and {b} on Tuesday, then divides them equally into {k} groups. How many "
        "are in each group?",
    )),
    "compare": (_compare, (
        "{n1} has {a} {obj}. {n2} has {more} {word} than {n1}. How many {obj} do they have together?",
        "{n2} has {more} {word} {obj} than {n1}, who has {a}. How many {obj} do the two have in total?",
        "{n1} owns {a} {obj}, and {n2} owns {more} {word}. What is their combined total?",
        "Together, how many {obj} do {n1} and {n2} have, if {n1} has {a} and {n2} has {more} {word} than {n1}?",
    )),
    "totals": (_totals, (
        "A shop sold {list}. How many {what} did it sell that day?",
        "The stall sold {what}: {list}. What was the total?",
        "How many {what} were sold in all, if the shop sold {list}?",
        "Sales of {what} were {list}. Add them up: how many in total?",
    )),
    "unit_price": (_unit_price, (
        "{n} {items} cost ${cost}. How much do {m} {items} cost?",
        "If {n} {items} are {cost} dollars, what is the price of {m} {items}?",
        "A pack of {n} {items} costs {cost} dollars. At the same price each, what do {m} cost?",
        "{m} {items} at the same rate as {n} for ${cost}: how many dollars?",
    )),
}  # fmt: skip
