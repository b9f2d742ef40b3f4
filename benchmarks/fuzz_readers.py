"""The long run of the reader fuzzing: thousands of mutated inputs per reader of user files.

``tests/test_fuzz.py`` runs a few hundred per reader in ``make test``; this runs ``--examples``
per reader (default 3,000), each reader in its own process (tests/fuzz_readers.py: a mutation
either loads or gives one UserError line, no hang, no write outside its folder), and records how
many inputs loaded and how many were refused. Writes reports/bench/fuzz_readers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuzz_readers import READERS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "reports" / "bench" / "fuzz_readers.json"
    )
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rbcl-fuzz-") as scratch:
        for reader in READERS:
            start = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "tests" / "fuzz_readers.py"),
                    reader,
                    str(args.examples),
                    str(args.seed),
                    str(Path(scratch) / reader),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                timeout=3600,
            )
            lines = result.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if lines else {"reader": reader, "failure": "no output"}
            row["returncode"] = result.returncode
            row["wall_seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(
                f"{reader:18s} loaded {row.get('loaded', '-'):>5} refused {row.get('refused', '-'):>5}"
                f"  {row['wall_seconds']:>6.1f} s  {row.get('failure') or 'ok'}"
            )
    summary = {
        "benchmark": "fuzz_readers",
        "examples_per_reader": args.examples,
        "seed": args.seed,
        "date": time.strftime("%Y-%m-%d"),
        "readers": rows,
        "all_ok": all(r.get("failure") is None and r["returncode"] == 0 for r in rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out}")
    if not summary["all_ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
