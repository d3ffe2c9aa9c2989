"""Write the bundled sample datasets (deterministic: the same bytes on every run).

    python -m lora_core.samples.make_samples            # rewrites the files next to this script
    python -m lora_core.samples.make_samples OUT_DIR    # writes them somewhere else (the tests compare bytes)

Files:
- sentiment-2.csv   text,label   600 short reviews, labels negative / positive (300 each)
- sentiment-3.csv   text,label   600 short reviews, labels negative / neutral / positive (200 each)
- instructions.jsonl prompt,response  200 small instruction/answer pairs (8 task kinds, 25 each), every answer
  one line of JSON: {"task": <kind>, "answer": <text>} (a format SmolLM2-Instruct does not use by itself)

The sentiment rows mix easy sentences ("the plot was dull.") with negations ("the plot was not dull.") and
contrasts ("the cast was superb, but the ending was tedious.") whose label follows the clause after "but",
so a pretrained encoder learns the set well above chance in a few epochs but not trivially at step 0.
"""
from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1234

SUBJECTS = [
    "the movie", "this film", "the acting", "the soundtrack", "the plot", "the ending", "the cast", "the dialogue",
    "the cinematography", "the story", "the pacing", "the sequel", "the finale", "the script", "the lead actor",
    "the restaurant", "the service", "the food", "the dessert", "the hotel room", "the staff", "this book",
    "the first chapter", "this phone", "the battery life", "the screen", "the camera", "the headphones",
    "the concert", "the museum tour", "the game", "the level design", "the new album", "the opening song",
]
POSITIVE = [
    "wonderful", "delightful", "brilliant", "charming", "gripping", "superb", "heartfelt", "excellent",
    "moving", "clever", "fresh", "stunning", "lovely", "memorable", "satisfying", "impressive", "fantastic",
    "warm", "beautiful", "fun",
]
NEGATIVE = [
    "dull", "tedious", "clumsy", "boring", "awful", "forgettable", "bland", "disappointing", "messy",
    "painful", "lifeless", "shallow", "predictable", "sloppy", "annoying", "weak", "terrible", "cold",
    "ugly", "tiresome",
]
NEUTRAL = [
    "okay", "average", "passable", "ordinary", "so-so", "unremarkable", "middling", "fine, nothing more",
    "standard", "acceptable",
]
ADVERBS = ["", "really ", "truly ", "quite ", "absolutely ", "rather ", "very ", "pretty "]
POS_VERBS = ["I loved", "I enjoyed", "I adored", "we were delighted by", "I would happily recommend"]
NEG_VERBS = ["I hated", "I regretted", "I could not stand", "we were let down by", "I would never recommend"]
OPENERS = ["", "honestly, ", "overall, ", "to be fair, ", "in the end, ", "frankly, "]
NEUTRAL_FACTS = [
    "{s} runs about two hours.", "{s} came out last {m}.", "I saw {s} on a {d}.", "{s} is in English.",
    "{s} was reviewed in the {m} issue.", "we talked about {s} on {d}.", "{s} is available from {m}.",
    "my friend mentioned {s} on {d}.",
]
MONTHS = ["january", "march", "may", "july", "september", "november"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _simple(rng: random.Random, label: str) -> str:
    words = POSITIVE if label == "positive" else NEGATIVE
    s, adv, adj = rng.choice(SUBJECTS), rng.choice(ADVERBS), rng.choice(words)
    form = rng.randrange(4)
    if form == 0:
        return f"{rng.choice(OPENERS)}{s} was {adv}{adj}."
    if form == 1:
        return f"I found {s} {adv}{adj}."
    if form == 2:
        return f"{s} is {adj} from start to finish."
    verbs = POS_VERBS if label == "positive" else NEG_VERBS
    return f"{rng.choice(verbs)} {s}."


def _negated(rng: random.Random, label: str) -> str:
    # "not dull" reads as mildly positive, "not great" as negative: the label is the opposite of the adjective
    words = NEGATIVE if label == "positive" else POSITIVE
    s, adj = rng.choice(SUBJECTS), rng.choice(words)
    form = rng.randrange(3)
    if form == 0:
        return f"{rng.choice(OPENERS)}{s} was not {adj} at all."
    if form == 1:
        return f"{s} was never {adj}."
    return f"I would not call {s} {adj}."


def _contrast(rng: random.Random, label: str) -> str:
    # the clause after "but" decides the label
    first, last = (NEGATIVE, POSITIVE) if label == "positive" else (POSITIVE, NEGATIVE)
    s1, s2 = rng.sample(SUBJECTS, 2)
    return f"{s1} was {rng.choice(first)}, but {s2} was {rng.choice(ADVERBS)}{rng.choice(last)}."


def _neutral(rng: random.Random) -> str:
    s = rng.choice(SUBJECTS)
    form = rng.randrange(3)
    if form == 0:
        return f"{rng.choice(OPENERS)}{s} was {rng.choice(NEUTRAL)}."
    if form == 1:  # mixed feelings in one breath
        return f"{s} was {rng.choice(POSITIVE)} in places and {rng.choice(NEGATIVE)} in others."
    return rng.choice(NEUTRAL_FACTS).format(s=s, m=rng.choice(MONTHS), d=rng.choice(DAYS))


def _polar(rng: random.Random, label: str) -> str:
    kind = rng.random()
    if kind < 0.55:
        return _simple(rng, label)
    if kind < 0.78:
        return _negated(rng, label)
    return _contrast(rng, label)


def sentiment_rows(labels: tuple[str, ...], per_label: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows, seen = [], set()
    for label in labels:
        made = 0
        while made < per_label:
            text = _cap(_neutral(rng) if label == "neutral" else _polar(rng, label))
            if text in seen:
                continue
            seen.add(text)
            rows.append((text, label))
            made += 1
    rng.shuffle(rows)
    return rows


# -- instructions ---------------------------------------------------------------------------------------------

WORDS = ["river", "garden", "pencil", "window", "candle", "rocket", "basket", "silver", "planet", "forest",
         "button", "ladder", "mirror", "castle", "orange", "pillow", "bridge", "jacket", "violin", "marble",
         "tunnel", "anchor", "harbor", "meadow", "lantern"]
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "early": "late",
             "open": "closed", "full": "empty", "high": "low", "strong": "weak", "old": "new", "loud": "quiet",
             "hard": "soft", "wet": "dry", "rich": "poor", "near": "far", "up": "down", "long": "short",
             "clean": "dirty", "thick": "thin", "first": "last", "true": "false", "win": "lose", "buy": "sell",
             "push": "pull"}
COLORS = {"the sky on a clear day": "blue", "fresh grass": "green", "snow": "white", "coal": "black",
          "a ripe banana": "yellow", "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow",
          "milk": "white", "a carrot": "orange", "a strawberry": "red", "a frog": "green", "the night sky": "black",
          "a blueberry": "blue", "chocolate": "brown", "a pumpkin": "orange", "an emerald": "green",
          "a ruby": "red", "the sun in a drawing": "yellow", "a polar bear": "white", "tree bark": "brown",
          "a lime": "green", "a crow": "black", "a sapphire": "blue", "a coffee bean": "brown"}
NAMES = ["Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Liam",
         "Maya", "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Wen", "Yusuf", "Zoe"]
PHRASES = ["good morning", "see you soon", "happy birthday", "thank you very much", "welcome home",
           "well done", "safe travels", "enjoy your meal", "have a nice day", "good luck",
           "nice to meet you", "get well soon", "best wishes", "take care", "congratulations",
           "sleep well", "keep going", "merry winter", "all the best", "cheers", "bon voyage",
           "stay warm", "good night", "see you later", "have fun"]


# The format the instruction sample teaches: every answer is one line of JSON naming the kind of task and the
# answer. A chat model answers these prompts in free prose, so one epoch's change shows at a glance.
FORMAT_KEYS = ("task", "answer")
# Held out of the sample (no row uses these words, names or sums): the fixed prompts generated before and after.
EVAL_PROMPTS = (
    "What is 17 plus 25?",
    "Give the opposite of 'heavy'.",
    "What color is a ripe cherry?",
    "Write a short greeting for Alex.",
    "Is this review positive or negative? The soundtrack was wonderful and the ending made me smile.",
)


def _answer(task: str, answer: str) -> str:
    return json.dumps({"task": task, "answer": answer}, ensure_ascii=False)


def instruction_rows(seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []

    def add(prompt: str, task: str, answer: str) -> None:
        rows.append({"prompt": prompt, "response": _answer(task, answer)})

    for w in WORDS:
        add(f"Reverse the word '{w}'.", "reverse", w[::-1])
        add(f"How many letters are in '{w}'?", "count", f"'{w}' has {len(w)} letters.")
    sums = set()
    while len(sums) < 25:
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        if (a, b) != (17, 25) and (a, b) not in sums:
            sums.add((a, b))
    for a, b in sorted(sums):
        add(f"What is {a} plus {b}?", "arithmetic", f"{a} plus {b} is {a + b}.")
    for word, opposite in OPPOSITES.items():
        add(f"Give the opposite of '{word}'.", "opposite", opposite)
    for thing, color in COLORS.items():
        add(f"What color is {thing}?", "color", f"{_cap(thing)} is {color}.")
    for name in NAMES:
        add(f"Write a short greeting for {name}.", "greeting", f"Hello, {name}! It is lovely to see you today.")
    for phrase in PHRASES:
        add(f"Write in capital letters: {phrase}", "capitals", phrase.upper())
    for text, label in sentiment_rows(("negative", "positive"), 13, seed + 1)[:25]:
        add(f"Is this review positive or negative? {text}", "sentiment", label)
    rng.shuffle(rows)
    return rows


def follows_format(text: str) -> bool:
    """Whether an answer is in the sample's format: one JSON object with exactly the keys task and answer."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return False
    return isinstance(value, dict) and tuple(value) == FORMAT_KEYS and all(isinstance(v, str) for v in value.values())


# -- writing ----------------------------------------------------------------------------------------------------

def _csv_bytes(rows: list[tuple[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_samples(out_dir: Path = HERE) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "sentiment-2.csv": _csv_bytes(sentiment_rows(("negative", "positive"), 300, SEED)),
        "sentiment-3.csv": _csv_bytes(sentiment_rows(("negative", "neutral", "positive"), 200, SEED + 7)),
        "instructions.jsonl": _jsonl_bytes(instruction_rows(SEED + 13)),
    }
    written = {}
    for name, data in files.items():
        (out_dir / name).write_bytes(data)
        written[name] = out_dir / name
    return written


if __name__ == "__main__":
    for path in write_samples(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE).values():
        print(path)
