"""The fault campaign: the real node on separate hosts (network namespaces) under real faults.

``python -m benchmarks.chaos --runs 100 --seed 1`` (as root, on Linux). See
:mod:`benchmarks.chaos.campaign` for what a run does and :mod:`benchmarks.chaos.check` for
the verdict, which is computed from the logs and the final folders alone.
"""
