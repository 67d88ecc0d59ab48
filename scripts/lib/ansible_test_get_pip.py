"""Stand-in for ansible-test's pip bootstrap script (get-pip-<ver>.py).

ansible-test downloads its pip bootstrap from ci-files.testing.ansible.com, which this
workplace cannot reach. scripts/setup installs this file at the cache path ansible-test
looks at first (~/.ansible/test/cache/get_pip_<ver>.py). It does what get-pip does, from
PyPI: bootstrap pip with the interpreter's ensurepip, then install the pinned pip that
ansible-test asked for (its arguments, e.g. ``pip==24.2 --disable-pip-version-check``).
"""
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"],
                      stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--quiet"] + args))
