"""The ``screens:`` section of a config, its expansion into (protector, eps) columns, and the
typed key of its units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from robustbench_cl.engine.config import MatrixConfig, StrictConfig, refuse_duplicate_labels
from robustbench_cl.errors import UserError
from robustbench_cl.utils import parse_fraction

#: bump when the protocol changes (record ids change, so old records are not reused)
PROTOCOL_VERSION = 1


class ScreensDataConfig(StrictConfig):
    """The phone screens and their PII boxes."""

    #: ``privscreen-mini[?n=160&seed=0]`` (rendered) or ``privscreen:DIR`` (PrivScreen's layout)
    name: str = "privscreen-mini?n=160&seed=0"
    #: per app, the first share of screens trains the protectors, the rest is evaluated
    train_ratio: float = Field(default=0.8, gt=0, lt=1)
    #: evaluate at most this many test screens (all when omitted)
    n_test: int | None = Field(default=None, ge=1)


class ScreenProtectorConfig(StrictConfig):
    """A protector row: how each screen is changed before a router reads it."""

    #: `clean`, `noise`, `blackout`, `pgd` or `dualtap` (`robustbench-cl list protectors`)
    protector: str
    #: the row's label (default: the protector)
    name: str | None = None
    #: the protector's parameters (`robustbench-cl list protectors NAME --params`)
    params: dict[str, Any] = Field(default_factory=dict)
    #: l-inf budgets as fractions of the pixel range (``32/255`` is accepted); bounded
    #: protectors (noise, pgd, dualtap) need one, clean and blackout take none
    eps: float | str | list[float | str] | None = None

    @field_validator("eps")
    @classmethod
    def _fractions(cls, value: Any) -> Any:
        if value is None:
            return None
        values = [parse_fraction(v) for v in (value if isinstance(value, list) else [value])]
        if not values or any(not 0 < v <= 1 for v in values):
            raise ValueError("eps must be in (0, 1], e.g. 32/255")
        return values

    def eps_values(self) -> list[float | None]:
        return list(self.eps) if self.eps else [None]  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        return self.name or self.protector


class ScreensConfig(StrictConfig):
    """Screenshot privacy: PII routers (OCR engines) against screen protectors.

    One record per (protector, eps): per router, which PII fields each protected screen leaks,
    which task keywords stay readable, and the image quality.
    """

    data: ScreensDataConfig = Field(default_factory=ScreensDataConfig)
    #: the OCR engines that try to read the PII (`robustbench-cl list routers`)
    routers: list[Literal["easyocr", "tesseract"]] = Field(
        default_factory=lambda: ["easyocr", "tesseract"], min_length=1
    )
    #: the protector rows
    protectors: list[ScreenProtectorConfig] = Field(min_length=1)
    #: example screens (PII masked) kept per protector for the report
    examples: int = Field(default=2, ge=0, le=8)
    #: test screens per shard (each one Ray task under ``--executor ray``); one shard when
    #: omitted. Random protectors (noise, PGD's start) draw per shard, so it is in the ids
    shard_size: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class ColumnKey:
    """The unit of one (protector, eps) column."""

    index: int


def expand_screens(config: MatrixConfig) -> list[dict[str, Any]]:
    """Validate the section; one column per (protector, eps)."""
    from robustbench_cl.defenses.protectors import make_protector

    section = config.screens
    assert section is not None
    columns = []
    for index, protector in enumerate(section.protectors):
        field = f"screens.protectors[{index}]"
        kind = make_protector(protector.protector, f"{field}.protector")
        if kind.bounded and not protector.eps:
            raise UserError(
                f"{field}.eps", f"{protector.protector} needs an eps", "e.g. eps: [16/255, 32/255]"
            )
        if not kind.bounded and protector.eps:
            raise UserError(f"{field}.eps", f"{protector.protector} takes no eps", "remove eps")
        for eps in protector.eps_values():
            built = kind.build(protector.params, eps, config.seed, field)
            columns.append({"config": protector, "eps": eps, "kind": kind, "built": built})
    labels = [protector_label(c["config"].label, c["eps"]) for c in columns]
    refuse_duplicate_labels(labels, "screens.protectors[].name", "protectors")
    return columns


def protector_label(name: str, eps: float | None) -> str:
    return name if eps is None else f"{name} {eps * 255:g}/255"
