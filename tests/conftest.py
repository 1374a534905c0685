"""Settings every test process (and the processes it starts) shares."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# The agents the tests start keep their woven-code cache (agent.weaving.codecache) in a
# folder of this run, not in the interpreter's or the user's caches; tests of the
# cache's own placement set the setting themselves.
if "AGENT_CODE_CACHE" not in os.environ:
    _folder = tempfile.mkdtemp(prefix="twinweave-test-code-cache-")
    os.environ["AGENT_CODE_CACHE"] = _folder
    atexit.register(shutil.rmtree, _folder, True)
