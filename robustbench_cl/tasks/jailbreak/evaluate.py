"""Utility, over-refusal and attack cells on a defended chat LM."""

from __future__ import annotations

import random
import time
from typing import Any

import torch

from robustbench_cl.attacks.base import step_hook
from robustbench_cl.attacks.jailbreak import JailbreakAttack
from robustbench_cl.data.chat import answer_correct, is_refusal
from robustbench_cl.engine.metrics import rate_entry
from robustbench_cl.tasks.jailbreak.config import JailbreakConfig
from robustbench_cl.tasks.jailbreak.results import JailbreakCleanRecord, JailbreakRecord
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import derive_seed, stable_hash


class Evaluation:
    """The jailbreak task's work on a defended chat LM (mixed into it): utility and over-refusal, and one attack cell, shard by shard."""

    def judges(self) -> dict[str, Any]:
        """The section's judges, built once, in order (the first is primary)."""
        if getattr(self, "_judges", None) is None:
            from robustbench_cl.tasks.jailbreak.judges import make_judge

            self._judges = {spec: make_judge(spec) for spec in self.section.judges}
        return self._judges

    def judge_record(self, record_id: str) -> dict[str, Any]:
        """Every judge against the human labels of ``labels``."""
        from robustbench_cl.tasks.jailbreak.judges import against_humans, load_labels

        rows = load_labels(self.section.labels)
        goals = [r["goal"] for r in rows]
        responses = [r["response"] for r in rows]
        humans = [r["human"] for r in rows]
        targets = [""] * len(rows)  # the file has no targets: the target judges see none
        judges = {}
        for name, judge in self.judges().items():
            judges[name] = against_humans(judge(goals, responses, targets), humans)
        self.progress.batch_done()
        return {
            "type": "jailbreak_judges",
            "id": record_id,
            "labels": self.section.labels,
            "n": len(rows),
            "human_jailbroken": sum(humans),
            "judges": judges,
        }

    def clean_record(self, lm, model, defense, built, record_id) -> dict[str, Any]:  # noqa: ANN001
        tokens = self.section.max_new_tokens
        data = self.section.data
        own = data.benign is not None
        # the built-in synthetic tasks measure the built-in models only: a user's model answers
        # other prompts, and its 0% there would be meaningless
        measured = own or model.spec.startswith("builtin:")
        benign, borderline = self.test.of("benign"), self.test.of("borderline")
        if not measured:
            benign, borderline = [], []
        answers = _respond(lm, [e.instruction for e in benign + borderline], tokens, self.section)
        benign_answers, borderline_answers = answers[: len(benign)], answers[len(benign) :]
        benign_ok = [answer_correct(e, a) for e, a in zip(benign, benign_answers)]
        by_task: dict[str, list[bool]] = {}
        for example, ok in zip(benign, benign_ok):
            by_task.setdefault(example.task, []).append(ok)
        # over-refusal: the borderline prompts refused (a benign file without any: its benign
        # prompts refused, which the report says; the built-in tasks without any: not measured)
        if borderline or not own:
            asked, replies = borderline, borderline_answers
        else:
            asked, replies = benign, answers
        refused = [is_refusal(a) for a in replies]
        borderline_ok = [answer_correct(e, a) for e, a in zip(borderline, borderline_answers)]
        self.progress.batch_done()
        info = getattr(built, "training_info", {}) or {}
        sources = {
            "behaviors": data.behaviors.removeprefix("behaviors:") if data.behaviors else None,
            "benign": data.benign.removeprefix("benign:") if own else None,
            "utility": "benign file" if own else "built-in tasks" if measured else None,
            "over_refusal_on": ("borderline" if borderline else "benign") if asked else None,
        }
        return JailbreakCleanRecord(
            type="jailbreak_clean",
            id=record_id,
            model=model.model_dump(),
            defense=defense.model_dump(),
            utility=rate_entry(sum(benign_ok), len(benign)) if benign else None,
            utility_by_task={t: rate_entry(sum(v), len(v)) for t, v in sorted(by_task.items())},
            over_refusal=rate_entry(sum(refused), len(asked)) if asked else None,
            borderline_correct=(
                rate_entry(sum(borderline_ok), len(borderline)) if borderline else None
            ),
            sources=sources,
            training={
                "wall_time": info.get("wall_time"),
                "cost": info.get("cost"),
                "lora": info.get("lora"),
                "settings": info.get("settings"),
                "history": info.get("history", []),
            }
            if info
            else None,
            embedding_scale=lm.embedding_scale,
            examples=[
                {"prompt": e.instruction, "completion": a, "kind": e.kind}
                for e, a in list(zip(benign + borderline, answers))[:: max(1, len(answers) // 4)][
                    :4
                ]
            ],
        )

    def shard_ranges(self) -> list[tuple[int, int]]:
        """Contiguous ranges of the harmful behaviours, one per shard of an attack cell."""
        n = len(self.test.of("harmful"))
        size = self.section.shard_size or n or 1
        return [(start, min(start + size, n)) for start in range(0, n, size)] or [(0, 0)]

    def attack_shard(self, lm, column, record_id: str, shard: int) -> dict[str, Any]:  # noqa: ANN001
        """Attack the harmful behaviours of one shard, batch by batch. Shard 0 takes the cell's
        seed, so an unsharded cell is seeded as it always was."""
        threat: ThreatModel = column["threat"]
        attack: JailbreakAttack = column["built"]
        first, last = self.shard_ranges()[shard]
        harmful = self.test.of("harmful")[first:last]
        size = self.section.batch_size
        key = (record_id,) if shard == 0 else (record_id, "shard", shard)
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, *key))
        part: dict[str, Any] = {
            key: []
            for key in (
                "forced",
                "losses",
                "completions",
                "suffixes",
                "retokenize",
                "prompts",
            )
        }
        judges = self.judges()
        defense = getattr(lm, "text_defense", None)
        adapts = bool(getattr(attack, "adaptive", False))
        answer_rng = random.Random(derive_seed(self.config.seed, *key, "answers"))
        part["defense"] = None
        if defense is not None:
            applies = attack.name == "direct" or attack.spaces <= {"token"}
            part["defense"] = {
                # nothing to adapt for the direct request or where the defense cannot see
                "adaptive": (
                    (adapts and not getattr(attack, "universal", False))
                    if applies and hasattr(attack, "adaptive")
                    else None
                ),
                "applies": applies,
            }
        part.update(
            histories=[], forward=0, backward=0, filtered=0, judgements={j: [] for j in judges}
        )
        started = time.perf_counter()
        for begin in range(0, len(harmful), size):
            chunk = harmful[begin : begin + size]
            targets = [e.target for e in chunk]
            options = {"defense": defense} if defense is not None and adapts else {}
            if getattr(attack, "universal", False):  # one suffix from training behaviours
                train = self.train.of("harmful")[: attack.train_behaviors]
                options["train"] = ([e.instruction for e in train], [e.target for e in train])
                # one suffix per (attack settings, model, defense): a transfer source gets the
                # same seed, and so the same suffix, for every target cell
                options["seed"] = derive_seed(
                    self.config.seed, "universal", stable_hash(attack.settings())
                )
                options.pop("defense", None)
                options["pair"] = self.unit_pairs[record_id]
                options["cell"] = record_id
            with step_hook(self.progress.step):
                result = attack.run(
                    lm, [e.instruction for e in chunk], targets, threat, generator, **options
                )
            sent = result.prompts
            if sent is None and attack.name == "direct":
                sent = [e.instruction for e in chunk]
            if defense is not None and sent is not None:  # the defended answers to the text
                texts = defense.respond(lm, sent, self.section.max_new_tokens, answer_rng)
            else:
                texts = lm.generate(result.embeds, result.batch, self.section.max_new_tokens)
            if defense is not None and sent is not None:  # the defended system's forcing
                part["forced"] += [int(f) for f in defense.forced(lm, sent, targets, answer_rng)]
            else:
                part["forced"] += result.forced.int().tolist()
            part["losses"] += result.loss.tolist()
            part["histories"].append((len(chunk), list(result.history)))
            goals = [e.instruction for e in chunk]
            for name, judge in judges.items():
                part["judgements"][name] += judge(goals, texts, targets)
            part["completions"] += texts
            # the user message as sent: the text a token attack returns, the request for the
            # direct baseline; none for embedding attacks (no text carries their input)
            if result.prompts is not None:
                part["prompts"] += result.prompts
            elif attack.name == "direct":
                part["prompts"] += goals
            else:
                part["prompts"] += [None] * len(chunk)
            part["suffixes"] += result.suffix or [None] * len(chunk)
            part["retokenize"] += result.suffix_retokenizes or []
            part["forward"] += result.cost.forward
            part["backward"] += result.cost.backward
            part["filtered"] += result.filtered
            self.progress.batch_done()
        settings = attack.settings()
        if hasattr(attack, "resolved"):
            settings = dict(settings, resolved=attack.resolved(lm, threat))
        # seconds attacking, generating and judging (the unit's wall_time adds building the LM)
        part.update(settings=settings, seconds=time.perf_counter() - started)
        return part

    def cell_record(self, column, record_id, clean_id, parts) -> dict[str, Any]:  # noqa: ANN001
        """Merge the shards' parts (in shard order) into the cell's record."""
        threat: ThreatModel = column["threat"]
        mi, di = self.unit_pairs[record_id]
        model = self.plan_["models"][mi]
        defense = self.plan_["defenses"][di][0]
        harmful = self.test.of("harmful")

        def joined(key: str) -> list[Any]:
            return [value for part in parts for value in part[key]]

        forced, losses = joined("forced"), joined("losses")
        names = list(self.section.judges)
        judgements = {
            name: [value for part in parts for value in part["judgements"][name]] for name in names
        }
        judged = judgements[names[0]]
        completions, suffixes, retokenize = (
            joined("completions"),
            joined("suffixes"),
            joined("retokenize"),
        )
        histories = joined("histories")
        forward = sum(part["forward"] for part in parts)
        backward = sum(part["backward"] for part in parts)
        n = len(harmful)
        # the mean target loss per step over all prompts (chunks weighted by their size)
        steps = min((len(h) for _, h in histories), default=0)
        loss_history = [
            sum(size * h[step] for size, h in histories) / sum(size for size, _ in histories)
            for step in range(steps)
        ]
        examples = [
            {
                # the suffix tokens follow the instruction directly; its text keeps any space
                "prompt": e.instruction + (s or ""),
                "completion": c,
                "target": e.target,
                "label": "harmful" if j == 1 else "refused" if j == 0 else "undetermined",
                "success": j == 1,
                "forced": bool(f),
            }
            for e, c, s, j, f in zip(harmful, completions, suffixes, judged, forced)
        ]
        # the report shows successes first, then the rest
        examples.sort(key=lambda e: not e["success"])
        return JailbreakRecord(
            type="jailbreak",
            id=record_id,
            clean_id=clean_id,
            model=model.model_dump(),
            defense=defense.model_dump(),
            attack={
                "attack": column["config"].attack,
                "name": column["config"].name,
                "params": column["config"].params,
                "settings": parts[0]["settings"],
            },
            threat=threat.to_dict(),
            n=n,
            forced=forced,
            judged=judged,
            behaviors=[e.behavior for e in harmful],
            target_loss=losses,
            loss_history=loss_history,
            forced_asr=rate_entry(sum(forced), n),
            judged_asr=rate_entry(sum(1 for j in judged if j == 1), n),
            refused=sum(1 for j in judged if j == 0),
            undetermined=sum(1 for j in judged if j == -1),
            suffix_retokenizes=(sum(retokenize) / len(retokenize)) if retokenize else None,
            generation={
                "decoding": "greedy",
                "max_new_tokens": self.section.max_new_tokens,
                **self.judges()[names[0]].settings(),
            },
            judges={name: self.judges()[name].settings() for name in names},
            judgements=judgements,
            prompts=joined("prompts"),
            responses=completions,
            goals=[e.instruction for e in harmful],
            categories=[e.category for e in harmful],
            adaptive=(parts[0]["defense"] or {}).get("adaptive"),
            defense_applies=(parts[0]["defense"] or {}).get("applies"),
            cost={
                "forward": forward,
                "backward": backward,
                "per_prompt_forward": forward / n,
                # candidates dropped by the retokenization filter (attacks that have one)
                **(
                    {"filtered_candidates": sum(p["filtered"] for p in parts)}
                    if "filter_retokenization" in parts[0]["settings"]
                    else {}
                ),
            },
            attack_seconds=sum(part["seconds"] for part in parts),
            examples=examples[: self.section.examples],
        )


def _respond(lm, instructions: list[str], tokens: int, section: JailbreakConfig) -> list[str]:  # noqa: ANN001
    size = max(section.batch_size, 32)  # generation is cheap: larger batches than attacks
    out = []
    for begin in range(0, len(instructions), size):
        out += lm.respond(instructions[begin : begin + size], tokens)
    return out
