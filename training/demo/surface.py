"""Surface variation for the demo's word problems, so the stacks learn the skill rather than a template's wording.

`vary(prompt, rng)` rewrites one generated prompt the way people actually ask:
  - a distractor sentence, with or without a number the steps must not use ("It was a rainy Tuesday.",
    "Her cousin is 9 years old."), before the problem or after its first sentence;
  - a framing prefix ("Question: ", "Can you work this out? ", "Word problem: ") or none;
  - the question moved to the front ("How many are left? Nina had ...") for prompts of several sentences.
Each change is drawn independently, so one problem kind shows many forms. The held-out *template* (the last phrasing
of each kind, `training.demo.sampling`) is varied the same way: held-out still means a wording never trained on.

`system_turn(rng)` optionally gives a row a system message (different assistants' framings), or None for the
model's default one.

`completion_framing(prompt, rng)` frames a problem as a raw `/v1/completions` prompt, with no chat template
("Q: ...\nA:", "Problem: ...\nSolution:", the bare text); it returns the prompt and the text the reply starts
with, so a reply begins on its own line whether or not the prompt ended with one.
"""

from __future__ import annotations

import random
import re

from training.demo.lexicon import NAMES, PRONOUNS

_PLAIN_DISTRACTORS: tuple[str, ...] = (
    "It was a rainy Tuesday.", "This happened last weekend.", "Everyone was in a good mood.",
    "The weather was sunny.", "It was the first day of spring.", "The shop was busy that morning.",
    "This is for a school exercise.", "Think about it carefully.", "The numbers are all exact.",
)  # fmt: skip

_NUMBER_DISTRACTORS: tuple[str, ...] = (
    "{name}'s cousin is {n} years old.", "The shop opened {n} years ago.", "{name} lives at number {n}.",
    "It was {n} degrees outside.", "The bus number was {n}.", "{name}'s class has {n} students.",
    "Room {n} was free that day.",
)  # fmt: skip

_PREFIXES: tuple[str, ...] = (
    "Question: ", "Solve this: ", "Word problem: ", "Can you work this out? ", "Quick question. ", "Please help: ",
    "Here is a problem. ", "Try this one: ", "I need help with this. ",
)  # fmt: skip

_SYSTEMS: tuple[str, ...] = (
    "You are a helpful assistant.", "You are a careful tutor. Show your working.",
    "You are a friendly assistant who answers clearly.", "Answer the user's question step by step.",
    "You are a patient teacher.",
)  # fmt: skip

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9$])")


# (prompt frame, what the reply starts with): the forms people send a base-style completion endpoint
_COMPLETION_FRAMES: tuple[tuple[str, str], ...] = (
    ("{p}", "\n"), ("{p}\n", ""), ("Question: {p}", "\n"), ("Q: {p}\nA:", "\n"), ("Problem: {p}\nSolution:", "\n"),
    ("{p}\nShow your working.\n", ""), ("Question: {p}\nAnswer:", "\n"), ("{p}\n\n", ""),
)  # fmt: skip


def completion_framing(prompt: str, rng: random.Random) -> tuple[str, str]:
    """(raw completion prompt, lead of the reply) for one problem statement (module doc)."""
    frame, lead = rng.choice(_COMPLETION_FRAMES)
    return frame.format(p=prompt), lead


def distractor(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(_PLAIN_DISTRACTORS)
    name = rng.choice(NAMES)
    text = rng.choice(_NUMBER_DISTRACTORS).format(name=name, n=rng.randint(3, 60))
    return text.replace("{they}", PRONOUNS[name])


def vary(prompt: str, rng: random.Random, p_distract: float = 0.3, p_prefix: float = 0.25,
         p_question_first: float = 0.2) -> str:
    """One varied form of `prompt` (module doc); the numbers the problem states are kept, in order."""
    parts = _SENTENCE.split(prompt.strip())
    if len(parts) >= 2 and parts[-1].endswith("?") and rng.random() < p_question_first:
        parts = [parts[-1], *parts[:-1]]
    if rng.random() < p_distract:
        parts.insert(rng.choice((0, 1)), distractor(rng))
    text = " ".join(parts)
    if rng.random() < p_prefix:
        text = rng.choice(_PREFIXES) + text
    return text


def system_turn(rng: random.Random, p: float = 0.25) -> str | None:
    """A system message for a row (or None: the chat template's default)."""
    return rng.choice(_SYSTEMS) if rng.random() < p else None
