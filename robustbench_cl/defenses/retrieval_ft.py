"""Fine-tuning defenses for dense text retrievers: a projection head on the frozen encoder.

All three train the same residual head (:class:`~robustbench_cl.models.biencoder.ProjectionHead`,
identity at initialisation) on the corpus's training queries, on the frozen encoder's sentence
features, with hard negatives mined from the retriever being trained; the foundation encoder is
never touched. They differ only in the loss, so each is a controlled comparison:

- ``infonce-ft`` (the control; DPR-style): in-batch InfoNCE over the batch's positives and one
  hard negative per query, temperature ``temperature``.
- ``mw-ft`` ("Optimizing What Matters", the MW loss): the same score matrix, but every positive
  against every negative of the batch, pooled across queries: mean softplus((s_n - s_p) / T),
  which bounds 1 - AUC (``losses.contrastive.mw_loss`` on the square part).
- ``ar2`` (Zhang et al., ICLR 2022): a retriever-ranker minimax game. The ranker is a small
  cross-encoder (:class:`~robustbench_cl.models.ranker.CrossRanker`: two trainable transformer
  layers over the frozen encoder's token states of the query and the passage joined, PreTTR
  style: the paper's full cross-encoder, scaled down to a CPU), trained with cross-entropy over
  [d+, ``negatives`` hard negatives from the current retriever], first for ``ranker_warmup``
  epochs on the initial retriever's negatives (that ranker is kept: the control), then in the
  game. The retriever, ranker frozen, minimises lambda * L_adv + (1 - lambda) * L_distill with
  reward(d) = log sigmoid(r(q, d+) - r(q, d)), L_adv = sum_d reward(d) log p_theta(d | q) and
  L_distill = -sum_d p_phi(d | q) log p_theta(d | q); each retriever step follows
  ``ranker_steps`` ranker steps on the same candidates, and negatives are re-mined every epoch
  (the official schedule alternates 500 ranker and 1500 retriever steps). Both rankers are
  cached beside the head; the textret task re-ranks each query's top candidates with them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.attacks.base import report_step
from robustbench_cl.defenses.base import Defense, _canonical
from robustbench_cl.models.artifacts import (
    artifact_exists,
    artifact_lock,
    load_artifact_weights,
    save_artifact,
)
from robustbench_cl.models.biencoder import BiEncoder, ProjectionHead
from robustbench_cl.registry import register_defense
from robustbench_cl.utils import cache_file, seeded, stable_hash

logger = logging.getLogger(__name__)


class RetrieverFineTune(Defense):
    """Shared by the three: data, mining, the training loop, caching. Subclasses: ``loss``.

    Args:
        epochs: passes over the training pairs.
        batch_size: query-passage pairs per step.
        lr: the trained head's learning rate.
        temperature: the contrastive loss's temperature.
        hidden: width of the trainable head over the frozen encoder.
        seed: the training seed.
    """

    kind = "training"
    version = 1
    tasks = frozenset({"textret"})

    def __init__(
        self,
        epochs: int = 8,
        batch_size: int = 64,
        lr: float = 1e-3,
        temperature: float = 0.05,
        hidden: int = 512,
        seed: int = 0,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.temperature = temperature
        self.hidden = hidden
        self.seed = seed

    def cache_key(self, model_spec: str, corpus: Any) -> str:
        content = stable_hash(
            {
                "passages": [p.text for p in corpus.passages],
                "train": [(q.text, q.relevant) for q in corpus.train],
            }
        )
        return stable_hash(
            {
                "defense": self.name,
                "version": self.version,
                "settings": _canonical(self.settings()),
                "model": model_spec,
                "corpus": corpus.name,
                "content": content,
            }
        )

    def cached(self, model_spec: str, corpus: Any) -> bool:
        """Whether ``build`` will load the head (and its extras) instead of training them."""
        path = cache_file("defenses", f"{self.name}-{self.cache_key(model_spec, corpus)}")
        return artifact_exists(path) and self.extras_exist(path)

    def build(self, model: nn.Module, model_spec: str, corpus: Any) -> nn.Module:  # type: ignore[override]
        base: BiEncoder = getattr(model, "model", model)
        if base.head is not None:
            from robustbench_cl.errors import UserError

            raise UserError(
                "textret.defenses", f"{model_spec} already has a head", "fine-tune a bare encoder"
            )
        path = cache_file("defenses", f"{self.name}-{self.cache_key(model_spec, corpus)}")
        head = ProjectionHead(base.dim, self.hidden)
        with artifact_lock(path):
            if artifact_exists(path) and self.extras_exist(path):
                load_artifact_weights(path, head)
                self.load_extras(path, base)
                self.training_info = _read_info(path)
            else:
                logger.info(
                    "training %s on %d queries (cached at %s)", self.name, len(corpus.train), path
                )
                start = time.perf_counter()
                head, info = self.train(base, head, corpus)
                info["wall_time"] = time.perf_counter() - start
                self.training_info = info
                self.save_extras(path)  # first: a head without its extras is never reused
                save_artifact(path, head, {"settings": self.settings(), **info})
        head.eval().requires_grad_(False)
        return BiEncoder(base.encoder, head.to(base.encoder.device))

    # ------------------------------------------------------------------ extra modules
    def extras_exist(self, path) -> bool:  # noqa: ANN001, ARG002
        """Whether the modules trained beside the head (AR2's rankers) are cached too."""
        return True

    def save_extras(self, path) -> None:  # noqa: ANN001
        pass

    def load_extras(self, path, base: BiEncoder) -> None:  # noqa: ANN001
        pass

    # ------------------------------------------------------------------ training
    def train(self, base: BiEncoder, head: nn.Module, corpus: Any) -> tuple[nn.Module, dict]:
        with seeded(self.seed):
            generator = torch.Generator().manual_seed(self.seed)
            index = corpus.index()
            passages = base.sentence_features(corpus.texts()).cpu()
            queries = base.sentence_features([q.text for q in corpus.train]).cpu()
            positive = torch.tensor([index[q.relevant[0]] for q in corpus.train])
            relevant = [torch.tensor([index[p] for p in q.relevant]) for q in corpus.train]
            head = head.cpu().train()
            optimizer = torch.optim.Adam(head.parameters(), lr=self.lr)
            history: list[float] = []
            state = self.start(base, head, passages, queries, positive, corpus)
            steps_per_epoch = -(-len(queries) // self.batch_size)
            for epoch in range(self.epochs):
                negatives = _mine(head, queries, passages, relevant, 1 + self.extra_negatives())
                order = torch.randperm(len(queries), generator=generator)
                for step in range(steps_per_epoch):
                    batch = order[step * self.batch_size : (step + 1) * self.batch_size]
                    state["batch"] = batch  # the training queries' indices (AR2's ranker)
                    loss = self.loss(
                        head, queries[batch], passages, positive[batch], negatives[batch], state
                    )
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    history.append(loss.detach())
                report_step(epoch + 1, self.epochs)
            return head.eval(), {
                "loss_history": [float(v) for v in history[:: max(1, len(history) // 50)]],
                **self.info(state),
            }

    def extra_negatives(self) -> int:
        return 0

    def start(self, base, head, passages, queries, positive, corpus) -> dict[str, Any]:  # noqa: ANN001, ARG002
        return {}

    def info(self, state: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG002
        return {}

    def scores(self, head, queries, passages, positive, negatives):  # noqa: ANN001, ANN201
        """(B, B + B) scores: the batch's positives (diagonal) then one hard negative each."""
        q = head(queries)
        candidates = torch.cat([passages[positive], passages[negatives[:, 0]]])
        return q @ head(candidates).T / self.temperature

    def loss(self, head, queries, passages, positive, negatives, state):  # noqa: ANN001, ANN201
        raise NotImplementedError


def _mine(
    head: nn.Module, queries: torch.Tensor, passages: torch.Tensor, relevant, k: int
) -> torch.Tensor:  # noqa: ANN001
    """The top ``k`` non-relevant passages of each query under the current head."""
    with torch.no_grad():
        head.eval()
        scores = head(queries) @ head(passages).T
        head.train()
    for row, rel in enumerate(relevant):
        scores[row, rel] = -float("inf")
    return scores.topk(k, dim=1).indices


def _read_info(path) -> dict[str, Any]:  # noqa: ANN001
    import json

    from robustbench_cl.models.artifacts import with_extension

    meta = with_extension(path, ".json")
    return json.loads(meta.read_text()) if meta.exists() else {}


@register_defense("infonce-ft")
class InfoNCEFineTune(RetrieverFineTune):
    """The control: DPR-style InfoNCE fine-tuning of a head on the frozen retriever."""

    name = "infonce-ft"

    def loss(self, head, queries, passages, positive, negatives, state):  # noqa: ANN001, ANN201, ARG002
        logits = self.scores(head, queries, passages, positive, negatives)
        return F.cross_entropy(logits, torch.arange(len(logits)))


@register_defense("mw-ft")
class MWFineTune(RetrieverFineTune):
    """MW (AUC) loss fine-tuning: every positive against every negative, pooled over queries."""

    name = "mw-ft"

    def loss(self, head, queries, passages, positive, negatives, state):  # noqa: ANN001, ANN201, ARG002
        scores = self.scores(head, queries, passages, positive, negatives)
        b = len(scores)
        is_positive = torch.zeros_like(scores, dtype=torch.bool)
        is_positive[torch.arange(b), torch.arange(b)] = True
        positives, negatives_ = scores[is_positive], scores[~is_positive]
        return F.softplus(negatives_[None, :] - positives[:, None]).mean()


@register_defense("ar2")
class AR2(RetrieverFineTune):
    """AR2: retriever-ranker minimax game with ranker-to-retriever distillation; the ranker is
    a small cross-encoder (:class:`~robustbench_cl.models.ranker.CrossRanker`).

    Args:
        negatives: negatives per query mined from the retriever for the game.
        adv_lambda: weight of the adversarial (minimax) term; the ranker-to-retriever distillation
            gets `1 - adv_lambda`.
        ranker_lr: the ranker's learning rate.
        ranker_steps: ranker updates per retriever update.
        ranker_warmup: epochs of ranker training on the initial retriever's negatives before the
            game (the paper warms up 10k steps); that ranker is kept as the control.
        ranker_width: the cross-encoder ranker's width.
        ranker_layers: the ranker's layers.
    """

    name = "ar2"
    version = 2  # 1: an MLP ranker on pooled features; 2: the cross-encoder ranker
    #: the textret task re-ranks each query's top candidates with the rankers (``rankers``)
    has_ranker = True
    #: the rankers it keeps: ``warmup`` (the control) and ``final`` (after the game)
    ranker_names = ("warmup", "final")

    def __init__(
        self,
        epochs: int = 8,
        batch_size: int = 64,
        lr: float = 1e-3,
        temperature: float = 0.05,
        hidden: int = 512,
        seed: int = 0,
        negatives: int = 15,
        adv_lambda: float = 0.5,
        ranker_lr: float = 1e-3,
        ranker_steps: int = 1,
        ranker_warmup: int = 4,
        ranker_width: int = 128,
        ranker_layers: int = 2,
    ) -> None:
        super().__init__(epochs, batch_size, lr, temperature, hidden, seed)
        self.negatives = negatives
        self.adv_lambda = adv_lambda
        self.ranker_lr = ranker_lr
        self.ranker_steps = ranker_steps
        #: epochs of ranker training on the initial retriever's negatives before the game (the
        #: paper warms the ranker up for 10k steps first); this ranker is kept as the control
        self.ranker_warmup = ranker_warmup
        self.ranker_width = ranker_width
        self.ranker_layers = ranker_layers
        self._rankers: dict[str, nn.Module] = {}

    @property
    def rankers(self) -> dict[str, nn.Module]:
        """``warmup`` (trained on the initial retriever's hard negatives only: the control)
        and ``final`` (after the game), frozen; empty before ``build``."""
        return self._rankers

    def extra_negatives(self) -> int:
        return self.negatives - 1

    def _new_ranker(self, dim: int) -> nn.Module:
        from robustbench_cl.models.ranker import CrossRanker

        return CrossRanker(dim, self.ranker_width, self.ranker_layers)

    @staticmethod
    def _rankers_path(path):  # noqa: ANN001, ANN205
        return path.with_name(path.name + "-rankers")

    def extras_exist(self, path) -> bool:  # noqa: ANN001
        return artifact_exists(self._rankers_path(path))

    def save_extras(self, path) -> None:  # noqa: ANN001
        save_artifact(
            self._rankers_path(path),
            nn.ModuleDict(self._rankers),
            {"width": self.ranker_width, "layers": self.ranker_layers},
        )

    def load_extras(self, path, base: BiEncoder) -> None:  # noqa: ANN001
        rankers = nn.ModuleDict({k: self._new_ranker(base.dim) for k in self.ranker_names})
        load_artifact_weights(self._rankers_path(path), rankers)
        self._rankers = dict(rankers.items())
        self._freeze()

    def _freeze(self) -> None:
        for ranker in self._rankers.values():
            ranker.eval().requires_grad_(False)

    def start(self, base, head, passages, queries, positive, corpus) -> dict[str, Any]:  # noqa: ANN001, ARG002
        from robustbench_cl.models.ranker import TokenStates

        ranker = self._new_ranker(base.dim)
        optimizer = torch.optim.Adam(ranker.parameters(), lr=self.ranker_lr)
        state = {
            "ranker": ranker,
            "optimizer": optimizer,
            "ranker_loss": [],
            # the frozen encoder's token states, once per text (the ranker's input)
            "query_states": TokenStates(base.encoder, [q.text for q in corpus.train]),
            "passage_states": TokenStates(base.encoder, corpus.texts()),
        }
        relevant = [positive[i : i + 1] for i in range(len(positive))]
        negatives = _mine(head, queries, passages, relevant, self.negatives)
        generator = torch.Generator().manual_seed(self.seed + 1)
        for epoch in range(self.ranker_warmup):
            order = torch.randperm(len(queries), generator=generator)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                self._ranker_step(state, batch, self._candidates(positive[batch], negatives[batch]))
            report_step(epoch + 1, self.ranker_warmup)
        state["warmup_accuracy"] = self._ranker_accuracy(state, positive, negatives)
        warmup = self._new_ranker(base.dim)
        warmup.load_state_dict(ranker.state_dict())
        state["warmup_ranker"] = warmup
        return state

    def _candidates(self, positive, negatives) -> torch.Tensor:  # noqa: ANN001
        """[d+, n hard negatives] per query: index 0 is the relevant passage."""
        return torch.cat([positive[:, None], negatives[:, : self.negatives]], dim=1)

    def _ranker_logits(self, state, batch, candidates) -> torch.Tensor:  # noqa: ANN001
        return state["ranker"](state["query_states"][batch], state["passage_states"][candidates])

    def _ranker_step(self, state, batch, candidates) -> torch.Tensor:  # noqa: ANN001
        state["ranker"].train()
        logits = self._ranker_logits(state, batch, candidates)
        loss = F.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
        state["optimizer"].zero_grad()
        loss.backward()
        state["optimizer"].step()
        state["ranker_loss"].append(loss.detach())
        return loss

    def _ranker_accuracy(self, state, positive, negatives) -> float:  # noqa: ANN001
        state["ranker"].eval()
        hits = []
        with torch.no_grad():
            for start in range(0, len(positive), 256):
                batch = torch.arange(start, min(len(positive), start + 256))
                candidates = self._candidates(positive[batch], negatives[batch])
                hits.append(self._ranker_logits(state, batch, candidates).argmax(1) == 0)
        return float(torch.cat(hits).float().mean())

    def info(self, state: dict[str, Any]) -> dict[str, Any]:
        self._rankers = {"warmup": state["warmup_ranker"], "final": state["ranker"]}
        self._freeze()
        losses = state["ranker_loss"]
        return {
            "ranker_loss_history": [float(v) for v in losses[:: max(1, len(losses) // 50)]],
            "ranker_warmup_accuracy": state.get("warmup_accuracy"),
        }

    def loss(self, head, queries, passages, positive, negatives, state):  # noqa: ANN001, ANN201
        batch = state["batch"]
        candidates = self._candidates(positive, negatives)
        docs = passages[candidates]  # (B, 1 + n, d) frozen features; index 0 is d+
        for _ in range(self.ranker_steps):  # the ranker's step, retriever fixed
            self._ranker_step(state, batch, candidates)
        state["ranker"].eval()
        with torch.no_grad():  # the retriever's step, ranker fixed
            relevance = self._ranker_logits(state, batch, candidates)
            reward = F.logsigmoid(relevance[:, :1] - relevance)  # <= 0; 0 for d+
            teacher = relevance.softmax(-1)
        q = head(queries)
        log_p = torch.log_softmax(torch.einsum("bd,bnd->bn", q, head(docs)) / self.temperature, -1)
        adversarial = (reward * log_p).sum(-1).mean()
        distill = -(teacher * log_p).sum(-1).mean()
        return self.adv_lambda * adversarial + (1 - self.adv_lambda) * distill
