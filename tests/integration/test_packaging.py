"""The built collection tarball holds what users install, and installs offline.

Builds this checkout with ``ansible-galaxy collection build`` into a temporary directory, checks the
contents against galaxy.yml's ``build_ignore`` intent, then installs the tarball with
``ansible-galaxy collection install --offline --no-deps`` into a temporary path (never Galaxy) and
reads a module's documentation from the installed copy (doc fragments shipped and resolvable).
"""

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.testbed.common import private_stdin

REPO = Path(__file__).resolve().parents[2]

# what a user installs: every one of these must be in the tarball
REQUIRED = ["MANIFEST.json", "FILES.json", "README.md", "LICENSE", "meta/runtime.yml",
            "plugins/modules/canary_rollout.py", "plugins/module_utils/k8s_connection.py",
            "plugins/module_utils/k8s_errors.py", "plugins/module_utils/k8s_readiness.py",
            "plugins/module_utils/canary_spec.py", "plugins/doc_fragments/canary_checks.py",
            "plugins/filter", "roles", "playbooks", "docs/canary.md", "inventories/sample/hosts.yml",
            "changelogs/changelog.yaml"]
# never shipped: the test bed, developer tooling, the lab
FORBIDDEN_TOP = {"tests", "scripts", "molecule", "Makefile", "ansible.cfg", "pytest.ini", "requirements-dev.txt",
                 ".ci", ".config", ".ansible", ".ansible-lint", ".yamllint", ".gitignore", ".git", ".pytest_cache"}
FORBIDDEN_ANYWHERE = ("/molecule/", "__pycache__", ".pyc", "inventories/lab", "changelogs/fragments",
                      "docs/testing", "docs/measurements.md")


def run(argv, env=None, cwd=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    with private_stdin() as stdin:
        proc = subprocess.run(argv, stdin=stdin, capture_output=True, text=True, env=full_env, cwd=cwd,
                              check=False, timeout=300)
    assert proc.returncode == 0, "%s failed:\n%s\n%s" % (" ".join(argv), proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    run(["ansible-galaxy", "collection", "build", "--force", "--output-path", str(out), str(REPO)])
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    path = out / ("%s-%s-%s.tar.gz" % (galaxy["namespace"], galaxy["name"], galaxy["version"]))
    assert path.is_file(), list(out.iterdir())
    return path


@pytest.fixture(scope="module")
def members(tarball):
    with tarfile.open(tarball) as tar:
        return [m.name for m in tar.getmembers()]


def test_the_tarball_holds_what_users_install(members):
    names = set(members)
    missing = [r for r in REQUIRED if r not in names and not any(n.startswith(r + "/") for n in names)]
    assert not missing, missing
    # every role and every module of the checkout is shipped
    for role in (REPO / "roles").iterdir():
        if (role / "tasks").is_dir():
            assert "roles/%s/tasks/main.yml" % role.name in names, role.name
    for module in (REPO / "plugins" / "modules").glob("*.py"):
        assert "plugins/modules/" + module.name in names


def test_the_tarball_leaves_out_the_test_bed_and_tooling(members):
    top = {n.split("/", 1)[0] for n in members}
    assert not top & FORBIDDEN_TOP, sorted(top & FORBIDDEN_TOP)
    bad = [n for n in members if any(f in "/" + n + "/" for f in FORBIDDEN_ANYWHERE)]
    assert not bad, bad[:20]


def test_the_manifest_lists_the_same_files(tarball, members):
    with tarfile.open(tarball) as tar:
        files = json.load(tar.extractfile("FILES.json"))["files"]
    listed = {f["name"] for f in files if f["name"] != "."}
    assert listed == set(members) - {"MANIFEST.json", "FILES.json"}


def test_the_tarball_installs_offline_and_its_docs_resolve(tarball, tmp_path):
    dest = tmp_path / "collections"
    # only the installed copy (not the checkout pytest links in) is on the collections path
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[defaults]\n")  # not the checkout's ansible.cfg
    env = {"ANSIBLE_COLLECTIONS_PATH": str(dest), "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
           "ANSIBLE_CONFIG": str(cfg), "ANSIBLE_NOCOLOR": "1"}
    out = run(["ansible-galaxy", "collection", "install", "--offline", "--no-deps", "-p", str(dest), str(tarball)],
              env=env, cwd=str(tmp_path))
    assert "gpuops.cluster:" in out.stdout and "was installed successfully" in out.stdout, out.stdout
    installed = dest / "ansible_collections" / "gpuops" / "cluster"
    assert (installed / "MANIFEST.json").is_file() and (installed / "plugins/modules/canary_rollout.py").is_file()
    assert not (installed / "tests").exists()
    doc = json.loads(run(["ansible-doc", "-j", "-t", "module", "gpuops.cluster.canary_rollout"], env=env,
                         cwd=str(tmp_path)).stdout)
    opts = doc["gpuops.cluster.canary_rollout"]["doc"]["options"]
    assert opts["checks"]["suboptions"]["token"]["type"] == "str"        # gpuops.cluster.canary_checks
    assert "kubeconfig" in opts and "prometheus_url" in opts               # k8s_auth, prometheus fragments
    assert str(dest) in doc["gpuops.cluster.canary_rollout"]["doc"]["filename"]
