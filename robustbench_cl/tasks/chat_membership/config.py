"""The ``chat_membership:`` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from robustbench_cl.engine.config import DefenseConfig, ModelConfig, StrictConfig
from robustbench_cl.privacy.llm_membership import CHAT_MEMBERSHIP_ATTACKS

#: bump when the audit changes, so that resumed runs do not reuse stale records
PROTOCOL_VERSION = 2


class ChatMembershipConfig(StrictConfig):
    """Membership inference on a chat LLM's fine-tuning data: does each (model, defense) give
    away which (instruction, response) pairs it was fine-tuned on?

    ``n`` members against ``n`` held-out pairs of the same distribution: for the built-in
    model, its SFT corpus against other draws of the same generator, matched by task and
    length; for a user's model, two CSV files. Each attack reports AUC, TPR at low FPR and an
    estimated epsilon lower bound, beside two controls: the selection control (the same attack
    on pseudo-members the target never saw, chosen by the members' rule; must sit at chance)
    and the reference model's own loss attack (it saw neither set; away from 0.5 means the two
    sets differ in more than membership).
    """

    #: the chat models (`builtin:tiny-chat-lm` or `hf:DIR`)
    models: list[ModelConfig] = Field(min_length=1)
    #: each model is audited as it is and under each defense (e.g. `cadv-ul`), trained as the
    #: jailbreak section trains it
    defenses: list[DefenseConfig] = Field(default_factory=lambda: [DefenseConfig()])
    #: `loss`, `zlib`, `min-k` and `reference`
    attacks: list[str] = Field(default_factory=lambda: list(CHAT_MEMBERSHIP_ATTACKS))
    #: members and non-members audited (each)
    n: int = Field(default=200, ge=10)
    #: Min-K%'s share of lowest-probability tokens (Shi et al.: 0.2)
    min_k: float = Field(default=0.2, gt=0.0, le=1.0)
    #: the reference attack's model, trained like the audited one on other data of the same
    #: distribution; unset: `builtin:tiny-chat-lm-reference` (for the built-in model)
    reference: str | None = None
    #: a user model's members: a CSV of instruction,response (its fine-tuning data); unset,
    #: tiny-chat-lm's SFT corpus
    members: str | None = None
    #: a user model's non-members: a CSV of instruction,response of the same distribution
    nonmembers: str | None = None

    @field_validator("attacks")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [a for a in value if a not in CHAT_MEMBERSHIP_ATTACKS]
        if unknown:
            raise ValueError(
                f"unknown attack {unknown[0]!r}; use {', '.join(CHAT_MEMBERSHIP_ATTACKS)}"
            )
        if not value:
            raise ValueError("needs at least one attack")
        return value

    @field_validator("members", "nonmembers")
    @classmethod
    def _absolute(cls, value: str | None, info: Any) -> str | None:
        return None if value is None else str(Path(value).expanduser().resolve())
