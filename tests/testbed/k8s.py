"""A real Kubernetes control plane with FAKE GPU nodes, for tests that talk to an API server.

What runs (all built from source by ``scripts/build/k8s.sh`` into ``$GPUOPS_CACHE/bin``, all bound
to 127.0.0.1 on free ports, each under ``timeout`` and stopped by PID):

- ``etcd`` (plain HTTP on loopback: the test bed needs no etcd TLS);
- ``kube-apiserver`` with TLS from a throw-away CA, ``--authorization-mode=Node,RBAC``, a service
  account issuer and signing key, so RBAC, TokenRequest and CRD schema validation are the real thing;
- ``kube-controller-manager`` (Deployments -> ReplicaSets -> Pods, service-account tokens,
  namespace lifecycle, garbage collection, CSR signing);
- ``kube-scheduler`` (binds Pods to nodes honouring nodeSelector, tolerations and
  ``nvidia.com/gpu`` requests);
- ``kwok``: simulates kubelets. The Nodes it manages are **fakes for GPU hardware we do not have**
  (``nvidia.com/gpu`` capacity, NVIDIA GPU product labels); nothing runs in the "Pods" that are
  scheduled there, kwok only moves them to Running/Ready with its upstream default stages.

The CRDs in ``../shared/crds`` (Istio, prometheus-operator) are installed and Established before
``start()`` returns, so custom resources are validated by the real upstream schemas.

``info`` (also in ``state.json`` for ``scripts/testbed``) holds cluster-wide facts only, nothing tied
to a namespace: ``kubeconfig`` (admin, O=system:masters), ``server``, ``ca_file``,
``restricted_kubeconfig`` (ServiceAccount ``gpuops-test/gpuops-readonly`` that may only
get/list/watch networking.istio.io virtualservices), ``gpu_nodes``, ports, versions, timings.
Tests that need a namespace make their own with :meth:`KubeCluster.fresh_namespace`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import yaml

from tests.testbed.common import (
    CACHE,
    DEFAULT_LIFETIME,
    SHARED,
    Component,
    TestbedError,
    free_port,
    require_binary,
    wait_for,
)

KWOK_VERSION = "v0.8.0"  # keep in step with scripts/build/k8s.sh
KWOK_STAGES = CACHE / "share" / "kwok" / KWOK_VERSION / "stages"
KWOK_STAGE_FILES = ("node-initialize.yaml", "node-heartbeat-with-lease.yaml",
                    "pod-ready.yaml", "pod-complete.yaml", "pod-delete.yaml")
SERVICE_CIDR = "10.96.0.0/16"
NODE_LEASE_SECONDS = 40  # a kubelet's default; kwok renews at a quarter of it
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Nodes kwok manages carry this label; real pods never run on them.
FAKE_NODE_LABEL = ("type", "kwok")
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
RESTRICTED_NAMESPACE = "gpuops-test"
RESTRICTED_SA = "gpuops-readonly"
RESTRICTED_RULES = [{"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"],
                     "verbs": ["get", "list", "watch"]}]
HINT = "run `bash scripts/build/k8s.sh` (or scripts/setup k8s)"


# ---------------------------------------------------------------------------------------------
# PKI: a throw-away CA and the certificates the control plane needs (cryptography package).
# ---------------------------------------------------------------------------------------------
def _pki(d: Path) -> Dict[str, Path]:
    """Write ca, apiserver serving, client certs and the service-account key pair into ``d``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=2)
    out: Dict[str, Path] = {}

    def write_key(name, key):
        p = d / f"{name}.key"
        p.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        p.chmod(0o600)
        out[f"{name}_key"] = p

    def write_cert(name, cert):
        p = d / f"{name}.crt"
        p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_cert"] = p

    def subject(cn, orgs=()):
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = subject("gpuops-testbed-ca")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    write_key("ca", ca_key)
    write_cert("ca", ca)

    def leaf(name, cn, orgs=(), server=False, sans=()):
        key = ec.generate_private_key(ec.SECP256R1())
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        b = (x509.CertificateBuilder().subject_name(subject(cn, orgs)).issuer_name(ca_name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(until)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                          content_commitment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False,
                                          decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        write_key(name, key)
        write_cert(name, b.sign(ca_key, hashes.SHA256()))

    svc_ip = next(ipaddress.ip_network(SERVICE_CIDR).hosts())
    leaf("apiserver", "kube-apiserver", server=True, sans=[
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(svc_ip),
        x509.DNSName("localhost"), x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"), x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local")])
    leaf("admin", "gpuops-testbed-admin", orgs=("system:masters",))
    leaf("controller-manager", "system:kube-controller-manager")
    leaf("scheduler", "system:kube-scheduler")
    # kwok plays every kubelet and updates Pod status on many nodes: it gets admin rights, like
    # kwokctl gives it.
    leaf("kwok", "kwok-controller", orgs=("system:masters",))
    # aggregation layer (front proxy), as kubeadm sets it up; the same CA signs it here
    leaf("front-proxy-client", "front-proxy-client")

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key("sa", sa_key)
    pub = d / "sa.pub"
    pub.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    out["sa_pub"] = pub
    return out


def _write_kubeconfig(path: Path, server: str, ca_file: Path, user: str,
                      cert: Optional[Path] = None, key: Optional[Path] = None,
                      token: Optional[str] = None) -> Path:
    creds: Dict[str, str] = {}
    if token is not None:
        creds["token"] = token
    else:
        creds["client-certificate"] = str(cert)
        creds["client-key"] = str(key)
    doc = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "gpuops-testbed",
                      "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": f"{user}@gpuops-testbed",
                      "context": {"cluster": "gpuops-testbed", "user": user}}],
        "current-context": f"{user}@gpuops-testbed",
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


