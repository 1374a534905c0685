"""twinweave's agent: a load-time weaving profiler.

Start it with ``python -m agent.bootstrap --pointcuts aop.xml app.py`` or
``python -X agent=aop.xml app.py``; see ``agent.plugins`` to write a plugin and
``agent.pointcuts`` for the pointcut file.
"""

__version__ = "0.1.0"
