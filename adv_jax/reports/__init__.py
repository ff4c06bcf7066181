"""Results files from run directories and bench JSON: they read and write markdown and figures,
and never compute with JAX, train or launch (tests/test_architecture.py); what measures lives in
adv_jax/bench.

  runs          find_runs(paths), read_run(dir), find_studies(paths): finished runs and studies
  tables        markdown(columns, rows), fmt, percent, mean_std: cells and the one table writer
  provenance    machine_line(), command(script, argv), header(title, command): where a file comes from
  paper         the paper's reference numbers (Tables 1-5, section 4.2, essays)
  settings      load(name): conf/report/<name>.yaml (rows, sweeps, titles, notes)
  models, lipschitz (lipschitz_entries, lipschitz_compare, lipschitz_plot), aggregate,
  adversarial_training, search, transfer_attacks, demos, scaling, bench*:
                the builders of results/<name>.md; scripts/ holds their thin entry points
"""
