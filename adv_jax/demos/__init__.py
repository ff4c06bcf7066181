"""The essays' demonstrations and the paper's unit analysis, one module each.

Each module has a `Params` dataclass (its demo.params, checked at start-up) and
`run(ctx, params) -> numbers`, drawing its figures with `ctx.save` (adv_jax/demos/common.py).
The job that runs one is adv_jax/jobs/demo.py (`scripts/demo.py demo=NAME`).
"""

DEMOS = ("units", "linear", "effective_weights", "iris", "bottleneck", "figure7")
