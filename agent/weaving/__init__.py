"""Backends that make calls of matched functions report to their probes.

``rewrite`` (with ``templates`` and ``env``) rewrites bytecode and works on every
supported Python; ``monitoring`` uses ``sys.monitoring`` on 3.12+. Both take a
function's code object and its :class:`agent.events.Probe`.
"""
