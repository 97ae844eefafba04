"""Small word lists shared by the demo generators (names, objects, places), so examples vary in their wording."""

from __future__ import annotations

NAMES: tuple[str, ...] = (
    "Ada", "Ben", "Cara", "Dev", "Ella", "Finn", "Gina", "Hugo", "Iris", "Jon", "Kira", "Leo", "Maya", "Nico",
    "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Xena", "Yara", "Zane", "Lena", "Ravi",
    "Nora", "Ivan", "Mila", "Theo",
)  # fmt: skip

# name -> subject pronoun
PRONOUNS: dict[str, str] = {
    name: ("she" if name in {"Ada", "Cara", "Ella", "Gina", "Iris", "Kira", "Maya", "Pia", "Rosa", "Tara", "Uma",
                             "Xena", "Yara", "Lena", "Nora", "Mila"} else "he")
    for name in NAMES
}  # fmt: skip

SHOP_ITEMS: tuple[str, ...] = (
    "pencils", "notebooks", "apples", "erasers", "stickers", "muffins", "candles", "markers", "oranges", "cups",
    "plates", "folders", "batteries", "bottles of water", "rolls of tape", "tickets",
)  # fmt: skip

THINGS: tuple[str, ...] = ("bike", "game", "jacket", "book", "lamp", "backpack", "watch", "kite", "tent", "radio")

ADJECTIVES: tuple[str, ...] = (
    "quiet", "bright", "old", "small", "happy", "busy", "careful", "tired", "clever", "young", "brave", "calm",
)  # fmt: skip

NOUNS: tuple[str, ...] = (
    "teacher", "farmer", "doctor", "child", "painter", "pilot", "driver", "student", "baker", "cat", "dog", "robot",
)  # fmt: skip

VERBS: tuple[str, ...] = (
    "reads", "writes", "finds", "carries", "paints", "opens", "fixes", "cleans", "sells", "buys", "sends", "draws",
)  # fmt: skip

OBJECTS: tuple[str, ...] = (
    "a long letter", "the red box", "an old map", "a small boat", "the new chair", "a blue kite", "the heavy door",
    "a short story", "the broken clock", "a fresh loaf", "the garden gate", "a paper plane",
)  # fmt: skip

PLACES: tuple[str, ...] = (
    "in the garden", "at the market", "near the river", "in the kitchen", "at school", "on the bus",
    "in the library", "at the station", "on the roof", "by the window",
)  # fmt: skip


def sentence(rng) -> str:
    """A short random declarative sentence, e.g. "The busy baker paints a small boat near the river."."""
    return (
        f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
        f"{rng.choice(OBJECTS)} {rng.choice(PLACES)}."
    )
