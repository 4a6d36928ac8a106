"""Experiments on the bundled ORL faces: the CPU presets, the demo, the benchmark, the report.

* :mod:`ppfr.experiments.presets`: every method's CPU-sized model and training budget, the
  attack settings, and the ``configs/<method>-orl.toml`` files generated from them;
* :mod:`ppfr.experiments.demo`: ``ppfr demo``, train, verify and attack one identity split;
* :mod:`ppfr.experiments.bench`: ``ppfr bench orl``, the demo's recipe over several splits;
* :mod:`ppfr.experiments.merge`: the benchmark's aggregation over splits, ``ppfr bench merge``;
* :mod:`ppfr.experiments.tables`: every result table's columns, declared once (demo, report,
  benchmark, and the tables the commands print);
* :mod:`ppfr.experiments.plots`: the figures (image grids, privacy against accuracy, the
  benchmark's frontier) and the one matplotlib set-up;
* :mod:`ppfr.experiments.report`: the demo's ``report.json`` / ``report.html``.

This package sits on top of the library (methods, training, evaluation, attacks); nothing
in the library imports it.
"""
