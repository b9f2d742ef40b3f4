"""What does one step of the embedding attack cost, next to the bare language model?

The limit: a step needs one forward and one backward pass through the LM, w.r.t. the input
embeddings only. The bare reference is exactly that, written by hand: ``model(inputs_embeds)``,
the target cross-entropy, ``autograd.grad`` w.r.t. the embeddings. The attack adds the sign
step, the per-token projection, the best-so-far bookkeeping and the masks. Both run on the same
batch (24 held-out harmful prompts of the built-in chat model, or ``--model hf:DIR``), in one
process, interleaved; medians of ``--repeats`` timings of ``--steps`` steps.

A GCG step is reported too, as the multiple of one bare forward+backward: it adds the one-hot
gradient and the scoring of ``candidates`` suffixes per prompt (forward only).
Writes reports/bench/embedding_attack.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from robustbench_cl.attacks import make_attack
from robustbench_cl.data.chat import make_chat
from robustbench_cl.models import load_model
from robustbench_cl.models.llm import unwrap_chat_lm
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import device_name

ROOT = Path(__file__).resolve().parent.parent


def bare_steps(lm, batch, steps: int) -> float:  # noqa: ANN001
    """``steps`` forward+backward passes w.r.t. the input embeddings, nothing else."""
    embeds = lm.embed(batch.ids).detach().requires_grad_(True)
    start = time.perf_counter()
    for _ in range(steps):
        loss = lm.target_loss(lm.logits(embeds, batch), batch).sum()
        torch.autograd.grad(loss, embeds)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin:tiny-chat-lm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gcg-candidates", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "reports" / "bench" / "embedding_attack.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = unwrap_chat_lm(load_model(args.model))
    harmful = make_chat("test", 0, 24, 0, seed=1).of("harmful")
    instructions, targets = [e.instruction for e in harmful], [e.target for e in harmful]
    batch = lm.layout(instructions, targets)
    threat = ThreatModel(norm="l2", eps=0.3, space="embedding", bounds=None, eps_relative=True)
    embedding = make_attack("embedding", steps=args.steps)
    gcg_steps = max(2, args.steps // 10)
    gcg = make_attack("gcg", steps=gcg_steps, candidates=args.gcg_candidates)
    token = ThreatModel(norm="none", eps=0.0, space="token", bounds=None)
    bare_steps(lm, batch, 2)  # warm-up
    embedding.run(lm, instructions, targets, threat)
    bare, attack, gcg_times = [], [], []
    for _ in range(args.repeats):
        bare.append(bare_steps(lm, batch, args.steps) / args.steps)
        attack.append(embedding.run(lm, instructions, targets, threat).wall_time / args.steps)
        gcg_times.append(gcg.run(lm, instructions, targets, token).wall_time / gcg_steps)
    result = {
        "benchmark": "embedding_attack",
        "model": args.model,
        "prompts": len(instructions),
        "steps": args.steps,
        "repeats": args.repeats,
        "device": device_name(torch.device("cpu")),
        "threads": 1,
        "bare_step_seconds": statistics.median(bare),
        "embedding_step_seconds": statistics.median(attack),
        "embedding_limit_ratio": statistics.median(attack) / statistics.median(bare),
        "gcg_candidates": args.gcg_candidates,
        "gcg_step_seconds": statistics.median(gcg_times),
        "gcg_step_in_bare_steps": statistics.median(gcg_times) / statistics.median(bare),
        "note": "per-step times include the attack's setup and final scoring, spread over steps",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'per step (24 prompts)':32s}{'seconds':>10s}{'x bare':>8s}")
    print(f"{'bare forward+backward':32s}{result['bare_step_seconds']:10.4f}{1.0:8.2f}")
    print(
        f"{'embedding attack':32s}{result['embedding_step_seconds']:10.4f}"
        f"{result['embedding_limit_ratio']:8.2f}"
    )
    print(
        f"{f'GCG ({args.gcg_candidates} candidates)':32s}{result['gcg_step_seconds']:10.4f}"
        f"{result['gcg_step_in_bare_steps']:8.2f}"
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
