"""Speed benchmarks (scripts: ``python benchmarks/throughput.py``) and the device kit (``python -m benchmarks.device_kit``).

A regular package, not a namespace one: an installed distribution that ships a top-level ``benchmarks``
package (some do) would otherwise win the import on a machine's image.
"""
