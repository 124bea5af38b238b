"""Engine hosts: the device work of many Triton models in one process per target GPU.

Triton's Python backend runs one stub process per model instance; a process that touches CUDA costs a CUDA
context (~0.6 GB) on every GPU it touches. With ``process: shared`` (the default) a model's stub is only a
front end (`host_client`, NumPy and a socket, no PyTorch), and an engine host per target GPU
(`engine_host`) owns the models' pinned weights, plans, engines and residency. Each model keeps its own
Triton identity (endpoint, statistics, load/unload); messages between them are `wire` frames. Each host keeps a
`standby`, a process with the imports done, that replaces it if it dies.
"""
