"""Root pytest configuration: makes the collection importable and loads test-bed fixtures."""

import hashlib
import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_CACHE = Path(os.environ.get("GPUOPS_CACHE", str(Path.home() / ".cache" / "gpuops")))
# ansible_collections.gpuops.cluster -> this checkout (scripts/env.sh makes the same link)
# one link per checkout, so two trees (a clone, a copy) never import each other's code
_COLL = _CACHE / "collections" / ("pytest-" + hashlib.md5(str(REPO).encode()).hexdigest()[:8])
_link = _COLL / "ansible_collections" / "gpuops" / "cluster"
_link.parent.mkdir(parents=True, exist_ok=True)
if not _link.is_symlink() or _link.resolve() != REPO:
    if _link.is_symlink():
        _link.unlink()
    _link.symlink_to(REPO)
if str(_COLL) not in sys.path:
    sys.path.insert(0, str(_COLL))
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(_COLL))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Session-scoped fixtures of the test bed; each module owns its component.
pytest_plugins = [
    "tests.testbed.fixtures",
    "tests.testbed.cpu_report",
]


def _terminated(signum, _frame):
    raise KeyboardInterrupt("signal %d" % signum)


def pytest_configure(config):
    """SIGTERM (CI's time limit, ``kill PID``) ends pytest like Ctrl-C: fixture finalizers still
    stop every test-bed server, guest and node this run started, instead of leaving them to
    their own lifetime bound."""
    signal.signal(signal.SIGTERM, _terminated)


def pytest_addoption(parser):
    parser.addoption("--keep-testbed-logs", action="store_true",
                     help="keep test-bed work dirs (logs) even when all tests pass")


@pytest.fixture(scope="session")
def keep_logs(request):
    """True when the test-bed logs must be kept (a test failed or asked for)."""
    def _keep():
        return request.session.testsfailed > 0 or request.config.getoption("--keep-testbed-logs")
    return _keep
