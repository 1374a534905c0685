"""Installs ``twinweave.pth`` at the top of site-packages, so that ``-X agent=FILE`` works.

Everything else is in pyproject.toml. Package data cannot place a file at the
top of site-packages, so two commands are extended: ``build_py`` copies the
file into the build folder that regular wheels are made from, and
``editable_wheel`` (``pip install -e .``, PEP 660) adds it to the files it
unpacks into the editable wheel, next to setuptools' own ``__editable__`` .pth.
"""

import os
import shutil

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "twinweave.pth"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), PTH)


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            self.copy_file(SOURCE, os.path.join(self.build_lib, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return [*outputs, os.path.join(self.build_lib, PTH)]


class editable_wheel_with_pth(editable_wheel):
    # The one hook setuptools gives for extra files in the unpacked editable wheel.
    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        shutil.copyfile(SOURCE, os.path.join(installation_dir, PTH))


# The C parts are optional: without a C compiler the install goes on, timing-mode
# probes use the pure-Python path (agent/speedups.py says which runs) and the weaver
# its Python core.
SPEEDUPS = (
    []
    if os.environ.get("TWINWEAVE_PURE_PYTHON")
    else [
        Extension("agent._speedups", ["agent/_speedups.c"], optional=True),
        # The direct patcher's core (agent/weaving/patch.py has the same in Python).
        Extension("agent.weaving._patch", ["agent/weaving/_patch.c"], optional=True),
    ]
)

setup(
    cmdclass={"build_py": build_py_with_pth, "editable_wheel": editable_wheel_with_pth},
    ext_modules=SPEEDUPS,
)
