"""Our GCG against nanoGCG 0.3.0 (GraySwanAI), side by side at an equal budget.

Two models:

- ``builtin:tiny-chat-lm`` on all 24 held-out harmful behaviours: strength and speed;
- a ~100M-parameter random Llama (hidden 768, 14 layers, the tiny model's tokenizer) saved with
  ``save_pretrained`` and loaded through ``hf:DIR``: speed only, on ``--big-prompts`` behaviours.

The budget is the same for both: ``--steps`` steps, ``--candidates`` candidates (nanoGCG's
``search_width``), top-k ``--topk``, one token replaced per candidate, a 10-token suffix started
from ``!`` x 10, non-ASCII tokens excluded, the retokenization filter on, no early stop and no
buffer. nanoGCG runs one behaviour at a time (its API); ours batches the behaviours.

nanoGCG 0.3.0 pins ``transformers<=4.47.1``; ``make bench`` installs it with ``pip --no-deps``
beside our transformers 5, where its prefix cache fails (``DynamicCache`` is not subscriptable):
it runs with ``use_prefix_cache=False``, its supported fallback. Ours caches the prefix.
nanoGCG renders the chat template, removes its BOS text and lets the tokenizer add the BOS back;
the tiny tokenizer adds none, so nanoGCG gets a copy that does, and the benchmark checks that
nanoGCG's own best loss equals the loss of its best string in our layout (it stops otherwise).
Ours runs twice: batched over the behaviours (``time_ratio``, what a user of the jailbreak
section gets) and one behaviour at a time as nanoGCG's API runs (``time_ratio_one_at_a_time``).

Per behaviour, each suffix is judged as a user would send it: the instruction followed by the
suffix text, encoded again in our chat layout, greedy generation of 24 tokens, the keyword
judge (and the learned one). Reported: the text-judged ASR of each, whether every suffix
encodes back to its ids (``instruction + suffix``: nanoGCG filters the suffix alone), the
per-behaviour best loss (each tool's own) and the target loss of the returned text in our
layout, and seconds per prompt-step (wall time over behaviours x steps), one torch thread per
run unless ``--threads``. Writes reports/bench/gcg_peer.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BIG = {"hidden": 768, "intermediate": 2048, "layers": 14, "heads": 12}


def behaviours(n: int) -> tuple[list[str], list[str]]:
    from robustbench_cl.data.chat import make_chat

    harmful = make_chat("test", 0, n, 0, seed=1).of("harmful")
    return [e.instruction for e in harmful], [e.target for e in harmful]


def judged(lm, instructions, targets, suffixes) -> dict:  # noqa: ANN001
    """Text outcomes of each suffix: as a user sends it, re-encoded in our layout."""
    from robustbench_cl.attacks.gcg import round_trips
    from robustbench_cl.tasks.jailbreak.judges import make_judge

    prompts = [i + s for i, s in zip(instructions, suffixes)]
    ids = [lm.tokenizer(s, add_special_tokens=False)["input_ids"] for s in suffixes]
    faithful = round_trips(lm, instructions, ids)
    with torch.no_grad():
        batch = lm.layout(prompts, targets)
        embeds = lm.embed(batch.ids)
        logits = lm.logits(embeds, batch)
        loss = lm.target_loss(logits, batch).tolist()
        forced = lm.forced(logits, batch).int().tolist()
    texts = lm.generate(embeds, batch, 24)
    keyword = make_judge("keyword")(instructions, texts, targets)
    learned = make_judge("learned")(instructions, texts, targets)
    return {
        "prompts": prompts,
        "responses": texts,
        "text_loss": loss,
        "forced": forced,
        "keyword": keyword,
        "learned": learned,
        "asr_keyword": sum(v == 1 for v in keyword) / len(keyword),
        "asr_learned": sum(v == 1 for v in learned) / len(learned),
        "round_trips_with_instruction": sum(faithful) / len(faithful),
    }


def run_ours_alone(lm, instructions, targets, args) -> dict:  # noqa: ANN001
    """Ours one behaviour at a time, as nanoGCG's API runs: no batching advantage."""
    parts = [run_ours(lm, [i], [t], args) for i, t in zip(instructions, targets)]
    seconds = sum(p["seconds"] for p in parts)
    return {
        "seconds": seconds,
        "seconds_per_prompt_step": seconds / (len(instructions) * args.steps),
        "suffixes": [p["suffixes"][0] for p in parts],
        "best_loss": [p["best_loss"][0] for p in parts],
    }


