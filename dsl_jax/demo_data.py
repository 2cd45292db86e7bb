"""A small summarization-style corpus that the package generates deterministically.

Each example is a short "news report" of six to eight sentences about an event: who did
what, where and when, what someone said about it, how the crowd and the weather were,
with a distractor sentence or two; its summary is three sentences (about 30 words, 32-39
tokens of the demo tokenizer) that restate the facts in a fixed order, in other words
than the document's. Summaries several times longer than a sampler's step budget are
what makes the length-quality trade-off of one-block remasking visible (docs/evaluation.md).
The first words of the source share some facts with the summary but not the sentences,
so the lead baseline scores above zero and a model that learned the task clearly above it.
"""

from __future__ import annotations

import random

NAMES = ["Anna", "Boris", "Clara", "David", "Elena", "Farid", "Grace", "Hugo", "Irene", "Jonas",
         "Karin", "Leo", "Maria", "Nils", "Olga", "Pavel", "Rosa", "Simon", "Tara", "Victor"]
CITIES = ["Lisbon", "Oslo", "Vienna", "Dublin", "Prague", "Madrid", "Berlin", "Warsaw", "Athens",
          "Geneva", "Milan", "Riga", "Sofia", "Tallinn", "Zagreb", "Lyon"]
ROLES = ["the mayor", "a teacher", "a farmer", "the coach", "a doctor", "the baker", "a pilot",
         "the judge", "a singer", "the captain"]
THINGS = ["a new bridge", "a small library", "a solar farm", "a music school", "a city park",
          "a bike lane", "a night market", "a science museum", "a clean river", "a train line"]
VERBS = ["opened", "announced", "visited", "praised", "funded", "planned", "finished", "inspected"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WEATHER = ["The weather was cold and windy", "It rained for most of the day",
           "The sun was shining all morning", "A light snow fell in the evening",
           "The streets were busy with tourists", "Local shops stayed open late"]
CROWDS = ["Many people came to watch", "Only a few neighbours were there",
          "Children sang a short song", "A band played in the square",
          "Reporters asked many questions", "The crowd cheered loudly"]


QUOTES = [("said the plan took two years", "said the plan had taken two years"),
          ("thanked everyone who helped", "thanked everyone who had helped"),
          ("hoped more towns would follow", "hoped that more towns would follow"),
          ("called it a proud moment", "called it a proud moment for the town"),
          ("warned that costs were rising", "warned that the costs were rising")]
DISTRACTORS = ["A football match in the next town was cancelled.",
               "Prices at the market went up again.", "A new cafe opened on the main road.",
               "The local paper printed a crossword.", "A lost dog was found near the station.",
               "The school choir is rehearsing for a concert."]


def example(r: random.Random) -> dict:
    name, city, role = r.choice(NAMES), r.choice(CITIES), r.choice(ROLES)
    thing, verb, day = r.choice(THINGS), r.choice(VERBS), r.choice(DAYS)
    other = r.choice([n for n in NAMES if n != name])
    quote, quote_summary = r.choice(QUOTES)
    weather, crowd = r.choice(WEATHER), r.choice(CROWDS)
    opening = [f"On {day}, people in {city} gathered near the old square.",
               f"{city} had a busy {day} this week.",
               f"It was a {day} like many others in {city}."]
    core = f"{name}, {role}, {verb} {thing} in the centre of town."
    details = [f"{weather}.", f"{crowd}.", f"{other} {quote}."]
    r.shuffle(details)
    noise = r.sample(DISTRACTORS, r.randint(1, 2))
    middle = details[:1] + noise
    r.shuffle(middle)
    sentences = [r.choice(opening), *middle, core, *details[1:]]
    summary = (f"{name}, {role}, {verb} {thing} in {city} on {day}. "
               f"{other} {quote_summary}. {crowd} and {weather[0].lower() + weather[1:]}.")
    return {"document": " ".join(sentences), "summary": summary}


def dataset(n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    return [example(r) for _ in range(n)]


def train_split(n: int = 4000) -> list[dict]:
    return dataset(n, seed=1)


def test_split(n: int = 64, n_train: int = 4000) -> list[dict]:
    """Held-out examples: a different seed, and none whose document is among the first
    ``n_train`` training examples."""
    train = {e["document"] for e in train_split(n_train)}
    return [e for e in dataset(4 * n, seed=2) if e["document"] not in train][:n]


def held_out_documents(n: int = 64) -> list[str]:
    """The documents of :func:`test_split`: clean texts for the robustness test when none
    are given, so it runs anywhere (pass real text for real numbers)."""
    return [e["document"] for e in test_split(n)]


def tokenizer_corpus() -> list[str]:
    """Text to train the demo tokenizer on: documents, summaries, the prompt wording."""
    out = []
    for e in dataset(2000, seed=3):
        out += [e["document"], e["summary"]]
    out += ["Summarize the following text in one sentence:", "user", "assistant"]
    return out