def _http_ok(url: str, ctx: Optional[ssl.SSLContext] = None, expect: Optional[bytes] = None) -> bool:
    with urllib.request.urlopen(url, timeout=3, context=ctx) as r:  # noqa: S310 - loopback only
        body = r.read()
        return r.status == 200 and (expect is None or expect in body)


def _insecure_ctx() -> ssl.SSLContext:
    """For kcm/scheduler health only: they serve a self-signed cert generated at start-up."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _binary_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


class KubeCluster(Component):
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok with FAKE GPU nodes.

    ``gpu_nodes``: how many fake GPU nodes to create at start (split over ``zones``);
    ``gpus_per_node``: their ``nvidia.com/gpu`` capacity; ``install_crds``: install
    ``../shared/crds`` (Istio + prometheus-operator) and wait until Established.
    """

    kind = "k8s"

    def __init__(self, name: Optional[str] = None, workdir: Optional[Path] = None,
                 lifetime: int = DEFAULT_LIFETIME, gpu_nodes: int = 3, gpus_per_node: int = 8,
                 zones: Iterable[str] = ("zone-a", "zone-b"), install_crds: bool = True):
        super().__init__(name=name, workdir=workdir, lifetime=lifetime)
        self.gpu_nodes = gpu_nodes
        self.gpus_per_node = gpus_per_node
        self.zones = list(zones)
        self.install_crds = install_crds
        self._api = None
        self._node_count = 0

    # -- public helpers --------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> str:
        """Admin kubeconfig path (client certificate in group system:masters)."""
        return str(self.info["kubeconfig"])

    def api_client(self, kubeconfig: Optional[str] = None):
        """A new ``kubernetes.client.ApiClient`` for the admin (or the given) kubeconfig.

        The caller owns it (``with k8s.api_client() as api: ...`` closes its connection pool).
        """
        from kubernetes import config as kconfig
        return kconfig.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def fresh_namespace(self, prefix: str = "t") -> str:
        """Create a uniquely named namespace, wait for its ``default`` ServiceAccount, return it."""
        ns = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self._ensure_namespace(ns)
        return ns

    def make_sa_kubeconfig(self, namespace: str, name: str, rules: List[dict],
                           cluster_rules: Optional[List[dict]] = None,
                           expiration_seconds: Optional[int] = None) -> str:
        """Kubeconfig for ServiceAccount ``namespace/name`` holding exactly ``rules``.

        ``rules`` (RBAC PolicyRule dicts: apiGroups/resources/verbs/resourceNames) go into a Role
        and RoleBinding named ``name`` in ``namespace``; ``cluster_rules`` (optional) into a
        ClusterRole/ClusterRoleBinding ``gpuops-testbed:<namespace>:<name>``. Both are replaced if
        they exist, so the account never keeps rights from an earlier call. The token comes from
        the TokenRequest API and expires (default: the test bed's lifetime, at least 10 minutes).
        """
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        self._ensure_namespace(namespace)
        api = self._admin()
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        meta = {"name": name, "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "gpuops-testbed"}}
        try:
            core.create_namespaced_service_account(namespace, {"metadata": meta})
        except ApiException as exc:
            if exc.status != 409:
                raise
        subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
        self._put(rbac.create_namespaced_role, rbac.replace_namespaced_role, name, namespace,
                  {"metadata": meta, "rules": list(rules)})
        self._put(rbac.create_namespaced_role_binding, rbac.replace_namespaced_role_binding,
                  name, namespace, {"metadata": meta, "subjects": subject,
                                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                                "kind": "Role", "name": name}})
        cname = f"gpuops-testbed:{namespace}:{name}"
        if cluster_rules:
            cmeta = {"name": cname, "labels": meta["labels"]}
            self._put(rbac.create_cluster_role, rbac.replace_cluster_role, cname, None,
                      {"metadata": cmeta, "rules": list(cluster_rules)})
            self._put(rbac.create_cluster_role_binding, rbac.replace_cluster_role_binding, cname,
                      None, {"metadata": cmeta, "subjects": subject,
                             "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                         "kind": "ClusterRole", "name": cname}})
        else:
            for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
                try:
                    delete(cname)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        expiry = max(600, int(expiration_seconds or self.lifetime))
        tr = core.create_namespaced_service_account_token(
            name, namespace, {"spec": {"audiences": [SA_ISSUER], "expirationSeconds": expiry}})
        path = Path(self.workdir) / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(_write_kubeconfig(path, str(self.info["server"]), Path(str(self.info["ca_file"])),
                                     f"system:serviceaccount:{namespace}:{name}",
                                     token=tr.status.token))

    def add_gpu_nodes(self, count: int, zone: Optional[str] = None, gpus: Optional[int] = None,
                      prefix: str = "gpu-node", product: str = GPU_PRODUCT,
                      labels: Optional[Dict[str, str]] = None,
                      taints: Optional[List[dict]] = None, wait: bool = True) -> List[str]:
        """Create ``count`` FAKE GPU Nodes (kwok plays their kubelet) and return their names.

        Names continue ``<prefix>-<n>`` across calls. Without ``zone`` nodes alternate over
        ``self.zones``. Each node advertises ``nvidia.com/gpu`` = ``gpus`` (default 8) in capacity
        and allocatable, 224 CPUs, 2 TiB memory, 110 pods, and the labels GPU feature discovery
        would set on an H100 node. These are fakes: no GPU, no container runtime behind them.
        With ``wait`` the call returns once every new node is Ready.
        """
        from kubernetes import client
        gpus = self.gpus_per_node if gpus is None else gpus
        core = client.CoreV1Api(self._admin())
        names = []
        for _ in range(count):
            idx = self._node_count
            self._node_count += 1
            name = f"{prefix}-{idx}"
            z = zone or self.zones[idx % len(self.zones)]
            node_labels = {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "fake-h100x8",
                "topology.kubernetes.io/region": "lab", "topology.kubernetes.io/zone": z,
                "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": str(gpus), "nvidia.com/gpu.memory": "81559",
                FAKE_NODE_LABEL[0]: FAKE_NODE_LABEL[1], "gpuops.io/fake-gpu-node": "true",
            }
            node_labels.update(labels or {})
            resources = {"cpu": "224", "memory": "2Ti", "pods": "110",
                         "ephemeral-storage": "7Ti", "nvidia.com/gpu": str(gpus)}
            body = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": node_labels,
                             "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1],
                                             "node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {"taints": list(taints or [])},
                "status": {"capacity": resources, "allocatable": dict(resources),
                           "addresses": [{"type": "InternalIP", "address": f"10.10.0.{idx + 10}"},
                                         {"type": "Hostname", "address": name}]},
            }
            core.create_node(body)
            names.append(name)
        if wait:
            def ready():
                for n in names:
                    conds = core.read_node_status(n).status.conditions or []
                    if not any(c.type == "Ready" and c.status == "True" for c in conds):
                        return False
                return True
            wait_for(ready, 120, f"fake GPU nodes {names} Ready (kwok)", procs=self.procs)
        self.info.setdefault("gpu_nodes", [])
        self.info["gpu_nodes"] = list(self.info["gpu_nodes"]) + names  # type: ignore[arg-type]
        return names

    # -- lifecycle -------------------------------------------------------------------------------
    def stop(self) -> None:
        if self._api is not None:
            try:
                self._api.close()
            except Exception:  # noqa: BLE001 - closing a pool must never mask the stop
                pass
            self._api = None
        super().stop()

    def _start(self) -> None:
        bins = {b: require_binary(b, HINT) for b in (
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")}
        missing = [f for f in KWOK_STAGE_FILES if not (KWOK_STAGES / f).is_file()]
        if missing:
            raise TestbedError(f"kwok default stages {missing} not in {KWOK_STAGES}: {HINT}")
        wd = Path(self.workdir)
        phases: Dict[str, float] = {}
        t = time.monotonic()

        def mark(phase):
            nonlocal t
            now = time.monotonic()
            phases[phase] = round(now - t, 2)
            t = now

        pki = _pki(wd / "pki")
        mark("pki")

        # etcd ---------------------------------------------------------------------------------
        etcd_client, etcd_peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        etcd = self.spawn("etcd", [
            bins["etcd"], "--name", "testbed", "--data-dir", str(wd / "etcd-data"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"testbed=http://127.0.0.1:{etcd_peer}",
            "--initial-cluster-state", "new", "--log-level", "warn",
            # throw-away test data: skip fsync so the shared disk is not hammered
            "--unsafe-no-fsync", "--quota-backend-bytes", str(2 * 1024 ** 3),
        ])
        self.info.update(etcd_url=etcd_url)
        wait_for(lambda: _http_ok(f"{etcd_url}/health", expect=b'"health":"true"'), 60,
                 "etcd /health", procs=[etcd])
        mark("etcd")

        # kube-apiserver ----------------------------------------------------------------------
        port = free_port()
        server = f"https://127.0.0.1:{port}"
        apiserver = self.spawn("kube-apiserver", [
            bins["kube-apiserver"], "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(port),
            "--tls-cert-file", pki["apiserver_cert"], "--tls-private-key-file", pki["apiserver_key"],
            "--client-ca-file", pki["ca_cert"],
            "--authorization-mode", "Node,RBAC",
            "--enable-admission-plugins", "NodeRestriction",
            "--service-account-issuer", SA_ISSUER,
            "--service-account-key-file", pki["sa_pub"],
            "--service-account-signing-key-file", pki["sa_key"],
            "--service-account-max-token-expiration", "48h",
            "--service-cluster-ip-range", SERVICE_CIDR,
            # the loopback advertise address may not be an Endpoints IP: no kubernetes endpoints
            "--endpoint-reconciler-type", "none",
            "--requestheader-client-ca-file", pki["ca_cert"],
            "--requestheader-allowed-names", "front-proxy-client",
            "--requestheader-username-headers", "X-Remote-User",
            "--requestheader-group-headers", "X-Remote-Group",
            "--requestheader-extra-headers-prefix", "X-Remote-Extra-",
            "--proxy-client-cert-file", pki["front-proxy-client_cert"],
            "--proxy-client-key-file", pki["front-proxy-client_key"],
            "--allow-privileged=true", "--profiling=false",
            "--cert-dir", str(wd / "apiserver-certs"),
        ])
        self.info.update(server=server, port=port, ca_file=str(pki["ca_cert"]))
        ca_ctx = ssl.create_default_context(cafile=str(pki["ca_cert"]))
        wait_for(lambda: _http_ok(f"{server}/readyz", ca_ctx, b"ok"), 180,
                 "kube-apiserver /readyz", procs=[etcd, apiserver])
        mark("kube-apiserver")

        kc = wd / "kubeconfigs"
        kc.mkdir(exist_ok=True)
        admin = _write_kubeconfig(kc / "admin.kubeconfig", server, pki["ca_cert"], "admin",
                                  pki["admin_cert"], pki["admin_key"])
        kcm_kc = _write_kubeconfig(kc / "controller-manager.kubeconfig", server, pki["ca_cert"],
                                   "system:kube-controller-manager",
                                   pki["controller-manager_cert"], pki["controller-manager_key"])
        sched_kc = _write_kubeconfig(kc / "scheduler.kubeconfig", server, pki["ca_cert"],
                                     "system:kube-scheduler", pki["scheduler_cert"],
                                     pki["scheduler_key"])
        kwok_kc = _write_kubeconfig(kc / "kwok.kubeconfig", server, pki["ca_cert"], "kwok",
                                    pki["kwok_cert"], pki["kwok_key"])
        self.info["kubeconfig"] = str(admin)
        self.save_state()  # scripts/testbed can stop what already runs if the rest fails

        # kube-controller-manager + kube-scheduler ---------------------------------------------
        kcm_port, sched_port = free_port(), free_port()
        kcm = self.spawn("kube-controller-manager", [
            bins["kube-controller-manager"], "--kubeconfig", kcm_kc,
            "--authentication-kubeconfig", kcm_kc, "--authorization-kubeconfig", kcm_kc,
            "--bind-address", "127.0.0.1", "--secure-port", str(kcm_port),
            "--cert-dir", str(wd / "kcm-certs"), "--leader-elect=false",
            "--use-service-account-credentials=true",
            "--service-account-private-key-file", pki["sa_key"], "--root-ca-file", pki["ca_cert"],
            "--cluster-signing-cert-file", pki["ca_cert"],
            "--cluster-signing-key-file", pki["ca_key"],
            "--service-cluster-ip-range", SERVICE_CIDR,
            # kwok renews the fake nodes' leases; on a loaded 2-core CI box a renewal can lag, so
            # give nodes 2 min (default 50 s) before the node lifecycle controller taints them.
            "--node-monitor-grace-period=2m",
            "--profiling=false",
        ])
        sched = self.spawn("kube-scheduler", [
            bins["kube-scheduler"], "--kubeconfig", sched_kc,
            "--authentication-kubeconfig", sched_kc, "--authorization-kubeconfig", sched_kc,
            "--bind-address", "127.0.0.1", "--secure-port", str(sched_port),
            "--cert-dir", str(wd / "scheduler-certs"), "--leader-elect=false",
            "--profiling=false",
        ])
        self.info.update(controller_manager_port=kcm_port, scheduler_port=sched_port)
        insecure = _insecure_ctx()
        wait_for(lambda: _http_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure, b"ok"), 120,
                 "kube-controller-manager /healthz", procs=[etcd, apiserver, kcm])
        wait_for(lambda: _http_ok(f"https://127.0.0.1:{sched_port}/healthz", insecure, b"ok"),
                 120, "kube-scheduler /healthz", procs=[etcd, apiserver, sched])
        mark("controller-manager+scheduler")

        # kwok: fake kubelets for the nodes labelled type=kwok ---------------------------------
        kwok_cfg = wd / "kwok.yaml"
        kwok_cfg.write_text("\n---\n".join((KWOK_STAGES / f).read_text().strip()
                                          for f in KWOK_STAGE_FILES) + "\n")
        kwok_port = free_port()
        kwok = self.spawn("kwok", [
            bins["kwok"], "--kubeconfig", kwok_kc, "--config", kwok_cfg,
            "--manage-nodes-with-label-selector", "=".join(FAKE_NODE_LABEL),
            "--server-address", f"127.0.0.1:{kwok_port}",
            "--cidr", "10.244.0.0/16", "--node-ip", "10.10.0.1",
            # a kubelet's heartbeat: kwok creates and renews a Lease per node in kube-node-lease.
            # Without it (kwok's flag default is 0 when no KwokConfiguration is given) the node
            # lifecycle controller saw every node NotReady once per grace period and marked their
            # pods NotReady; kwok never made them Ready again (a Deployment stuck at 0 available).
            "--node-lease-duration-seconds", str(NODE_LEASE_SECONDS),
        ])
        self.info.update(kwok_port=kwok_port)
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{kwok_port}/healthz"), 60, "kwok /healthz",
                 procs=[apiserver, kwok])
        mark("kwok")

        # the controllers really work: default ServiceAccount + root CA config map exist -------
        self._ensure_namespace("default")
        mark("serviceaccounts")

        if self.install_crds:
            self.info["crds"] = self._install_crds(SHARED / "crds")
            mark("crds")

        if self.gpu_nodes:
            self.add_gpu_nodes(self.gpu_nodes)
            mark("gpu-nodes")

        self.info["restricted_kubeconfig"] = self.make_sa_kubeconfig(
            RESTRICTED_NAMESPACE, RESTRICTED_SA, RESTRICTED_RULES)
        mark("restricted-sa")

        self.info["versions"] = {b: _binary_version(p) for b, p in bins.items()}
        self.info["startup_phases"] = phases
        self.info["rss_kib"] = self.rss_kib()
        self.info["rss_kib_per_process"] = {p.name: _proc_rss(p) for p in self.procs}

    # -- internals -------------------------------------------------------------------------------
    def _admin(self):
        if self._api is None:
            self._api = self.api_client()
        return self._api

    @staticmethod
    def _put(create, replace, name, namespace, body):
        from kubernetes.client.rest import ApiException
        args = (namespace,) if namespace else ()
        try:
            create(*args, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            replace(name, *args, body)

    def _ensure_namespace(self, ns: str) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        core = client.CoreV1Api(self._admin())
        try:
            core.create_namespace({"metadata": {"name": ns}})
        except ApiException as exc:
            if exc.status != 409:
                raise

        def sa_ready():
            core.read_namespaced_service_account("default", ns)
            core.read_namespaced_config_map("kube-root-ca.crt", ns)
            return True
        wait_for(sa_ready, 60, f"kube-controller-manager to create the default ServiceAccount "
                 f"and kube-root-ca.crt in namespace {ns}", procs=self.procs)

    def _install_crds(self, root: Path) -> List[str]:
        """Create every CRD under ``root`` (unchanged upstream files) and wait for Established."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        files = sorted(root.glob("*/*.yaml")) + sorted(root.glob("*/*.yml"))
        if not files:
            raise TestbedError(f"no CRD manifests under {root} (GPUOPS_SHARED points elsewhere?)")
        ext = client.ApiextensionsV1Api(self._admin())
        names = []
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                try:
                    ext.create_custom_resource_definition(doc)
                except ApiException as exc:
                    if exc.status != 409:
                        raise TestbedError(f"CRD {doc['metadata']['name']} from {f} rejected: "
                                           f"{exc.status} {exc.body}") from exc
                names.append(doc["metadata"]["name"])

        def established():
            for n in names:
                conds = ext.read_custom_resource_definition(n).status.conditions or []
                if not any(c.type == "Established" and c.status == "True" for c in conds):
                    return False
            return True
        wait_for(established, 120, f"{len(names)} CRDs Established", procs=self.procs)
        return names


def _proc_rss(p) -> int:
    from tests.testbed.common import _tree_rss
    return _tree_rss(p.pid)


if __name__ == "__main__":  # manual smoke: python -m tests.testbed.k8s
    c = KubeCluster(lifetime=600)
    try:
        c.start()
        print(json.dumps(c.info, indent=2, default=str))
    finally:
        c.stop()
