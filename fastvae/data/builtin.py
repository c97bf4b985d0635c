"""Corpora the project generates itself (no download, no data file from elsewhere).

`grammar_corpus`: readable English-like review sentences from a small grammar with two known latent
factors, a topic (food, travel, movies, tech) and a sentiment (negative/positive). Labels are the
sentiment; `dataset.factors` holds both factors per sentence. A good latent code carries them, which
a linear probe on mu can measure, and reconstructions and interpolations are easy to read.

`synthetic_corpus`: the synthetic data of He et al. (2019): a 2-d latent z ~ N(0, I) and sentences
of 10 tokens over a 1,000-word vocabulary sampled from a randomly initialised one-layer LSTM
(parameters U(-1, 1)) that sees z as its initial state and at every step.
"""
from __future__ import annotations

import os
import random

import torch

from .corpus import Corpus, TextDataset
from .vocab import Vocab

TOPICS = {
    "food": {
        "nouns": ["pizza", "pasta", "soup", "burger", "salad", "steak", "bread", "coffee", "dessert", "sushi",
                  "sauce", "fries", "tacos", "menu", "waiter"],
        "places": ["restaurant", "cafe", "diner", "bakery", "bistro"],
        "pos": ["delicious", "fresh", "tasty", "perfect", "flavorful"],
        "neg": ["bland", "cold", "greasy", "stale", "overcooked"],
        "verbs": ["ate", "ordered", "tried", "shared"],
    },
    "travel": {
        "nouns": ["hotel", "room", "flight", "beach", "view", "pool", "tour", "guide", "train", "bed",
                  "staff", "lobby", "trip", "city", "airport"],
        "places": ["resort", "hostel", "island", "station", "town"],
        "pos": ["beautiful", "clean", "relaxing", "spacious", "charming"],
        "neg": ["dirty", "noisy", "crowded", "cramped", "delayed"],
        "verbs": ["booked", "visited", "took", "explored"],
    },
    "movies": {
        "nouns": ["movie", "film", "plot", "actor", "ending", "script", "soundtrack", "scene", "sequel",
                  "director", "cast", "story", "trailer", "villain", "hero"],
        "places": ["theater", "cinema", "festival", "studio", "premiere"],
        "pos": ["brilliant", "moving", "funny", "gripping", "clever"],
        "neg": ["boring", "predictable", "confusing", "dull", "silly"],
        "verbs": ["watched", "saw", "rewatched", "streamed"],
    },
    "tech": {
        "nouns": ["phone", "laptop", "screen", "battery", "camera", "keyboard", "app", "update", "charger",
                  "speaker", "tablet", "printer", "router", "headset", "software"],
        "places": ["store", "shop", "website", "office", "outlet"],
        "pos": ["fast", "reliable", "sleek", "powerful", "intuitive"],
        "neg": ["slow", "buggy", "flimsy", "broken", "laggy"],
        "verbs": ["bought", "used", "returned", "tested"],
    },
}
SENTIMENT = {
    "pos": {
        "adj": ["great", "excellent", "wonderful", "amazing", "lovely", "fantastic"],
        "feel": ["loved", "enjoyed", "liked", "adored"],
        "openers": ["honestly", "overall", "wow", "happily", "luckily"],
        "closers": ["i will come back", "highly recommended", "worth every penny", "we will return",
                    "i would do it again"],
        "adverbs": ["really", "truly", "very", "so", "incredibly"],
    },
    "neg": {
        "adj": ["terrible", "awful", "horrible", "disappointing", "poor", "mediocre"],
        "feel": ["hated", "disliked", "regretted", "endured"],
        "openers": ["sadly", "honestly", "unfortunately", "overall", "frankly"],
        "closers": ["never again", "avoid it", "a waste of money", "we will not return",
                    "i want a refund"],
        "adverbs": ["really", "truly", "very", "so", "incredibly"],
    },
}
PEOPLE = ["friend", "wife", "husband", "brother", "sister", "mom", "dad", "boss", "kids", "partner"]
TIMES = ["yesterday", "last week", "on sunday", "this morning", "last night", "today"]
SENTIMENT_NAMES = ["negative", "positive"]


def _sentence(rng: random.Random, topic: str, sentiment: str) -> str:
    t, s = TOPICS[topic], SENTIMENT[sentiment]
    adj = lambda: rng.choice(t[sentiment] + s["adj"])  # noqa: E731
    noun, noun2 = rng.sample(t["nouns"], 2)
    templates = [
        lambda: f"the {noun} was {rng.choice(s['adverbs'])} {adj()} .",
        lambda: f"i {rng.choice(s['feel'])} the {noun} at this {rng.choice(t['places'])} .",
        lambda: f"{rng.choice(s['openers'])} , the {noun} was {adj()} and the {noun2} was {adj()} .",
        lambda: f"we {rng.choice(t['verbs'])} the {noun} {rng.choice(TIMES)} and it was {adj()} .",
        lambda: f"my {rng.choice(PEOPLE)} said the {noun} is {adj()} , {rng.choice(s['closers'])} .",
        lambda: f"the {noun} and the {noun2} were {rng.choice(s['adverbs'])} {adj()} .",
        lambda: f"{rng.choice(s['adj'])} {rng.choice(t['places'])} , {adj()} {noun} , {rng.choice(s['closers'])} .",
        lambda: f"i {rng.choice(t['verbs'])} a {noun} here {rng.choice(TIMES)} . {rng.choice(s['closers'])} .",
    ]
    return rng.choice(templates)()


