"""Results files from run directories: the top layer of adv_jax (nothing below imports it).

  runs          find_runs(paths), read_run(dir), find_studies(paths): finished runs and studies
  tables        markdown(columns, rows), fmt, percent, mean_std: cells and tables
  provenance    machine_line(), command(script, argv), header(title, command): where a file comes from
  timing        median(values), median_seconds(fn, repeats): repeated timings
  paper         the paper's reference numbers (Tables 1-5, section 4.2, essays)
  settings      load(name): conf/report/<name>.yaml (rows, sweeps, titles, notes)
  models, lipschitz, lipschitz_compare, aggregate, adversarial_training, demos, bench*:
                the builders of results/<name>.md; scripts/ holds their thin entry points
"""
