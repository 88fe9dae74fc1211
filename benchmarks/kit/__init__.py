"""The device kit: every GPU figure of the project from one call (``benchmarks/device_kit.py``).

One module per section (``step``, ``loss_memory``, ``views``, ``e2e``, ``grid``); each runs in its own
process under its own time budget (:mod:`benchmarks.kit.runner`) and writes what it measured as it goes
(:class:`benchmarks.kit.record.Record`), so a section that fails, hangs or runs out of time costs only
itself. Sizes for the GPU run and the CPU ``--smoke`` run are in :mod:`benchmarks.kit.sizes`.
Imports no ray, mlflow or boto3 (a test runs the smoke mode with those imports blocked).
"""