def run_ours(lm, instructions, targets, args) -> dict:  # noqa: ANN001
    from robustbench_cl.attacks import make_attack
    from robustbench_cl.threat import ThreatModel

    attack = make_attack(
        "gcg",
        steps=args.steps,
        suffix_length=10,
        topk=args.topk,
        candidates=args.candidates,
        init="!",
    )
    threat = ThreatModel(norm="none", eps=0.0, space="token", bounds=None)
    start = time.perf_counter()
    result = attack.run(lm, instructions, targets, threat, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    texts = lm.tokenizer.batch_decode(result.suffix_ids.tolist())
    return {
        "seconds": seconds,
        "seconds_per_prompt_step": seconds / (len(instructions) * args.steps),
        "suffixes": texts,
        "best_loss": result.loss.tolist(),
        "filtered_candidates": result.filtered,
    }


def with_bos(tokenizer):  # noqa: ANN001, ANN201
    """A copy of ``tokenizer`` that prepends its BOS when asked for special tokens: nanoGCG
    removes the BOS text from the rendered template and expects tokenizing ``before`` to add it
    back; our tiny tokenizer adds none by itself, so without this nanoGCG would optimise a
    prompt without BOS while every outcome is judged in our layout, with it."""
    import copy

    from tokenizers import processors

    bos = tokenizer.bos_token
    out = copy.deepcopy(tokenizer)
    out._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    return out


def run_nanogcg(lm, instructions, targets, args) -> dict:  # noqa: ANN001
    import nanogcg
    from nanogcg import GCGConfig

    logging.getLogger("nanogcg").setLevel(logging.WARNING)
    config = GCGConfig(
        num_steps=args.steps,
        optim_str_init="!" * 10,
        search_width=args.candidates,
        topk=args.topk,
        n_replace=1,
        buffer_size=0,
        use_prefix_cache=False,  # fails on transformers 5 (see the module docstring)
        allow_non_ascii=False,
        filter_ids=True,
        seed=0,
        verbosity="WARNING",
    )
    suffixes, best = [], []
    tokenizer = (
        with_bos(lm.tokenizer)
        if lm.tokenizer("x")["input_ids"][:1] != [lm.tokenizer.bos_token_id]
        else lm.tokenizer
    )
    start = time.perf_counter()
    for instruction, target in zip(instructions, targets):
        result = nanogcg.run(lm.model, tokenizer, instruction, target, config)
        suffixes.append(result.best_string)
        best.append(result.best_loss)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "seconds_per_prompt_step": seconds / (len(instructions) * args.steps),
        "suffixes": suffixes,
        "best_loss": best,
    }


def compare(lm, n: int, args, strength: bool) -> dict:  # noqa: ANN001
    instructions, targets = behaviours(n)
    row: dict = {"behaviours": n}
    runners = [("ours", run_ours), ("ours_alone", run_ours_alone), ("nanogcg", run_nanogcg)]

    for name, runner in runners:
        out = runner(lm, instructions, targets, args)
        if strength and name != "ours_alone":  # (its suffixes are judged in "ours" too)
            out.update(judged(lm, instructions, targets, out["suffixes"]))
        row[name] = out
        print(f"  {name}: {out['seconds_per_prompt_step']:.3f} s per prompt-step", flush=True)
    nano = row["nanogcg"]["seconds_per_prompt_step"]
    row["time_ratio"] = row["ours"]["seconds_per_prompt_step"] / nano
    if "ours_alone" in row:  # without batching the behaviours
        row["time_ratio_one_at_a_time"] = row["ours_alone"]["seconds_per_prompt_step"] / nano
    if strength:
        # parity (field-standards A4): nanoGCG's own best loss and the loss of its best string
        # in our layout must agree, or the two tools did not attack the same prompt
        gaps = [
            abs(a - b) for a, b in zip(row["nanogcg"]["best_loss"], row["nanogcg"]["text_loss"])
        ]
        row["nanogcg_layout_parity"] = {
            "max_abs_loss_gap": max(gaps),
            "same_prompt": all(
                abs(a - b) <= 1e-5 + 1e-3 * abs(b)
                for a, b in zip(row["nanogcg"]["best_loss"], row["nanogcg"]["text_loss"])
            ),
            "note": "nanoGCG's best_loss vs the loss of its best_string sent as text in our layout",
        }
        row["asr_keyword"] = {k: row[k]["asr_keyword"] for k in ("ours", "nanogcg")}
        row["asr_learned"] = {k: row[k]["asr_learned"] for k in ("ours", "nanogcg")}
        row["every_suffix_round_trips"] = {
            k: row[k]["round_trips_with_instruction"] == 1.0 for k in ("ours", "nanogcg")
        }
        row["median_text_loss"] = {
            k: statistics.median(row[k]["text_loss"]) for k in ("ours", "nanogcg")
        }
    return row


