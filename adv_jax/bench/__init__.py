"""What measures or computes for a report: each module writes JSON (or hands a dict) that a module
of adv_jax/reports turns into markdown; scripts/ holds the entry points.

  timing           median_seconds(fn, repeats): the one timer
  harness          SIZES tiny, cpu, gpu: training together vs one by one, attack throughput, sweeps
                   sharing a device, a study end to end (scripts/bench.py, scripts/gpu_check.sh)
  attacks          L-BFGS batched vs scipy, the full test set, its roofline (results/bench_attacks.md)
  foolbox_compare  PGD, C&W, DeepFool against foolbox 3.3.4
  minnorm          every minimum-norm attack's distances (results/bench_minnorm.md)
  conv_norm        the conv operator norm by FFT, dense SVD, power iteration (results/bench_lipschitz.md)
  pool_refresh     the cost of one adversarial-pool refresh
  certify, scaling the certified bounds' and the bracket's cost; cost against size
  models, layer_bounds, lipschitz_inputs
                   runs and values a report needs that no run stores: the paper's models and their
                   noisy errors, a study's per-layer bounds, the Lipschitz report's sweeps and lower bounds
"""
