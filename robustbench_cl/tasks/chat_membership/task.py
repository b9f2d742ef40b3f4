"""The chat membership task: one unit per (chat model, defense) that scores the audited
examples with every attack and both controls."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
from rich.table import Table

from robustbench_cl.attacks.base import step_hook
from robustbench_cl.data.chat import DEFENSE_TRAINING, defense_training_data
from robustbench_cl.defenses import make_defense
from robustbench_cl.engine.config import MatrixConfig
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import RunContext, Task, Unit, register_task
from robustbench_cl.errors import UserError, under_field
from robustbench_cl.privacy.epsilon import epsilon_lower_bound
from robustbench_cl.privacy.llm_membership import (
    builtin_audit_examples,
    chat_scores,
    load_chat_examples,
    response_logprobs,
)
from robustbench_cl.privacy.metrics import membership_metrics
from robustbench_cl.tasks.chat_membership.config import PROTOCOL_VERSION, ChatMembershipConfig
from robustbench_cl.tasks.chat_membership.results import (
    ChatMembershipEntry,
    ChatMembershipRecord,
    chat_membership_entry,
)
from robustbench_cl.utils import stable_hash

logger = logging.getLogger(__name__)

BUILTIN = "builtin:tiny-chat-lm"
BUILTIN_REFERENCE = "builtin:tiny-chat-lm-reference"


@register_task("chat_membership")
class ChatMembershipTask(Task):
    """Membership inference on chat LLMs' fine-tuning data: the ``chat_membership:`` section."""

    order = 45

    record_types = ("chat_membership",)
    record_models: ClassVar[dict[str, Any]] = {"chat_membership": ChatMembershipRecord}
    section_model: ClassVar[Any] = list[ChatMembershipEntry]
    config_fields = {"chat_membership": (ChatMembershipConfig | None, None)}
    data_sources = (
        ("(built in)", "tiny-chat-lm's SFT corpus against other draws, matched by task and length"),
        ("members: / nonmembers: FILE.csv", "a user model's instruction,response pairs"),
    )
    template = Path(__file__).parent.parent / "templates" / "chat_membership.html.j2"
    title = "Chat membership"
    anchor = "chat-membership"

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        assert self.config.chat_membership is not None
        self.section: ChatMembershipConfig = self.config.chat_membership
        self.device = ctx.device
        self.progress = ctx.progress
        self._examples: tuple[list, list, list | None] | None = None
        self._reference: list[torch.Tensor] | None = None
        self._base: tuple[str, Any] | None = None

    @classmethod
    def check_config(cls, config: MatrixConfig) -> None:
        section = config.chat_membership
        if section is None:
            return
        if (section.members is None) != (section.nonmembers is None):
            raise UserError(
                "chat_membership.nonmembers" if section.members else "chat_membership.members",
                "members and nonmembers come together",
                "give both CSV files, or neither (the built-in model's SFT corpus)",
            )
        for index, model in enumerate(section.models):
            if section.members is None and model.spec != BUILTIN:
                raise UserError(
                    f"chat_membership.models[{index}].spec",
                    f"{model.spec}'s fine-tuning data is unknown here",
                    "give chat_membership.members and nonmembers (instruction,response CSVs)",
                )
            if (
                "reference" in section.attacks
                and section.reference is None
                and model.spec != BUILTIN
            ):
                raise UserError(
                    "chat_membership.reference",
                    f"the reference attack on {model.spec} needs a reference model",
                    "name one trained like it on other data (hf:DIR), or drop the attack",
                )
        for index, defense in enumerate(section.defenses):
            with under_field(f"chat_membership.defenses[{index}]"):
                make_defense(defense.defense, **defense.params)

    # ---------------------------------------------------------------- plan
    def plan(self) -> list[Unit]:
        units = []
        for mi, model in enumerate(self.section.models):
            for di, defense in enumerate(self.section.defenses):
                built = make_defense(defense.defense, **defense.params)
                key = {
                    "chat_membership": self.section.model_dump(exclude={"models", "defenses"}),
                    "model": model.spec,
                    "defense": defense.defense,
                    "settings": built.settings(),
                    "seed": self.config.seed,
                    "version": PROTOCOL_VERSION,
                }
                if self.section.members is not None:  # edited files must not resume old cells
                    members, outsiders, _ = self.examples()
                    key["data"] = stable_hash([vars(e) for e in members + outsiders])
                if built.kind != "none":  # the defense's training data (the jailbreak section's)
                    key["train"] = self.train_counts()
                label = f"{model.label} | {defense.label} | chat membership"
                units.append(Unit(stable_hash(key), label, key=(mi, di)))
        return units

    def train_counts(self) -> dict[str, int]:
        """The chat defenses' training data: the jailbreak section's, when the config has one,
        so that a defense both sections name is one cached artifact."""
        jailbreak = getattr(self.config, "jailbreak", None)
        if jailbreak is None:
            return dict(DEFENSE_TRAINING)
        return {key: getattr(jailbreak.data, key) for key in DEFENSE_TRAINING}

    def examples(self) -> tuple[list, list, list | None]:
        if self._examples is None:
            if self.section.members is not None:
                assert self.section.nonmembers is not None
                members = load_chat_examples(self.section.members, "chat_membership.members")
                outsiders = load_chat_examples(
                    self.section.nonmembers, "chat_membership.nonmembers"
                )
                n = min(self.section.n, len(members), len(outsiders))
                generator = torch.Generator().manual_seed(self.config.seed)
                members = [
                    members[i] for i in torch.randperm(len(members), generator=generator)[:n]
                ]
                outsiders = [
                    outsiders[i] for i in torch.randperm(len(outsiders), generator=generator)[:n]
                ]
                self._examples = (members, outsiders, None)
            else:
                self._examples = builtin_audit_examples(self.section.n, self.config.seed)
        return self._examples

    # ---------------------------------------------------------------- run
    def _chat_lm(self, spec: str):  # noqa: ANN202
        from robustbench_cl.models import load_model
        from robustbench_cl.models.llm import unwrap_chat_lm

        if self._base is None or self._base[0] != spec:
            self._base = None
            self.progress.message(f"loading {spec}")
            base = load_model(spec)
            if "device_map=" not in spec:
                base = base.to(self.device)
            unwrap_chat_lm(base)
            self._base = (spec, base)
        return self._base[1]

    def _reference_logprobs(self, instructions: list[str], responses: list[str]):  # noqa: ANN202
        from robustbench_cl.models import load_model
        from robustbench_cl.models.llm import unwrap_chat_lm

        if self._reference is None:
            spec = self.section.reference or BUILTIN_REFERENCE
            self.progress.message(f"loading the reference model {spec}")
            with under_field("chat_membership.reference", replace=True):
                reference = unwrap_chat_lm(load_model(spec).to(self.device))
            self._reference = response_logprobs(reference, instructions, responses)
        return self._reference

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        from robustbench_cl.models.llm import unwrap_chat_lm

        mi, di = unit.key
        model, defense = self.section.models[mi], self.section.defenses[di]
        built = make_defense(defense.defense, **defense.params)
        base = self._chat_lm(model.spec)
        train = defense_training_data(**self.train_counts())
        self.progress.message(f"{model.label} / {defense.label} | train {defense.label}")
        with step_hook(self.progress.step):
            lm = unwrap_chat_lm(built.build(base, model.spec, train))
        members, outsiders, pseudo = self.examples()
        examples = members + outsiders
        instructions = [e.instruction for e in examples]
        responses = [e.response for e in examples]
        is_member = torch.tensor([1] * len(members) + [0] * len(outsiders), dtype=torch.bool)
        logprobs = response_logprobs(lm, instructions, responses)
        control = None
        if pseudo is not None:  # pseudo-members (never seen) against the same non-members
            control_responses = [e.response for e in pseudo] + responses[len(members) :]
            control_logprobs = (
                response_logprobs(lm, [e.instruction for e in pseudo], [e.response for e in pseudo])
                + logprobs[len(members) :]
            )
            control = (control_logprobs, control_responses)
        reference = None
        shift = None
        if "reference" in self.section.attacks:
            reference = self._reference_logprobs(instructions, responses)
            shift = membership_metrics(
                chat_scores("loss", reference, responses), is_member, seed=self.config.seed
            )
        results, scores = [], {}
        for attack in self.section.attacks:
            score = chat_scores(attack, logprobs, responses, reference, self.section.min_k)
            metrics = membership_metrics(score, is_member, seed=self.config.seed)
            selection = None
            if control is not None and attack != "reference":
                control_score = chat_scores(attack, *control, None, self.section.min_k)
                selection = membership_metrics(control_score, is_member, seed=self.config.seed)
            epsilon = epsilon_lower_bound(score, is_member, 0.0, seed=self.config.seed)
            results.append(
                {
                    "attack": attack,
                    **{
                        k: metrics[k]
                        for k in ("auc", "auc_ci95", "advantage", "tpr_at_fpr", "tpr_at_fpr_ci95")
                    },
                    "epsilon_audit": dict(epsilon, method="two-split", certified=False),
                    "control_auc": selection["auc"] if selection else None,
                    "control_auc_ci95": selection["auc_ci95"] if selection else None,
                }
            )
            scores[attack] = score.tolist()
        self.progress.batch_done()
        return ChatMembershipRecord(
            type="chat_membership",
            id=unit.id,
            model=model.model_dump(),
            defense=defense.model_dump(),
            source="files" if self.section.members else "builtin",
            n_members=len(members),
            n_nonmembers=len(outsiders),
            reference=(self.section.reference or BUILTIN_REFERENCE) if reference else None,
            shift_auc=shift["auc"] if shift else None,
            shift_auc_ci95=shift["auc_ci95"] if shift else None,
            attacks=results,
            members=is_member.int().tolist(),
            scores=scores,
        )

    def close(self) -> None:
        self._base = None
        self._reference = None

    # ---------------------------------------------------------------- results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        records = summary.of("chat_membership")
        return {"chat_membership": [chat_membership_entry(r) for r in records]} if records else None

    @classmethod
    def flag_rows(cls, results: dict[str, Any]) -> list[dict[str, str]]:
        return cls.rows_of(
            results.get("chat_membership") or [], lambda e: f"{e['pair']} | chat membership"
        )

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Each attack's AUC (lower: less leakage)."""
        return [
            {
                "row": entry["pair"],
                "measure": f"chat {result['attack']} AUC",
                "value": result["auc"],
                "better": "lower",
            }
            for entry in results.get("chat_membership") or []
            for result in entry["attacks"]
        ]

    @classmethod
    def summary_json(cls, summary: RunSummary) -> dict[str, Any] | None:
        entries = (cls.summarize(summary, {}) or {}).get("chat_membership")
        if not entries:
            return None
        return {
            "chat_membership": [
                {
                    "pair": e["pair"],
                    "attack": r["attack"],
                    "auc": r["auc"],
                    "auc_ci95": r["auc_ci95"],
                }
                for e in entries
                for r in e["attacks"]
            ]
        }

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        entries = results.get("chat_membership")
        return {"entries": entries} if entries else None

    @classmethod
    def table(cls, summary: RunSummary) -> Table | None:
        entries = (cls.summarize(summary, {}) or {}).get("chat_membership")
        if not entries:
            return None
        first = entries[0]
        table = Table(
            title=f"chat membership inference ({first['n_members']} members / "
            f"{first['n_nonmembers']} non-members)",
            title_justify="left",
        )
        for name in (
            "model / defense",
            "attack",
            "AUC",
            "95% CI",
            "TPR@1%FPR",
            "eps >=",
            "control",
        ):
            table.add_column(
                name, justify="left" if name in ("model / defense", "attack") else "right"
            )
        for entry in entries:
            for result in entry["attacks"]:
                low, high = result["auc_ci95"]
                table.add_row(
                    entry["pair"],
                    result["attack"],
                    f"{result['auc']:.3f}",
                    f"{low:.3f}-{high:.3f}",
                    f"{100 * result['tpr_at_fpr']['0.01']:.1f}%",
                    f"{result['epsilon_audit']['epsilon_lb']:.2f}",
                    "-" if result["control_auc"] is None else f"{result['control_auc']:.3f}",
                )
            if entry["shift_auc"] is not None:
                table.add_row(entry["pair"], "shift control", f"{entry['shift_auc']:.3f}")
        return table
