"""Certified bounds and the bracket against the attack, idle and loaded: results/bench_certify.md.

    python scripts/bench_certify.py [--version after] [--examples 2000] [--repeats 3] [--command-repeats 3]

Runs adv_jax/bench/certify.py and stores its numbers under --version in --json (the report shows
"before" and "after" side by side), then writes --out from the JSON. --report-only rewrites the
report from the JSON without measuring.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from adv_jax.reports import bench_certify, provenance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", choices=bench_certify.VERSIONS, default="after")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--command-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("results/bench_certify.json"))
    parser.add_argument("--out", type=Path, default=Path("results/bench_certify.md"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text()) if args.json.exists() else {}
    if not args.report_only:
        from adv_jax.bench import certify

        results = certify.run(args.examples, args.repeats, args.command_repeats)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        data[args.version] = {
            "results": results, "machine": provenance.machine(), "commit": commit, "busy": certify.BUSY,
            "examples": args.examples, "repeats": args.repeats, "models": list(certify.MODELS),
            "command": provenance.command("scripts/bench_certify.py", sys.argv[1:] if argv is None else argv,
                                          provenance.MNIST_ENV)}
        args.json.write_text(json.dumps(data, indent=1))
    args.out.write_text(bench_certify.report(data))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
