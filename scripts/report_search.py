"""Writes a hyperparameter search's results file (adv_jax/reports/search.py) from its trials and
the chosen recipe's seeds.

    python scripts/sweep.py -m search=adversarial_training                     # the search
    python scripts/report_search.py multirun/adversarial_training_search      # prints the next command:
    python scripts/sweep.py -m search=adversarial_training hydra/sweeper=basic ... seed=0,1,2 \
        hydra.sweep.dir=multirun/adversarial_training_chosen                   # the chosen recipe, 3 seeds
    python scripts/report_search.py multirun/adversarial_training_search multirun/adversarial_training_chosen \
        --out results/adversarial_training.md

One selection over several searches: `--also adversarial_training_paper=multirun/adversarial_training_paper_search`
adds that search's trials (conf/search/<name>.yaml, its own space); the best trial of them all is chosen.

Also writes <out>.json and <out>_slices.png. Title, notes and the paper's number: conf/report/<--config>.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adv_jax.reports import provenance, search, settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("search_dir", type=Path, help="the search's sweep directory (trial_<n>/ runs)")
    parser.add_argument("chosen_dir", type=Path, nargs="?",
                        help="the chosen recipe's sweep over seeds; without it, print the command that makes it")
    parser.add_argument("--out", type=Path, help="markdown file (with chosen_dir)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the chosen recipe (default 0,1,2)")
    parser.add_argument("--also", action="append", default=[], metavar="SEARCH=DIR",
                        help="another search's trials in the same selection (conf/search/SEARCH.yaml, its sweep dir)")
    parser.add_argument("--config", default="adversarial_training_search",
                        help="conf/report/<name>.yaml (default: adversarial_training_search)")
    args = parser.parse_args(argv)
    conf = settings.load(args.config)
    searches = {conf["search"]: args.search_dir}
    for pair in args.also:
        name, _, path = pair.partition("=")
        if not path or not (search.CONF_DIR / "search" / f"{name}.yaml").exists():
            parser.error(f"--also {pair!r}: expected SEARCH=DIR with conf/search/SEARCH.yaml")
        if name in searches:
            parser.error(f"--also {pair!r}: search {name} is already in the selection (at {searches[name]})")
        searches[name] = Path(path)
    if args.chosen_dir is None or args.out is None:
        chosen = args.chosen_dir or args.search_dir.with_name(args.search_dir.name.replace("_search", "") + "_chosen")
        print(search.next_command(searches, conf, [int(s) for s in args.seeds.split(",")], chosen))
        return
    command = provenance.command("scripts/report_search.py", sys.argv[1:] if argv is None else argv)
    try:
        print(search.write(searches, args.chosen_dir, command, conf, args.out))
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