def big_model(folder: Path):  # noqa: ANN201
    from robustbench_cl.models import load_model
    from robustbench_cl.models.llm import ChatLM, save_chat_lm, tiny_llama, unwrap_chat_lm

    small = unwrap_chat_lm(load_model("builtin:tiny-chat-lm"))
    torch.manual_seed(0)
    model = tiny_llama(len(small.tokenizer), BIG).eval()
    save_chat_lm(ChatLM(model, small.tokenizer, "random-llama-100m"), folder)
    lm = unwrap_chat_lm(load_model(f"hf:{folder}"))
    lm.requires_grad_(False)
    return lm, sum(p.numel() for p in lm.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--topk", type=int, default=32)
    parser.add_argument("--behaviours", type=int, default=24)
    parser.add_argument("--big-prompts", type=int, default=4)
    parser.add_argument("--big-steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "gcg_peer.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from importlib.metadata import version

    from robustbench_cl.models import load_model
    from robustbench_cl.models.llm import unwrap_chat_lm
    from robustbench_cl.utils import device_name

    lm = unwrap_chat_lm(load_model("builtin:tiny-chat-lm"))
    lm.requires_grad_(False)
    print("tiny-chat-lm:", flush=True)
    report = {
        "budget": {
            "steps": args.steps,
            "candidates": args.candidates,
            "topk": args.topk,
            "suffix_length": 10,
            "n_replace": 1,
            "init": "!" * 10,
        },
        "versions": {
            "nanogcg": version("nanogcg"),
            "transformers": version("transformers"),
            "torch": torch.__version__,
        },
        "nanogcg_settings": "use_prefix_cache=False (its cache fails on transformers 5)",
        "threads": args.threads,
        "device": device_name(torch.device("cpu")),
        "tiny_chat_lm": compare(lm, args.behaviours, args, strength=True),
    }
    parity = report["tiny_chat_lm"]["nanogcg_layout_parity"]
    if not parity["same_prompt"]:  # before spending the 100M model's minutes
        raise SystemExit(
            f"nanoGCG attacked another prompt than ours (loss gap "
            f"{parity['max_abs_loss_gap']:.3g}): the comparison is void"
        )
    if not args.skip_big:
        with tempfile.TemporaryDirectory() as folder:
            big, parameters = big_model(Path(folder))
            print(f"random Llama ({parameters / 1e6:.0f}M parameters) through hf:DIR:", flush=True)
            steps = args.steps
            args.steps = args.big_steps
            report["random_llama_100m"] = dict(
                compare(big, args.big_prompts, args, strength=False),
                parameters=parameters,
                steps=args.big_steps,
            )
            args.steps = steps
    tiny = report["tiny_chat_lm"]
    report["target"] = {
        "every_suffix_round_trips": tiny["every_suffix_round_trips"]["ours"],
        "asr_at_least_nanogcg": tiny["asr_keyword"]["ours"] >= tiny["asr_keyword"]["nanogcg"],
        "half_the_time_tiny": tiny["time_ratio"] <= 0.5,
        "half_the_time_tiny_one_at_a_time": tiny["time_ratio_one_at_a_time"] <= 0.5,
        "half_the_time_100m": (report.get("random_llama_100m") or {}).get("time_ratio", 1) <= 0.5,
        "half_the_time_100m_one_at_a_time": (report.get("random_llama_100m") or {}).get(
            "time_ratio_one_at_a_time", 1
        )
        <= 0.5,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["target"], indent=2))
    print(
        f"tiny: ASR ours {tiny['asr_keyword']['ours']:.0%} vs nanoGCG {tiny['asr_keyword']['nanogcg']:.0%}; time ratio {tiny['time_ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
