"""The vault role on the lab's control planes (issue 10): a real OpenBao Raft cluster installed from the
artifact mirror by site.yml's vault layer (playbooks/platform.yml), bound to the lab's Kubernetes API.

Proves on the lab what molecule (roles/vault/molecule/default, no Kubernetes there) cannot: a real
ServiceAccount token (TokenRequest, ``kubectl create token``: no pod, no Secret) logs in through the
Kubernetes auth method and gets exactly the torchserve policy; a ServiceAccount the role does not bind
is refused; after rotate_vault_secrets.yml that login reads the rotated value, and a running pod of that
ServiceAccount (the serving image, python3) reading the secret every second through the rotation
never fails a read and moves to the new value without a restart. Also: three unsealed
Raft voters, the binary is the mirror's, a restarted node comes back
sealed and the next vault.yml run unseals it, and no output (every lab log of the session) holds a key
or token. A second run changing nothing is test_cluster.py's second site run (vault layer included).

Run: ``GPUOPS_LAB_REUSE=1 python -m pytest tests/cluster/test_vault.py -m cluster``. Logs of each
playbook run go to $GPUOPS_CACHE/lab/logs/vault-*.log."""

import hashlib
import json
import time
import uuid

import hvac
import pytest
import requests

from tests.cluster.lab import (CACHE, CONTROL, GPU, LOGS, RECAP, SERVING_IMAGE, VAULT_API, VAULT_CA, VAULT_SECRETS,
                               ansible_env, kubectl, node_exec, record, run)
from tests.testbed.common import wait_for, write_private

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

MIRROR_SHA = CACHE / "mirror" / "openbao" / "2.4.0" / "linux" / "amd64" / "bao.sha256"
# the role's defaults for the lab (roles/vault/defaults/main.yml vault_kubernetes_roles)
NAMESPACE, SA = "serving", "torchserve"


def vault_play(name):
    """playbooks/vault.yml on the lab; returns (wall seconds, {host: changed}, stdout)."""
    env = ansible_env()
    t0 = time.monotonic()
    proc = run(["ansible-playbook", "-i", "inventories/lab/hosts.yml", "playbooks/vault.yml"],
               timeout=1200, check=False, env=env)
    wall = time.monotonic() - t0
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / ("vault-%s.log" % name)).write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, "vault.yml (%s) failed, log %s:\n%s" % (name, LOGS / ("vault-%s.log" % name),
                                                                        proc.stdout[-6000:])
    recap = {m[0]: int(m[2]) for m in RECAP.findall(proc.stdout)}
    assert set(recap) == set(CONTROL), recap
    record("vault.yml %s run %.0f s, changed %s" % (name, wall, recap))
    return wall, recap, proc.stdout + proc.stderr


def seal_status(node):
    return requests.get(VAULT_API[node] + "/v1/sys/seal-status", verify=str(VAULT_CA), timeout=10).json()


@pytest.fixture(scope="module")
def bao(lab):
    """The OpenBao cluster site.yml's vault layer (platform.yml's first play) built in the lab fixture's
    first run; its idempotence is the second site run's changed=0 (test_cluster.py)."""
    assert (VAULT_SECRETS / "init.json").exists(), "site.yml's vault layer left no init.json in %s" % VAULT_SECRETS
    init = json.loads((VAULT_SECRETS / "init.json").read_text())
    root = hvac.Client(url=VAULT_API[CONTROL[0]], token=init["root_token"], verify=str(VAULT_CA))
    yield {"init": init, "root": root, "outputs": [lab["first"][2]], "since": lab["t0"]}


def test_three_unsealed_raft_voters_with_the_mirror_binary(bao):
    for node in CONTROL:
        s = seal_status(node)
        assert s["initialized"] and not s["sealed"] and s["type"] == "shamir", (node, s)
    servers = bao["root"].sys.read_raft_config()["data"]["config"]["servers"]
    assert sorted(s["node_id"] for s in servers) == sorted(CONTROL), servers
    assert all(s["voter"] for s in servers), servers
    want = MIRROR_SHA.read_text().split()[0]
    for node in CONTROL:
        have = node_exec(node, "sha256sum", "/usr/local/bin/bao").stdout.split()[0]
        assert have == want, (node, have, want)
    audit = bao["root"].sys.list_enabled_audit_devices()["data"]
    assert audit["file/"]["type"] == "file", audit


@pytest.fixture(scope="module")
def workload_sa(bao):
    """The namespace and ServiceAccount the role binds, for the module's tests (created when missing, removed
    at the end: a namespace deleted between two tests is still terminating when the next one creates it)."""
    created_ns = kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0
    if created_ns:
        kubectl("create", "namespace", NAMESPACE)
    created_sa = kubectl("-n", NAMESPACE, "get", "serviceaccount", SA, check=False).returncode != 0
    try:
        if created_sa:
            kubectl("-n", NAMESPACE, "create", "serviceaccount", SA)
        yield
    finally:
        if created_sa:
            kubectl("-n", NAMESPACE, "delete", "serviceaccount", SA, "--wait=false", check=False)
        if created_ns:
            kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def workload_login():
    """A TokenRequest token of the bound ServiceAccount, logged in through the Kubernetes auth method."""
    jwt = kubectl("-n", NAMESPACE, "create", "token", SA, "--duration=10m").stdout.strip()
    client = hvac.Client(url=VAULT_API[CONTROL[1]], verify=str(VAULT_CA))
    return client, client.auth.kubernetes.login(role="torchserve", jwt=jwt)