def _grammar_split(rng: random.Random, n: int, name: str, vocab: Vocab | None):
    topics = list(TOPICS)
    token_lists, sentiment, topic_ids = [], [], []
    for _ in range(n):
        ti, si = rng.randrange(len(topics)), rng.randrange(2)
        token_lists.append(_sentence(rng, topics[ti], "pos" if si else "neg").split())
        sentiment.append(si)
        topic_ids.append(ti)
    return token_lists, torch.tensor(sentiment), torch.tensor(topic_ids)


def grammar_corpus(seed: int = 0, n_train: int = 10000, n_valid: int = 1000, n_test: int = 1000) -> Corpus:
    """The built-in review corpus (see the module docstring). Same seed, same corpus."""
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if n < 1:
            raise ValueError(f"grammar_corpus: {name} must be >= 1, got {n}")
    rng = random.Random(seed)
    raw = {name: _grammar_split(rng, n, name, None)
           for name, n in (("train", n_train), ("valid", n_valid), ("test", n_test))}
    vocab = Vocab.build(raw["train"][0])
    datasets = {}
    for name, (tokens, sentiment, topic) in raw.items():
        ds = TextDataset([torch.tensor(vocab.encode(t), dtype=torch.long) for t in tokens], sentiment, name,
                         SENTIMENT_NAMES)
        ds.factors = {"sentiment": sentiment, "topic": topic}
        datasets[name] = ds
    stats = {name: {"lines": len(ds), "empty_lines": 0, "truncated_lines": 0} for name, ds in datasets.items()}
    return Corpus(vocab, datasets["train"], datasets["valid"], datasets["test"], stats, SENTIMENT_NAMES)


@torch.no_grad()
def synthetic_corpus(seed: int = 0, n_train: int = 20000, n_valid: int = 10000, n_test: int = 10000,
                     vocab_size: int = 1000, length: int = 10, hidden: int = 50, emb: int = 50) -> Corpus:
    """He et al.'s synthetic data (module docstring). `dataset.factors["z"]` holds each sentence's latent."""
    if vocab_size < 2 or length < 1 or min(n_train, n_valid, n_test) < 1:
        raise ValueError("synthetic_corpus: vocab_size >= 2, length >= 1 and every split size >= 1 are required")
    gen = torch.Generator().manual_seed(seed)
    uniform = lambda *shape: torch.rand(*shape, generator=gen) * 2 - 1  # noqa: E731  U(-1, 1)
    embed, w_ih, w_hh = uniform(vocab_size, emb), uniform(4 * hidden, emb + 2), uniform(4 * hidden, hidden)
    bias, z_to_c, w_out = uniform(4 * hidden), uniform(hidden, 2), uniform(vocab_size, hidden)
    words = [f"w{i}" for i in range(vocab_size)]

    def sample(n):
        z = torch.randn(n, 2, generator=gen)
        c = z @ z_to_c.t()
        h = torch.tanh(c)
        token = torch.randint(vocab_size, (n,), generator=gen)
        out = []
        for _ in range(length):
            gates = torch.cat([embed[token], z], 1) @ w_ih.t() + h @ w_hh.t() + bias
            i, f, g, o = gates.chunk(4, 1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
            token = torch.multinomial(torch.softmax(h @ w_out.t(), -1), 1, generator=gen).squeeze(1)
            out.append(token)
        return torch.stack(out, 1), z

    splits = {}
    for name, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        ids, z = sample(n)
        splits[name] = ([[words[i] for i in row] for row in ids.tolist()], z)
    vocab = Vocab.build(splits["train"][0])
    datasets = {}
    for name, (tokens, z) in splits.items():
        ds = TextDataset([torch.tensor(vocab.encode(t), dtype=torch.long) for t in tokens], None, name)
        ds.factors = {"z": z}
        datasets[name] = ds
    stats = {name: {"lines": len(ds), "empty_lines": 0, "truncated_lines": 0} for name, ds in datasets.items()}
    return Corpus(vocab, datasets["train"], datasets["valid"], datasets["test"], stats, None)


def write_corpus(corpus: Corpus, directory: str) -> None:
    """Writes train.txt, valid.txt, test.txt (`label<TAB>text` lines when the corpus has labels)."""
    os.makedirs(directory, exist_ok=True)
    for name in ("train", "valid", "test"):
        ds = corpus.split(name)
        with open(os.path.join(directory, f"{name}.txt"), "w", encoding="utf-8") as f:
            for i, sent in enumerate(ds.sentences):
                text = corpus.vocab.decode(sent.tolist(), strip_specials=False)
                if ds.labels is not None:
                    label = ds.label_names[int(ds.labels[i])] if ds.label_names else str(int(ds.labels[i]))
                    text = f"{label}\t{text}"
                f.write(text + "\n")


BUILTIN_CORPORA = {"grammar": grammar_corpus, "synthetic": synthetic_corpus}
