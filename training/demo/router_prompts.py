"""Router-only prompts for the embedded demo: many wordings per domain, to teach the router what a domain's requests
look like beyond the stacks' generator templates. They never train a stack (they carry no answer worth learning).

    rows = router_prompts("medical", n=160, seed=0)     # [{"prompt": ..., "completion": ""}], distinct prompts
    write_router_files(work / "data" / "router", n, seed)   # {domain: (chat_file, raw_file)}

Why: the stacks' generators have a handful of phrasings per problem kind, so a router trained on their prompts alone
learns the phrasings, not the domain (measured on the first SmolLM2 bundle: 93.6% top-1 on held-out templates, 75%
on 20 hand-written prompts). The recipe feeds these rows to the router as one-domain `[[router.mixed]]` sets, once
chat-rendered ("messages" rows, as /v1/chat/completions sends them) and once as raw text ("prompt_completion"
rows, as /v1/completions sends them).

What keeps the evaluation honest: the prompts are composed from the small topic generators below and surface
wrappers (greetings, "quick question", lowercase, no punctuation, ...), written for this module; the hand-written
evaluation set (tests/data/handwritten_prompts.jsonl) is never read here, and a test checks that no prompt of it
appears among these. The router's validation prompts stay the generators' held-out templates.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from training.demo.lexicon import NAMES, SHOP_ITEMS, THINGS
from training.demo.sampling import write_if_changed

Gen = Callable[[random.Random], str]


def _n(rng: random.Random, lo: int = 2, hi: int = 99) -> int:
    return rng.randint(lo, hi)


# --- math: arithmetic and everyday quantities, no clinical words -------------------------------------------------

def _m_ops(r: random.Random) -> str:
    a, b = _n(r, 10, 999), _n(r, 2, 99)
    return r.choice([f"what is {a} plus {b}", f"{a} + {b} = ?", f"add {a} and {b}", f"what's {a} minus {b}",
                     f"{a} - {b}", f"calculate {a} times {b}", f"{a} * {b}", f"multiply {b} by {a}",
                     f"what is {a * b} divided by {b}", f"{a * b} / {b} equals what", f"sum of {a} and {b}",
                     f"difference between {a} and {b}", f"product of {a} and {b}", f"how much is {a} x {b}"])


def _m_word(r: random.Random) -> str:
    name, item = r.choice(NAMES), r.choice(SHOP_ITEMS)
    a, b, c = _n(r, 3, 60), _n(r, 2, 9), _n(r, 2, 12)
    return r.choice([
        f"{name} buys {b} packs of {item} with {c} in each pack. How many {item} is that in total",
        f"{name} had {a + b} {item} and gave away {b}. How many are left",
        f"a shop sells {item} at {c} dollars each. what do {b} of them cost",
        f"{name} splits {a * b} {item} equally among {b} friends. how many does each friend get",
        f"there are {a} {item} in one box and {b} boxes. total?",
        f"{name} saves {c} dollars every week. How much after {b} weeks",
        f"a {r.choice(THINGS)} costs {a * 4} dollars and is on sale for 25% off. what is the sale price",
        f"{name} reads {c} pages a day. how many days to finish a {c * b}-page book",
    ])


def _m_misc(r: random.Random) -> str:
    a, b = _n(r, 2, 30), _n(r, 2, 30)
    return r.choice([
        f"what is {a}% of {b * 20}", f"find the average of {a}, {b} and {a + b}", f"solve for x: x + {a} = {a + b}",
        f"solve {b}x = {a * b}", f"what is {a} squared", f"square root of {a * a}",
                     f"simplify the fraction {a * b}/{b * b}",
        f"what is 1/{b} plus 1/{b}", f"area of a rectangle {a} by {b}", f"perimeter of a square with side {a}",
        f"round {a}.{b} to the nearest whole number", f"is {a * b + 1} an even or odd number",
        f"how many minutes are in {a} hours", f"convert {a} meters to centimeters", f"what is {a} cubed",
        f"a train goes {a * 10} km in {b} hours at constant speed. what is its speed in km per hour",
        f"what is the remainder when {a * b + 3} is divided by {b}", f"evaluate ({a} + {b}) * 2",
    ])


# --- medical: clinical words, drugs, patients, doses, vitals -------------------------------------------------------

DRUGS = ("amoxicillin", "ibuprofen", "paracetamol", "acetaminophen", "lisinopril", "atorvastatin", "warfarin",
         "insulin", "salbutamol", "omeprazole", "prednisone", "ceftriaxone", "vancomycin", "heparin", "morphine",
         "furosemide", "digoxin", "levothyroxine", "sertraline", "aspirin", "metoprolol", "cetirizine")
CONDITIONS = ("hypertension", "type 2 diabetes", "asthma", "pneumonia", "anemia", "migraine", "a urinary tract "
              "infection", "atrial fibrillation", "hypothyroidism", "dehydration", "sepsis", "an allergic reaction")
VITALS = ("blood pressure", "respiratory rate", "oxygen saturation", "body temperature", "fasting blood glucose",
          "heart rate in a newborn", "hemoglobin level", "sodium level", "white blood cell count")


def _d_dose(r: random.Random) -> str:
    kg, mg, drug = _n(r, 4, 95), r.choice([2, 5, 10, 15, 20, 25]), r.choice(DRUGS)
    who = r.choice(["a patient", "a child", "my daughter", "an elderly man", "a toddler", "the patient in bed 4",
                    "a woman", "an adult"])
    return r.choice([
        f"{who} weighs {kg} kg and needs {drug} at {mg} mg/kg. what dose should be given",
        f"dose calculation: {drug} {mg} mg per kg, weight {kg} kg",
        f"how many mg of {drug} for {who} of {kg} kg at {mg} mg per kilogram",
        f"the order is {drug} {mg * 50} mg and the vial holds {mg * 25} mg per mL. how many mL do I draw up",
        f"an IV of {kg * 10} mL must run over {r.choice([2, 4, 6, 8, 12])} hours. what is the infusion rate",
        f"{drug} tablets are {mg * 10} mg each and the prescription says {mg * 20} mg. how many tablets",
        f"{who} weighs {kg * 2} pounds. what is that in kg for dosing",
    ])


def _d_facts(r: random.Random) -> str:
    drug, cond, vital = r.choice(DRUGS), r.choice(CONDITIONS), r.choice(VITALS)
    return r.choice([
        f"what is {drug} used for", f"which drug class does {drug} belong to", f"side effects of {drug}?",
        f"what is the first-line treatment for {cond}", f"what are the symptoms of {cond}",
        f"what is a normal {vital}", f"normal range for {vital} in adults", f"how is {cond} diagnosed",
        f"can {drug} be taken during pregnancy", f"what does a low {vital} mean", f"is {cond} contagious",
        f"what is the antidote for {drug}", f"how does {drug} work in the body", f"what causes {cond}",
        f"signs of a {drug} overdose", f"what should a nurse monitor when giving {drug}",
        f"convert a temperature of {r.randint(36, 41)}.{r.randint(0, 9)} C to Fahrenheit for the patient chart",
        f"how many milligrams are in {r.randint(1, 9)} grams of {drug}",
    ])


# --- reasoning: orderings, syllogisms, conditionals, sequences, calendars, puzzles --------------------------------

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NONSENSE = ("florp", "zib", "quark", "dax", "wug", "blicket", "toma", "snark", "glim", "mib")


def _r_order(r: random.Random) -> str:
    a, b, c = r.sample(NAMES, 3)
    rel, inv = r.choice([("taller", "shortest"), ("older", "youngest"), ("faster", "slowest"),
                         ("heavier", "lightest"), ("richer", "poorest")])
    return r.choice([f"{a} is {rel} than {b} and {b} is {rel} than {c}. who is the {inv}",
                     f"if {c} is {rel} than {a}, and {a} is {rel} than {b}, who ranks first",
                     f"{a} finished before {b}. {c} finished after {b}. who finished last",
                     f"{a}, {b} and {c} sit in a row. {a} is left of {b}, {c} is right of {b}. who is in the middle"])


def _r_logic(r: random.Random) -> str:
    x, y, z = r.sample(NONSENSE, 3)
    p, q = r.choice([("it rains", "the grass is wet"), ("the alarm rings", "we wake up"),
                     ("the store is open", "the lights are on"), ("you study", "you pass")])
    return r.choice([f"all {x}s are {y}s and all {y}s are {z}s. are all {x}s {z}s",
                     f"no {x} is a {y}. every {z} is a {x}. can a {z} be a {y}",
                     f"some {x}s are {y}s. does it follow that some {y}s are {x}s",
                     f"if {p}, then {q}. {q[0].upper() + q[1:]} is false. what can we conclude",
                     f"if {p} then {q}. we know {q}. does that prove {p}",
                     f"true or false: if every {x} is a {y}, then every {y} is a {x}",
                     f"is this argument valid? all {x}s fly. Tom is a {x}. so Tom flies"])


def _r_seq(r: random.Random) -> str:
    a, d, k = _n(r, 1, 9), _n(r, 2, 7), r.choice([2, 3])
    arith = ", ".join(str(a + d * i) for i in range(5))
    geo = ", ".join(str(a * k**i) for i in range(4))
    day, n = r.choice(WEEKDAYS), _n(r, 2, 20)
    return r.choice([f"what number continues the pattern {arith}", f"find the next term: {geo}, ...",
                     f"complete the sequence {arith}, __", f"today is {day}. what day is it in {n} days",
                     f"{n} days ago it was {day}. what day is it now",
                     f"if the day after tomorrow is {day}, what was yesterday",
                     "a bat and a ball cost 1.10 together and the bat costs 1.00 more than the ball. "
                     "how much is the ball",
                     f"one of {r.choice(NAMES)} and {r.choice(NAMES)} always lies and the other always tells the "
                     "truth. how can you find out who is who with one question"])


# --- code: programming requests -----------------------------------------------------------------------------------

TASKS = ("reverses a string", "checks if a number is prime", "returns the largest item in a list",
         "counts the vowels in a word", "removes duplicates from a list", "computes the nth Fibonacci number",
         "checks whether a string is a palindrome", "flattens a nested list", "merges two sorted lists",
         "converts Celsius to Fahrenheit", "returns the sum of the digits of an integer", "sorts a list of tuples "
         "by their second item", "counts how often each word appears", "finds the index of an item in a list",
         "capitalizes every word in a sentence", "returns the even numbers from a list", "computes a factorial "
         "recursively", "checks if two strings are anagrams", "returns the average of a list of numbers")
LANGS = ("Python", "python", "Python 3")


def _c_write(r: random.Random) -> str:
    task, lang = r.choice(TASKS), r.choice(LANGS)
    return r.choice([f"write a {lang} function that {task}", f"can you code a function that {task} in {lang}",
                     f"implement def solve(x) which {task}", f"I need {lang} code that {task}",
                     f"give me a one-line {lang} lambda that {task}", f"how would I write a function that {task}",
                     f"show a {lang} snippet which {task}", f"define a function that {task}, with a docstring"])


def _c_misc(r: random.Random) -> str:
    v = r.choice(["x", "items", "nums", "s", "data"])
    return r.choice([f"what does `{v}[::-1]` do in Python", f"fix this code: for i in range(len({v}) print({v}[i])",
                     f"why does my python loop `while {v} > 0:` never stop",
                     f"explain list comprehensions with an example using {v}",
                     "write a unit test with assert for a function add(a, b)",
                     "what is the time complexity of binary search", "how do I read a file line by line in python",
                     f"convert this loop to a list comprehension: out = []; for n in {v}: out.append(n * 2)",
                     "what is the difference between a list and a tuple in python",
                     "write a regex that matches an email address", "how do I catch a KeyError in Python",
                     f"refactor: def f({v}): return len({v}) == 0"])


# --- chat: conversation, general knowledge, formatting and writing -------------------------------------------------

COUNTRIES = ("Brazil", "Argentina", "Vietnam", "Morocco", "Finland", "Denmark", "Colombia", "Nigeria", "Hungary",
             "Belgium", "New Zealand", "South Korea", "Ghana", "Iceland", "Nepal", "Uruguay")
TOPICS = ("octopuses", "the moon", "volcanoes", "honey bees", "the Eiffel Tower", "penguins", "rainbows",
          "the ocean", "chocolate", "dinosaurs", "coffee", "the Sahara desert")


def _t_talk(r: random.Random) -> str:
    name, topic = r.choice(NAMES), r.choice(TOPICS)
    return r.choice([f"hello there, my name is {name}", "good evening! what can you do", "thanks, that helped a lot",
                     f"tell me something interesting about {topic}",
                     f"what's the capital city of {r.choice(COUNTRIES)}",
                     f"write a short thank-you note to {name} for the flowers",
                     f"suggest a name for a {r.choice(THINGS)}"
                     " shop", "give me a motivational quote", f"tell me a joke about {topic}",
                     f"write a two-line poem about {topic}", "what should I cook for dinner tonight",
                     "recommend a good book for a rainy weekend", "how do you say thank you in Spanish",
                     f"describe {topic} in one sentence", f"write an invitation to {name}'s birthday party"])


def _t_format(r: random.Random) -> str:
    words = r.sample(("river", "candle", "maple", "orbit", "pepper", "tulip", "velvet", "hammock", "lantern"), 3)
    w = " ".join(words)
    return r.choice([f"make these uppercase: {w}", f"alphabetize: {w}", f"reverse the order of: {w}",
                     f"format as a numbered list: {', '.join(words)}", f"turn {', '.join(words)} into bullet points",
                     f"write {w} in lowercase", f"return JSON with keys item and count for: {words[0]}, 3",
                     f"how many words are in: {w}", f"name {r.choice(['two', 'three', 'four'])} kinds of flowers",
                     f"list some {r.choice(['birds', 'trees', 'board games', 'hobbies'])}, one per line",
                     f"summarize in one line: {r.choice(NAMES)} went to the market and bought {words[0]}s"])


GENERATORS: dict[str, tuple[Gen, ...]] = {
    "math": (_m_ops, _m_word, _m_misc),
    "medical": (_d_dose, _d_facts),
    "reasoning": (_r_order, _r_logic, _r_seq),
    "code": (_c_write, _c_misc),
    "chat": (_t_talk, _t_format),
}

# surface forms a user types around a request
WRAPPERS: tuple[str, ...] = (
    "{q}?", "{Q}?", "{Q}.", "Quick question: {q}?", "Hey, {q}?", "Can you help me? {Q}?", "Please answer: {q}",
    "{Q}, please.", "I was wondering, {q}?", "{q}", "{Q}? Thanks!", "Hi! {Q}?", "Could you tell me {q}?",
    "{Q}? Explain briefly.", "Help: {q}", "{Q} - any idea?",
)


def router_prompts(domain: str, n: int, seed: int = 0) -> list[dict]:
    """`n` distinct router-only rows of `domain` as {"prompt", "completion": ""}; identical for identical arguments."""
    gens = GENERATORS[domain]
    rng = random.Random(f"brainstacks-demo-router/{domain}/{seed}")
    seen: set[str] = set()
    rows: list[dict] = []
    for _ in range(200 * n + 1000):
        if len(rows) == n:
            break
        q = rng.choice(gens)(rng).rstrip("?. ")
        text = rng.choice(WRAPPERS).format(q=q, Q=q[0].upper() + q[1:])
        if text not in seen:
            seen.add(text)
            rows.append({"prompt": text, "completion": ""})
    return rows


def write_router_files(root: Path, n: int, seed: int = 0) -> dict[str, tuple[Path, Path]]:
    """ROOT/<domain>_chat.jsonl ("messages": the prompt as a user turn) and ROOT/<domain>_raw.jsonl (the raw
    prompt), rewritten only when their content changed; returns {domain: (chat_file, raw_file)}."""
    out = {}
    for domain in GENERATORS:
        rows = router_prompts(domain, n, seed)
        chat = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": "."}]}
                for r in rows]
        raw = [{"prompt": r["prompt"], "completion": "."} for r in rows]
        paths = (root / f"{domain}_chat.jsonl", root / f"{domain}_raw.jsonl")
        for path, data in zip(paths, (chat, raw), strict=True):
            write_if_changed(path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in data))
        out[domain] = paths
    return out