def test_serviceaccount_token_logs_in_with_least_privilege(bao, workload_sa):
    """A TokenRequest token of the bound ServiceAccount logs in (no pod, no Secret); it reads its own KV
    subtree and nothing else; an unbound ServiceAccount in the same namespace is refused."""
    intruder = "intruder-" + uuid.uuid4().hex[:6]
    kubectl("-n", NAMESPACE, "create", "serviceaccount", intruder)
    try:
        value = uuid.uuid4().hex
        root = bao["root"]
        root.secrets.kv.v2.create_or_update_secret(path="torchserve/model-store", secret={"key": value},
                                                   mount_point="secret")
        client, login = workload_login()
        assert login["auth"]["policies"] == ["default", "torchserve"] or \
            sorted(login["auth"]["token_policies"]) == ["default", "torchserve"], login["auth"]
        assert login["auth"]["metadata"]["service_account_name"] == SA
        got = client.secrets.kv.v2.read_secret_version(path="torchserve/model-store", mount_point="secret",
                                                       raise_on_deleted_version=True)
        assert got["data"]["data"] == {"key": value}
        with pytest.raises(hvac.exceptions.Forbidden):
            client.secrets.kv.v2.read_secret_version(path="platform/istio/cacerts", mount_point="secret",
                                                     raise_on_deleted_version=True)
        with pytest.raises(hvac.exceptions.Forbidden):
            client.secrets.kv.v2.create_or_update_secret(path="torchserve/model-store", secret={"key": "x"},
                                                         mount_point="secret")
        other = kubectl("-n", NAMESPACE, "create", "token", intruder, "--duration=10m").stdout.strip()
        with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)):
            hvac.Client(url=VAULT_API[CONTROL[2]], verify=str(VAULT_CA)).auth.kubernetes.login(role="torchserve",
                                                                                  jwt=other)
        # nothing but the ServiceAccount and its TokenRequest: no token Secret, no pod of ours
        secrets = json.loads(kubectl("-n", NAMESPACE, "get", "secrets", "-o", "json").stdout)["items"]
        assert not [s for s in secrets if s["type"] == "kubernetes.io/service-account-token"], secrets
        sa = json.loads(kubectl("-n", NAMESPACE, "get", "serviceaccount", SA, "-o", "json").stdout)
        assert not sa.get("secrets"), sa
    finally:
        kubectl("-n", NAMESPACE, "delete", "serviceaccount", intruder, "--wait=false", check=False)


# A running pod of the workload's ServiceAccount, in the serving image (the bundle's TorchServe image:
# python3; no Vault agent image is built here): it logs in once through the Kubernetes auth method with
# its projected ServiceAccount token, then reads the secret every second with that token, verifying
# OpenBao's certificate against the lab's CA, and prints a digest of the value (never the value), or
# FAILED-<error> when a read fails (then it logs in again).
READER = r"""
import hashlib, json, ssl, sys, time, urllib.request
api, path = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile="/vault-ca/ca.pem")
def call(url, body=None, token=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                 headers={"X-Vault-Token": token} if token else {})
    with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
        return json.load(resp)
token = None
while True:
    try:
        if token is None:
            jwt = open("/var/run/secrets/kubernetes.io/serviceaccount/token").read()
            token = call(api + "/v1/auth/kubernetes/login", {"role": "torchserve", "jwt": jwt})["auth"]["client_token"]
        value = call(api + "/v1/secret/data/" + path, token=token)["data"]["data"]["password"]
        print(int(time.time()), hashlib.sha256(value.encode()).hexdigest()[:16], flush=True)
    except Exception as exc:
        print(int(time.time()), "FAILED-" + type(exc).__name__, flush=True)
        token = None
    time.sleep(1)
"""


def _digest(value):
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def _reader_lines(pod):
    out = kubectl("-n", NAMESPACE, "logs", pod, check=False).stdout
    return [ln.split()[1] for ln in out.splitlines() if len(ln.split()) == 2]


