"""Chat domain: instruction following and output formatting, as {"messages": [user, assistant]} rows.

Tasks: bulleted and numbered lists, upper/lower case rewrites, JSON replies with given keys, word counts, word
reversal and sorting, capitals of countries, and short greetings. Where the reply is fully determined by the
instruction the row carries it as "answer" (scored by exact match after whitespace normalisation); open-ended rows
(a list of any three fruits, a greeting) carry none. Each kind has several phrasings; the last is held out of
training (`training.demo.sampling`).
"""

from __future__ import annotations

import json
import random

from training.demo.lexicon import NAMES, sentence

CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruits": ("apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "pear", "plum", "peach", "kiwi"),
    "colours": ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown", "grey"),
    "animals": ("cat", "dog", "horse", "rabbit", "eagle", "whale", "tiger", "mouse", "owl", "fox", "bear", "frog"),
    "planets": ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"),
    "vegetables": ("carrot", "potato", "onion", "pea", "bean", "leek", "cabbage", "spinach", "pepper", "radish"),
    "sports": ("tennis", "football", "rugby", "golf", "hockey", "cricket", "rowing", "cycling", "boxing", "judo"),
    "instruments": ("piano", "violin", "guitar", "flute", "drum", "trumpet", "cello", "harp", "oboe", "banjo"),
    "tools": ("hammer", "saw", "drill", "wrench", "chisel", "pliers", "ruler", "level", "screwdriver", "file"),
}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
CITIES = ("Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Quito", "Rome", "Dakar", "Hanoi", "Perth", "Bern", "Accra")
JOBS = ("teacher", "nurse", "pilot", "baker", "engineer", "farmer", "artist", "chef", "driver", "lawyer")


CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
    ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Ireland", "Dublin"), ("India", "New Delhi"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("Mexico", "Mexico City"), ("Sweden", "Stockholm"),
    ("Austria", "Vienna"), ("Cuba", "Havana"), ("Chile", "Santiago"), ("Thailand", "Bangkok"), ("Turkey", "Ankara"),
)  # fmt: skip
Problem = tuple[dict, str, str | None]  # (fields, reply, answer or None when the reply is open-ended)


def _bullets(rng: random.Random) -> Problem:
    category = rng.choice(sorted(CATEGORIES))
    k = rng.randint(2, 5)
    items = rng.sample(CATEGORIES[category], k)
    reply = "\n".join(f"- {x}" for x in items)
    return {"k": NUMBER_WORDS[k], "category": category, "items": ", ".join(items)}, reply, reply


def _bullets_open(rng: random.Random) -> Problem:
    category = rng.choice(sorted(CATEGORIES))
    k = rng.randint(2, 5)
    reply = "\n".join(f"- {x}" for x in rng.sample(CATEGORIES[category], k))
    return {"k": NUMBER_WORDS[k], "category": category}, reply, None


def _numbered(rng: random.Random) -> Problem:
    category = rng.choice(sorted(CATEGORIES))
    items = rng.sample(CATEGORIES[category], rng.randint(2, 5))
    reply = "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))
    return {"items": ", ".join(items)}, reply, reply


def _upper(rng: random.Random) -> Problem:
    text = sentence(rng)
    return {"text": text}, text.upper(), text.upper()


def _lower(rng: random.Random) -> Problem:
    text = sentence(rng)
    return {"text": text.upper()}, text.lower(), text.lower()


def _json(rng: random.Random) -> Problem:
    name, age, city, job = rng.choice(NAMES), rng.randint(18, 80), rng.choice(CITIES), rng.choice(JOBS)
    fields = {"name": name, "age": age, "city": city, "job": job}
    keys = rng.sample(sorted(fields), rng.randint(2, 4))
    reply = json.dumps({k: fields[k] for k in keys})
    return {"keys": ", ".join(keys), "prose": f"{name} is a {age} year old {job} who lives in {city}."}, reply, reply


