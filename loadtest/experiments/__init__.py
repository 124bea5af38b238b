"""Experiment drivers: start the real server with N deepplan instances, run Locust headless, collect, plot.

- :mod:`loadtest.experiments.sweep`: the paper's Fig. 12/13 flow (instance-count sweep, synthetic workload);
- :mod:`loadtest.experiments.trace_replay`: the Fig. 14 flow (Azure Functions trace, a mix of models);
- :mod:`loadtest.experiments.host_death`: one engine host killed under load, and how the server recovers;
- :mod:`loadtest.experiments.resummarize`: a finished experiment's table recomputed from its logs.

What they share, one module each:

- :mod:`~loadtest.experiments.cli`: the common options and their checks;
- :mod:`~loadtest.experiments.engines`: the engine variants compared;
- :mod:`~loadtest.experiments.devices`: the GPUs used, and the one each instance is served on;
- :mod:`~loadtest.experiments.repository`: the model repository of one point;
- :mod:`~loadtest.experiments.server`: one server start through :class:`deepplan_backend.serve.TritonServer`
  that waits until *every* model is ready (also used by the Triton benchmarks);
- :mod:`~loadtest.experiments.point`: one point: its folders, and one Locust run (a subprocess, open loop)
  against its server;
- :mod:`~loadtest.experiments.table`: the result rows and the CSV / JSON writer;
- :mod:`~loadtest.experiments.progress`: the progress lines.
"""
