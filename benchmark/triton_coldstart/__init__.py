"""Cold starts of the deepplan backend inside the real tritonserver, measured by a gRPC client, in ONE run.

    python3 -m benchmark.triton_coldstart --out results/triton --models bert-base resnet50 --instances 8 --budget 2GiB
    python3 -m benchmark.triton_coldstart --out /tmp/quick --quick        # tiny models, CPU is fine

Steps (each prints progress; a failing step is recorded and the run goes on where it can):

1. A model repository in a temporary folder: one deepplan model per ``--models`` entry, plus ``--instances``
   copies of the first model (``<model>-evict-<i>``). All target GPU 0 (``devices auto`` adds every peer GPU for
   PT; on a machine without GPU they run on the CPU) and declare one per-device ``budget`` that holds only a few
   of them, so requests force evictions. Plans are made by the backend at load, into ``<out>/plans``.
2. ``tritonserver`` through `deepplan_backend.serve.TritonServer` (the code path of ``python3 -m deepplan_backend``)
   with the first model; the time to readiness is recorded. The other models are then loaded through the
   model-control API (the listed ones one by one, the eviction instances together), so that each plan is made
   by one process alone, with no other process profiling the same GPUs at the same time.
3. Per model, through ``tritonclient.grpc``: the first request (cold), ``--warm`` warm requests, then ``--recold``
   cold starts forced by requests to the eviction instances (until the residency state shows the model evicted):
   client latency vs. the provisioning time the backend reports in its ``cold_start`` output; ratio client/engine.
4. Eviction run: ``--rounds`` round-robin passes over the eviction instances; cold starts (``cold_start`` output),
   evictions (resident -> evicted transitions in the residency state, and Triton's metrics), peak bytes counted
   against the budget, and every answer compared with the plain model computed in this process.
5. PT: the devices each model serves on, from the backend's ``deepplan: <instance> ready: ... devices=[...]`` line.
6. Triton's floor, measured during step 3: a ``backend: "python"`` model with the same configuration (inputs,
   outputs, batching, instance kind) whose ``execute`` only reads the inputs as the deepplan front end does and
   answers zeros (`floor_model.FLOOR_MODEL_PY`), loaded through the model-control API for the forced cold
   starts, asked once right after each of them through the same client path, unloaded. Its median client
   latency, ``triton_floor_ms``, is what any Python-backend model pays for this request in the same conditions,
   whatever it computes: gRPC, Triton's scheduling and the stub's IPC. ``overhead_ms`` = client - engine cold
   latency, of which ``own_overhead_ms`` = overhead - floor is ours.
7. Triton's own readiness for comparison: a plain ``backend: "python"`` model that loads the same weights from a
   Hugging Face checkpoint folder and moves them to the device in ``initialize``, loaded through the
   model-control API (admin token) and timed until it answers its first request; then the same for a fresh
   deepplan model of the same zoo model. Both are unloaded afterwards.
8. ``<out>/triton_coldstart.csv`` and ``.json``, ``<out>/server.log``; a table at the end. ``backend_cold_ms`` is
   Triton's own ``compute_infer`` time of the cold requests (statistics API): client - backend = Triton and
   network, backend - engine = the Python backend's exchange with the stub, the front end in it and its hop to
   the engine host.

Triton instance kind: ``KIND_CPU`` by default (``--triton-kind gpu`` for ``KIND_GPU`` on GPU 0): the deepplan
backend picks its GPUs itself from ``devices``, so the kind only decides which device id Triton passes.

Exit codes: 0 all steps ran and every answer was right; 1 a step failed or an answer was wrong; 2 the server did
not start (its error lines are printed).

Modules, in the order of a run:

- `cli`: the options, their ``--quick`` defaults, and the budget they resolve to;
- `repository`: where a run's files live (`Layout`) and the deepplan models Triton loads (step 1);
- `floor_model` and `plain_model`: the two ``backend: "python"`` models it compares against (steps 6, 7);
- `reference`: the plain model's answers, computed in this process, that every response is checked against;
- `server_log`: ``server.log``, and what the backend's ready and trace lines say;
- `client`: the gRPC client, one `Answer` per request;
- `metrics` and `residency_watch`: what the eviction counts are read from (Triton's metrics, residency state);
- `session`: the server of the run with all its models, and the counts of every answer (step 2);
- `cold_samples`, `eviction_run`, `load_compare`: the measurements (steps 3 and 6, 4, 7);
- `protocol`: `Bench`, the steps in order;
- `stats`: what each model met, and the medians;
- `plan_evidence`: PT evidence from the plan files (step 5);
- `rows` and `report`: the CSV columns and rows, the JSON document, and the printed table (step 8).
- `__main__`: one run, from the options to the exit code; `progress`: its progress lines.
"""
