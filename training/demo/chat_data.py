"""Chat domain: instruction following and output formatting, as {"messages": [user, assistant]} rows.

Tasks: bulleted and numbered lists, upper/lower/title case rewrites, JSON replies with given keys, word counts,
word reversal and sorting, and short greetings. Every reply is fully determined by the instruction, so the
domain teaches format-following rather than facts.
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


def _bullets(rng: random.Random) -> tuple[str, str]:
    category = rng.choice(sorted(CATEGORIES))
    k = rng.randint(2, 5)
    items = rng.sample(CATEGORIES[category], k)
    hint = f" Use these: {', '.join(items)}." if rng.random() < 0.5 else ""
    return f"List {NUMBER_WORDS[k]} {category} as bullets.{hint}", "\n".join(f"- {x}" for x in items)


def _numbered(rng: random.Random) -> tuple[str, str]:
    category = rng.choice(sorted(CATEGORIES))
    items = rng.sample(CATEGORIES[category], rng.randint(2, 5))
    return f"Number these items: {', '.join(items)}.", "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))


def _case(rng: random.Random) -> tuple[str, str]:
    text = sentence(rng)
    kind = rng.randrange(3)
    if kind == 0:
        return f"Rewrite in uppercase: {text}", text.upper()
    if kind == 1:
        return f"Rewrite in lowercase: {text.upper()}", text.lower()
    return f"Rewrite in title case: {text.lower()}", text.title()


def _json(rng: random.Random) -> tuple[str, str]:
    name, age, city, job = rng.choice(NAMES), rng.randint(18, 80), rng.choice(CITIES), rng.choice(JOBS)
    fields = {"name": name, "age": age, "city": city, "job": job}
    keys = rng.sample(sorted(fields), rng.randint(2, 4))
    prose = f"{name} is a {age} year old {job} who lives in {city}."
    reply = json.dumps({k: fields[k] for k in keys})
    return f"Reply in JSON with keys {', '.join(keys)}: {prose}", reply


def _count_words(rng: random.Random) -> tuple[str, str]:
    text = sentence(rng)
    n = len(text.split())
    return f"How many words are in this sentence? {text}", f"The sentence has {n} words."


def _reverse_words(rng: random.Random) -> tuple[str, str]:
    category = rng.choice(sorted(CATEGORIES))
    items = rng.sample(CATEGORIES[category], rng.randint(3, 6))
    return f"Reverse the order of these words: {' '.join(items)}", " ".join(reversed(items))


def _sort_words(rng: random.Random) -> tuple[str, str]:
    category = rng.choice(sorted(CATEGORIES))
    items = rng.sample(CATEGORIES[category], rng.randint(3, 6))
    return f"Sort alphabetically, comma separated: {' '.join(items)}", ", ".join(sorted(items, key=str.lower))


def _greeting(rng: random.Random) -> tuple[str, str]:
    name, occasion = rng.choice(NAMES), rng.choice(("birthday", "new job", "graduation", "wedding", "recovery"))
    style = rng.choice(("short", "formal", "cheerful"))
    if style == "short":
        return f"Write a short note to {name} about their {occasion}.", f"Congratulations on your {occasion}, {name}!"
    if style == "formal":
        return (
            f"Write a formal one-line message to {name} about their {occasion}.",
            f"Dear {name}, please accept my warm congratulations on your {occasion}.",
        )
    return f"Write a cheerful message to {name} about their {occasion}.", f"Hooray, {name}! Enjoy your {occasion}!"


TASKS = (_bullets, _numbered, _case, _json, _count_words, _reverse_words, _sort_words, _greeting)


def sample(rng: random.Random) -> dict:
    """One instruction-following exchange in the "messages" format."""
    user, assistant = rng.choice(TASKS)(rng)
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
