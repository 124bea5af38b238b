"""Open-loop load generation for DeepPlan on Triton.

Pure parts (no Locust, no gevent; safe to import anywhere):

- ``loadtest.schedule``: the arrival schedule type and the synthetic Poisson schedule (paper Fig. 12/13);
- ``loadtest.trace``: Azure Functions 2019 invocation traces mapped onto model instances (paper Fig. 14);
- ``loadtest.make_trace``: a generator of synthetic traces in the dataset's CSV layout;
- ``loadtest.results`` / ``loadtest.plots``: per-request log, summary JSON and PNG plots.

Locust files (importing them monkey-patches the process with gevent, as ``import locust`` does):
``loadtest/azure_trace.py`` and ``loadtest/synthetic.py``, both built on ``loadtest.open_loop``.
"""
