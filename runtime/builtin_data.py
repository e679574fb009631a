"""NetBuilder's built-in datasets, defined once: the app trains on them and the export bundle
carries this very file next to train.py. Standalone on purpose (torch and the standard library;
scikit-learn for the digits, imported only when they are asked for), and nothing downloads.

`load(name, seed, length)` returns all samples as (x, y) tensors; generated data is the same for
the same seed. `length` is the sequence length of the `text` task (the model Input's T).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

TOKEN_LENGTH = 16
TOKEN_VOCAB = 16
MARKER = 1
SINE_LENGTH = 32
TEXT_LENGTH = 64  # the text task's T when no model says otherwise
TEXT_SAMPLES = 4096
TEXT_CORPUS_CHARACTERS = 200_000
# The text task's vocabulary: a character's id is its index here.
TEXT_ALPHABET = "\n .,?abcdefghijklmnopqrstuvwxyz"


def N_(text: str) -> str:
    """Marks a description for translation (the app shows it in the reader's language; this file
    also travels alone in an exported bundle, so it imports nothing of NetBuilder's)."""
    return text


DESCRIPTIONS: dict[str, str] = {
    "digits": N_("scikit-learn's 8x8 handwritten digits as images [1, 8, 8], 10 classes (1,797)"),
    "digits-28": N_(
        "the same digits resized to [1, 28, 28], so LeNet-5 sized models train on them"
    ),
    "digits-rows": N_("the same digits as sequences [8, 8]: each image row is one time step"),
    "tokens": N_(
        "generated int64 token sequences [16], vocabulary 16, 16 classes: the label is the"
        " token that follows the marker token 1 (needs attention)"
    ),
    "sine": N_("generated noisy sine waves [32, 1]; predict the next value [1] (regression, MSE)"),
    "text": N_(
        "character-level English generated from a small grammar (no internet): int64"
        " character ids [T] (T from the Input), vocabulary 31; the target at each position is"
        " the next character [T]"
    ),
}


def load(name: str, seed: int = 0, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of a built-in dataset as (x, y)."""
    if name == "digits":
        images, labels = digits()
        return images.unsqueeze(1), labels
    if name == "digits-28":
        images, labels = digits()
        size = (28, 28)
        return F.interpolate(images.unsqueeze(1), size=size, mode="bilinear"), labels
    if name == "digits-rows":
        return digits()
    if name == "tokens":
        return tokens(seed)
    if name == "sine":
        return sine(seed)
    if name == "text":
        return text(seed, length or TEXT_LENGTH)
    raise ValueError(f"unknown built-in dataset {name!r}; choose one of: {', '.join(DESCRIPTIONS)}")


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digit images [N, 8, 8], scaled to 0..1, and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    return images, torch.tensor(bunch.target, dtype=torch.int64)


def tokens(seed: int, count: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens (never the marker) with one marker; the label is the token right after it."""
    generator = torch.Generator().manual_seed(seed)
    plain = torch.tensor([t for t in range(TOKEN_VOCAB) if t != MARKER])
    x = plain[torch.randint(len(plain), (count, TOKEN_LENGTH), generator=generator)]
    where = torch.randint(TOKEN_LENGTH - 1, (count,), generator=generator)
    rows = torch.arange(count)
    x[rows, where] = MARKER
    return x, x[rows, where + 1].clone()


def sine(seed: int, count: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy sine waves [32, 1] of random frequency and phase; the target is the next clean
    value."""
    generator = torch.Generator().manual_seed(seed)
    frequency = 0.1 + 0.4 * torch.rand(count, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(count, 1, generator=generator)
    t = torch.arange(SINE_LENGTH + 1, dtype=torch.float32)
    clean = torch.sin(frequency * t + phase)
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=generator)
    return noisy[:, :SINE_LENGTH].unsqueeze(-1), clean[:, SINE_LENGTH:]


# -- the text task ---------------------------------------------------------------------------

SUBJECTS = ("the cat", "the dog", "a bird", "my friend", "the teacher", "a small fox", "she", "he")
VERBS = ("sees", "likes", "finds", "follows", "draws", "reads", "builds", "watches")
OBJECTS = ("the ball", "a tree", "the river", "a red house", "the old book", "a green hat")
PLACES = ("in the park", "by the sea", "at home", "under the bridge", "on the hill")
QUESTIONS = ("where is", "who has", "why does he like", "what is in")


def sentence(rng: random.Random) -> str:
    """One sentence of the grammar: statements, some with a place or a clause, and questions."""
    if rng.random() < 0.15:
        return f"{rng.choice(QUESTIONS)} {rng.choice(OBJECTS)}?"
    words = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    if rng.random() < 0.5:
        words += f" {rng.choice(PLACES)}"
    if rng.random() < 0.3:
        words += f", and {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    return words + "."


def corpus(seed: int, characters: int = TEXT_CORPUS_CHARACTERS) -> str:
    """Sentences from the grammar, a few to a line, until `characters` long."""
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < characters:
        line = " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)[:characters]


def encode(text: str) -> torch.Tensor:
    """Character ids of `text`; characters outside the alphabet become spaces."""
    space = TEXT_ALPHABET.index(" ")
    ids = [TEXT_ALPHABET.find(c) for c in text.lower()]
    return torch.tensor([i if i >= 0 else space for i in ids], dtype=torch.int64)


def decode(ids: list[int]) -> str:
    return "".join(TEXT_ALPHABET[i] if 0 <= i < len(TEXT_ALPHABET) else "?" for i in ids)


def text(seed: int, length: int, count: int = TEXT_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of length+1 characters at seeded offsets: x the first `length`, y the next ones.

    The windows are cut from a view of the corpus (unfold), so building them holds no index
    tensor as large as the data; the app sizes this from `length` before it asks for it."""
    ids = encode(corpus(seed, max(TEXT_CORPUS_CHARACTERS, 4 * (length + 1))))
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(ids) - length - 1, (count, 1), generator=generator)
    windows = ids.unfold(0, length + 1, 1)[starts[:, 0]]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


# -- your own text ---------------------------------------------------------------------------

TEXT_VOCAB_CAP = 256  # characters of an uploaded text's vocabulary, the unknown one included
UNKNOWN_CHARACTER = "\ufffd"  # id 0 of an uploaded text's vocabulary: any character left out


def vocabulary(text: str, cap: int = TEXT_VOCAB_CAP) -> str:
    """An uploaded text's alphabet: the unknown character (id 0), then its cap - 1 most frequent
    characters (ties: the smaller code point) in code point order; a character's id is its
    index here."""
    counts: dict[str, int] = {}
    for character in text:
        counts[character] = counts.get(character, 0) + 1
    counts.pop(UNKNOWN_CHARACTER, None)
    kept = sorted(counts, key=lambda c: (-counts[c], c))[: cap - 1]
    return UNKNOWN_CHARACTER + "".join(sorted(kept))


def encode_text(text: str, alphabet: str) -> torch.Tensor:
    """Character ids of `text` in `alphabet`; a character outside it becomes 0 (unknown)."""
    ids = {character: index for index, character in enumerate(alphabet)}
    return torch.tensor([ids.get(c, 0) for c in text], dtype=torch.int64)


def decode_text(ids: list[int], alphabet: str) -> str:
    return "".join(alphabet[i] if 0 <= i < len(alphabet) else UNKNOWN_CHARACTER for i in ids)


def text_split_point(characters: int, held_out: float) -> int:
    """Where the validation part of a text begins: its last `held_out` share."""
    return characters - math.ceil(characters * held_out) if held_out > 0 else characters


def windows_by_position(
    ids: torch.Tensor, length: int, validation: torch.Tensor, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` windows of length+1 characters, x the first `length`, y the next ones: the
    samples at the rows `validation` come from the text's last part, every other one from the
    part before it, so validation never reads a character that training reads. The share held
    out is len(validation) / count."""
    cut = text_split_point(len(ids), len(validation) / count)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(max(1, cut - length), (count,), generator=generator)
    if len(validation):
        tail = max(1, len(ids) - length - cut)
        tail_starts = cut + torch.randint(tail, (len(validation),), generator=generator)
        starts[validation] = tail_starts
    windows = ids.unfold(0, length + 1, 1)[starts]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
