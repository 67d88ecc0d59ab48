"""Stand-in for ansible-test's pip bootstrap script (get-pip-<ver>.py).

ansible-test downloads its pip bootstrap from ci-files.testing.ansible.com, which this
workplace cannot reach. scripts/setup installs this file at the cache path ansible-test
looks at first (~/.ansible/test/cache/get_pip_<ver>.py). It does what get-pip does: run
pip from a wheel (the interpreter's own ensurepip bundle) to install the pinned pip that
ansible-test asked for (its arguments, e.g. ``pip==24.2 --disable-pip-version-check``),
downloaded from PyPI.
"""
import glob
import os
import runpy
import sys

import ensurepip

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

bundled = glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl"))
if not bundled:
    sys.exit("no bundled pip wheel in ensurepip: cannot bootstrap pip")
sys.path.insert(0, bundled[0])
sys.argv = ["pip", "install"] + [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