def test_kv_rotation_the_workloads_login_reads_the_new_version(bao, workload_sa, tmp_path):
    """rotate_vault_secrets.yml on the lab's OpenBao with a rotator token limited to one path: one new
    version, the other key kept; the workload's Kubernetes login (ServiceAccount token, role torchserve)
    reads the new value, and the previous version is still there for a consumer that has not re-read.
    A running pod of that ServiceAccount reading the secret every second through the rotation never
    fails a read, and goes from the old value to the new one without a restart or a new login."""
    root, tag = bao["root"], uuid.uuid4().hex[:6]
    path, old = "torchserve/rotation-%s" % tag, "old-%s" % uuid.uuid4().hex
    root.secrets.kv.v2.create_or_update_secret(path=path, secret={"password": old, "user": "serving"},
                                               mount_point="secret")
    reader = "kv-reader-" + tag
    objs = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": reader, "namespace": NAMESPACE},
             "data": {"ca.pem": VAULT_CA.read_text()}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": reader, "namespace": NAMESPACE},
             "spec": {"serviceAccountName": SA, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                      # a GPU node: test_serving.py pulled the serving image there
                      "nodeSelector": {"kubernetes.io/hostname": GPU[0]},
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                      "containers": [{"name": "read", "image": SERVING_IMAGE,
                                      "command": ["python3", "-c", READER, VAULT_API[CONTROL[1]], path],
                                      "volumeMounts": [{"name": "ca", "mountPath": "/vault-ca"}]}],
                      "volumes": [{"name": "ca", "configMap": {"name": reader}}]}}]
    kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    try:
        wait_for(lambda: _digest(old) in _reader_lines(reader), 300,
                 "pod %s/%s to read the secret through its Kubernetes login" % (NAMESPACE, reader), interval=2)
    except Exception:
        print(kubectl("-n", NAMESPACE, "describe", "pod", reader, check=False).stdout[-3000:])
        print(kubectl("-n", NAMESPACE, "logs", reader, check=False).stdout[-2000:])
        kubectl("-n", NAMESPACE, "delete", "pod,configmap", reader, "--wait=false", check=False)
        raise
    policy = "rotator-" + tag
    root.sys.create_or_update_policy(name=policy, policy='path "secret/data/%s" { capabilities = ["read", "update"] }'
                                     % path)
    token = root.auth.token.create(policies=[policy], no_default_policy=True, ttl="15m")["auth"]["client_token"]
    token_file = write_private(tmp_path / "rotator.token", token)
    try:
        proc = run(["ansible-playbook", "-i", "inventories/lab/hosts.yml", "playbooks/rotate_vault_secrets.yml",
                    "-e", "vault_secret_rotation_token_file=%s" % token_file,
                    "-e", json.dumps({"vault_secret_rotation_secrets": [{"path": path, "keys": ["password"]}]})],
                   timeout=600, check=False, env=ansible_env())
        out = proc.stdout + proc.stderr
        (LOGS / "vault-kv-rotation.log").write_text(out)
        bao["outputs"].append(out)
        assert proc.returncode == 0, out[-4000:]
        assert "secret/%s (version 1 -> 2, new password)" % path in " ".join(out.split())
        client, _ = workload_login()
        now = client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret",
                                                       raise_on_deleted_version=True)["data"]
        assert now["metadata"]["version"] == 2 and now["data"]["user"] == "serving"
        new = now["data"]["password"]
        assert new != old and len(new) == 32
        before = client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", version=1,
                                                          raise_on_deleted_version=True)["data"]["data"]
        assert before["password"] == old
        assert new not in out and token not in out
        # the running pod: the old value, then the new one with the token of its one login, no failed read
        wait_for(lambda: _digest(new) in _reader_lines(reader), 60,
                 "pod %s to read the new version without a restart" % reader, interval=1)
        lines = _reader_lines(reader)
        first_new = lines.index(_digest(new))
        assert set(lines[:first_new]) == {_digest(old)} and set(lines[first_new:]) == {_digest(new)}, lines
        status = json.loads(kubectl("-n", NAMESPACE, "get", "pod", reader, "-o", "json").stdout)["status"]
        assert status["containerStatuses"][0]["restartCount"] == 0 and "running" in status["containerStatuses"][0]["state"]
        record("vault KV rotation: the reader pod read %d times, the old value %d times then the new one, "
               "none failed" % (len(lines), first_new))
    finally:
        kubectl("-n", NAMESPACE, "delete", "pod,configmap", reader, "--wait=false", check=False)
        root.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")
        root.sys.delete_policy(name=policy)
        root.auth.token.revoke(token)


def test_restarted_node_is_unsealed_by_the_next_run(bao):
    node = CONTROL[2]
    node_exec(node, "systemctl", "restart", "openbao")
    deadline = time.monotonic() + 60
    while True:
        try:
            s = seal_status(node)
            if s["sealed"]:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "openbao on %s did not come back sealed" % node
        time.sleep(1)
    _, changed, out = vault_play("unseal")
    bao["outputs"].append(out)
    assert changed[node] > 0 and all(changed[n] == 0 for n in CONTROL if n != node), changed
    assert not seal_status(node)["sealed"]


def test_no_key_or_token_in_any_output(bao):
    init = bao["init"]
    secrets = [init["root_token"]] + init["keys"] + init["keys_base64"]
    # the first site run and the unseal run above, and every other lab log this session wrote
    # (site second and check runs, day-2 playbooks, platform checks)
    logs = [p.read_text(errors="replace") for p in sorted(LOGS.glob("*.log")) if p.stat().st_mtime >= bao["since"]]
    text = "\n".join(bao["outputs"] + logs)
    assert len(bao["outputs"]) >= 2 and logs, (len(bao["outputs"]), len(logs))
    assert not [i for i, s in enumerate(secrets) if s in text], "a key or the root token is in the output"
