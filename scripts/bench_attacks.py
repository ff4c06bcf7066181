"""Attack benchmark on FC100-100-10 trained on P1: writes results/bench_attacks.md.

    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_attacks.py [--examples 1000] [--scipy 30]
    ADV_JAX_MNIST_DIR=../shared/data/mnist python scripts/bench_attacks.py --quick --examples 2000 attack.params.c_steps=5

--quick: only ours against scipy on --examples images, printed (no full test set, foolbox or
arithmetic section, nothing written); trailing arguments override conf/attack/lbfgs.yaml.
The measurements: adv_jax/bench/attacks.py (kept in --out's .json); the markdown:
adv_jax/reports/bench_attacks.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adv_jax import devices
from adv_jax.bench import attacks
from adv_jax.reports import bench_attacks, provenance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/models/fc100_p1"))
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--scipy", type=int, default=30, help="examples for the scipy version")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-foolbox", action="store_true")
    parser.add_argument("--quick", action="store_true", help="section (a) only, printed")
    parser.add_argument("--out", type=Path, default=Path("results/bench_attacks.md"))
    parser.add_argument("--cpu-devices", default="auto", help="as the config key cpu_devices")
    parser.add_argument("overrides", nargs="*", help="attack overrides, e.g. attack.params.c_steps=5")
    args = parser.parse_args(argv)
    devices.use_cpu_devices(args.cpu_devices)  # before JAX's first operation, as adv_jax.run does
    command = provenance.command("scripts/bench_attacks.py", sys.argv[1:] if argv is None else argv,
                                 provenance.MNIST_ENV)
    measured = attacks.measure(args.run_dir, args.examples, args.scipy, args.repeats, tuple(args.overrides),
                               args.quick, not args.skip_foolbox)
    text = bench_attacks.report(measured, command)
    if not args.quick:
        args.out.with_suffix(".json").write_text(json.dumps(measured, indent=1))
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