def _count_words(rng: random.Random) -> Problem:
    text = sentence(rng)
    n = len(text.split())
    return {"text": text}, f"The sentence has {n} words.", f"The sentence has {n} words."


def _reverse_words(rng: random.Random) -> Problem:
    items = rng.sample(CATEGORIES[rng.choice(sorted(CATEGORIES))], rng.randint(3, 6))
    reply = " ".join(reversed(items))
    return {"words": " ".join(items)}, reply, reply


def _sort_words(rng: random.Random) -> Problem:
    items = rng.sample(CATEGORIES[rng.choice(sorted(CATEGORIES))], rng.randint(3, 6))
    reply = ", ".join(sorted(items, key=str.lower))
    return {"words": " ".join(items)}, reply, reply


def _capital(rng: random.Random) -> Problem:
    country, city = rng.choice(CAPITALS)
    reply = f"The capital of {country} is {city}."
    return {"country": country}, reply, reply


def _greeting(rng: random.Random) -> Problem:
    name, occasion = rng.choice(NAMES), rng.choice(("birthday", "new job", "graduation", "wedding", "recovery"))
    return {"name": name,
            "occasion": occasion}, f"Congratulations on your {occasion}, {name}! Wishing you the best.", None


# kind -> (problem, phrasings); the last phrasing of each kind is held out of training
KINDS: dict[str, tuple] = {
    "bullets": (_bullets, (
        "List {k} {category} as bullets. Use these: {items}.",
        "Make a bulleted list of these {category}: {items}.",
        "Put {items} into a bullet list, one per line.",
    )),
    "bullets_open": (_bullets_open, (
        "List {k} {category} as bullets.",
        "Give me {k} {category} as a bulleted list.",
        "Name {k} {category}, one bullet each.",
    )),
    "numbered": (_numbered, (
        "Number these items: {items}.",
        "Make a numbered list of: {items}.",
        "Write {items} as a numbered list.",
    )),
    "upper": (_upper, (
        "Rewrite in uppercase: {text}",
        "Convert this sentence to capital letters: {text}",
        "Change every letter to upper case: {text}",
    )),
    "lower": (_lower, (
        "Rewrite in lowercase: {text}",
        "Convert this to small letters: {text}",
        "Make this text all lower case: {text}",
    )),
    "json": (_json, (
        "Reply in JSON with keys {keys}: {prose}",
        "Extract {keys} from this text as a JSON object: {prose}",
        "Give a JSON object with the fields {keys} for: {prose}",
    )),
    "count_words": (_count_words, (
        "How many words are in this sentence? {text}",
        "Count the words in: {text}",
        "What is the word count of the following sentence? {text}",
    )),
    "reverse_words": (_reverse_words, (
        "Reverse the order of these words: {words}",
        "Write these words backwards in order: {words}",
        "Say these words from last to first: {words}",
    )),
    "sort_words": (_sort_words, (
        "Sort alphabetically, comma separated: {words}",
        "Put these words in alphabetical order, separated by commas: {words}",
        "Alphabetize the following words and list them with commas: {words}",
    )),
    "capital": (_capital, (
        "What is the capital of {country}?",
        "Which city is the capital of {country}?",
        "Name the capital city of {country}.",
        "Tell me the capital of {country}.",
    )),
    "greeting": (_greeting, (
        "Write a short note to {name} about their {occasion}.",
        "Send {name} a one-line message for their {occasion}.",
        "Congratulate {name} on the {occasion} in one sentence.",
    )),
}  # fmt: skip


def render(kind: str, phrasing: int, rng: random.Random) -> dict:
    """One exchange: {"prompt", "completion"} and, when the reply is determined, "answer" (the expected reply)."""
    problem, phrasings = KINDS[kind]
    fields, reply, answer = problem(rng)
    out = {"prompt": phrasings[phrasing].format(**fields), "completion": reply}
    if answer is not None:
        out["answer"] = answer
    return out
