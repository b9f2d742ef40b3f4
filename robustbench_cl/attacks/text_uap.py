"""The text side of C-PGC: one universal adversarial word for every caption.

Following the official code's text attacker, each caption's most important word (the one whose
replacement by ``[UNK]`` moves the softmax of its text feature furthest, in KL divergence) is
replaced by the adversarial word. The word is optimised as a continuous embedding in the text
encoder's word-embedding space with the contrastive loss of the image side, roles swapped: the
paired clean image is the negative, the least similar image of a random target batch the
positive, minus ``alpha`` times the feature deviation. Its norm is kept within the range of the
vocabulary's embedding norms, and at the end it is mapped to the nearest vocabulary word (l2),
skipping special tokens, word pieces and stop words, so the result is an ordinary string that
transfers to any model.

Deviation from the official code: the embedding is optimised directly rather than produced by a
conditional text generator (with one word, the generator's output is one vector too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.attacks.base import report_step
from robustbench_cl.attacks.features import encode_texts
from robustbench_cl.errors import UserError

UNKNOWN = "[UNK]"
MASK = "[MASK]"


def important_words(model: nn.Module, captions: list[str]) -> list[int]:
    """Index (in ``caption.split()``) of each caption's most important word for ``model``."""
    words = [caption.split() for caption in captions]
    variants, owners = [], []
    for i, caption_words in enumerate(words):
        for j in range(len(caption_words)):
            variants.append(" ".join(caption_words[:j] + [UNKNOWN] + caption_words[j + 1 :]))
            owners.append(i)
    if not variants:
        return [0] * len(captions)
    original = F.log_softmax(encode_texts(model, list(captions)), dim=-1)
    masked = F.log_softmax(encode_texts(model, variants), dim=-1)
    index = torch.tensor(owners, device=original.device)
    p = original[index]
    divergence = (p.exp() * (p - masked)).sum(-1)  # KL(original || masked)
    # stop words are never replaced (the official code's filter words), unless nothing else is left
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stop = torch.tensor([w.lower().strip(",.:;") in ENGLISH_STOP_WORDS for ws in words for w in ws])
    divergence = divergence - stop.to(divergence.device).float() * 1e6
    best, start = [], 0
    for caption_words in words:
        count = len(caption_words)
        best.append(int(divergence[start : start + count].argmax()) if count else 0)
        start += count
    return best


def insert_word(caption: str, index: int, word: str) -> str:
    """``caption`` with its word ``index`` replaced by ``word``."""
    words = caption.split()
    if not words:
        return word
    words[min(index, len(words) - 1)] = word
    return " ".join(words)


def _allowed(token: str) -> bool:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return (
        token.isalpha() and token.isascii() and len(token) >= 3 and token not in ENGLISH_STOP_WORDS
    )


def candidate_words(encoder) -> list[str]:  # noqa: ANN001 - MiniLMEncoder
    """Whole, alphabetic vocabulary words that are not stop words (the universal word's range)."""
    vocabulary = encoder.tokenizer.convert_ids_to_tokens(list(range(len(encoder.word_embeddings))))
    return [token for token in vocabulary if _allowed(token)]


def nearest_word(encoder, embedding: torch.Tensor) -> str:  # noqa: ANN001 - MiniLMEncoder
    """The vocabulary word closest (l2) to ``embedding``: alphabetic, whole, not a stop word,
    and text-faithful (the word encodes back to exactly its own token, as it is sent)."""
    vocabulary = encoder.tokenizer.convert_ids_to_tokens(list(range(len(encoder.word_embeddings))))
    allowed = torch.tensor([_allowed(token) for token in vocabulary])
    distance = (encoder.word_embeddings - embedding.to(encoder.word_embeddings.device)).norm(dim=1)
    distance[~allowed.to(distance.device)] = float("inf")
    for index in distance.argsort().tolist():
        if not torch.isfinite(distance[index]):
            break
        word = vocabulary[index]
        if encoder.tokenizer(word, add_special_tokens=False)["input_ids"] == [index]:
            return word
    raise UserError("cpgc.text", "no vocabulary word encodes back to itself", "check the tokenizer")


def fit_universal_word(
    model: nn.Module,
    data,  # noqa: ANN001 - CaptionData
    image_features: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    target_batch_size: int,
    lr: float,
    temperature: float,
    alpha: float,
    generator: torch.Generator,
) -> tuple[str, list[float]]:
    """Optimise one word embedding against ``model`` (which needs ``encode_text_embeds``)."""
    encoder = getattr(model, "text_encoder", None)
    if encoder is None or not hasattr(model, "encode_text_embeds"):
        raise UserError(
            "cpgc.text",
            "the text-side universal word needs a model with a word-embedding text encoder",
            "use a builtin:tinyclip model as the source, or set text: false",
        )
    table = encoder.word_embeddings
    norms = table.norm(dim=1)
    low, high = float(norms.min()), float(norms.max())
    mask_id = encoder.tokenizer.convert_tokens_to_ids(MASK)
    captions = list(data.captions)
    chosen = important_words(model, captions)
    masked = [insert_word(c, i, MASK) for c, i in zip(captions, chosen)]
    clean_text = encode_texts(model, captions)
    owners = data.caption_image.to(image_features.device)
    embedding = nn.Parameter(table.mean(0).detach().clone())
    optimizer = torch.optim.Adam([embedding], lr=lr)
    n = len(captions)
    per_epoch = max(1, n // batch_size)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = torch.zeros((), device=image_features.device)
        for step in range(per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size].tolist()
            tokens = encoder.tokenize([masked[j] for j in batch])
            ids = tokens["input_ids"].to(table.device)
            embeds = torch.where((ids == mask_id).unsqueeze(-1), embedding, table[ids])
            adversarial = model.encode_text_embeds(
                embeds, tokens["attention_mask"].to(table.device)
            )
            index = torch.tensor(batch, device=image_features.device)
            own = image_features[owners[index]]
            with torch.no_grad():  # the least similar target image, for the adversarial text
                pick = torch.randint(
                    0, len(image_features), (target_batch_size,), generator=generator
                )
                targets = image_features[pick.to(image_features.device)]
                far = targets[(adversarial.detach() @ targets.T).argmin(1)]
            pos = torch.exp((adversarial * own).sum(1) / temperature).mean()
            tgt = torch.exp((adversarial * far).sum(1) / temperature).mean()
            loss = (
                torch.log(pos / (pos + tgt))
                - alpha * ((adversarial - clean_text[index]) ** 2).sum()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # keep the norm inside the vocabulary's range
                norm = embedding.norm()
                embedding.mul_(norm.clamp(low, high) / norm.clamp_min(1e-12))
            total += loss.detach()
            report_step(epoch * per_epoch + step + 1, epochs * per_epoch)
        history.append(float(total) / per_epoch)
    return nearest_word(encoder, embedding.detach()), history
