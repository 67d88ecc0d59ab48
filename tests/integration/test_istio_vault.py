"""istio reads its plug-in CA and ingress certificate from Vault KV v2 (istio_pki_source: vault).

Real components: the OpenBao test bed's TLS Raft node (its PKI engines issue the mesh CA and the
ingress certificate exactly the way roles/vault does: an intermediate under an intermediate, its key
exported once into KV; a certificate from ``pki_int/issue/<role>``), the vault role's own
``platform-deployer`` policy text (rendered from roles/vault/vars/main.yml) with an orphan periodic
token in a 0600 file like the role writes, and the kube-apiserver test bed the Secrets land in.
The playbook runs the role's ``certificates.yml`` entry point (options, Vault read, Secrets: no
charts, the charts are test_platform_helm's) through test_platform_helm's runner.
"""

from __future__ import annotations

import base64
import concurrent.futures
import uuid
from pathlib import Path

import jinja2
import pytest
import yaml

from tests.integration.test_platform_helm import brief, inventory, run
from tests.testbed.common import write_private

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
MESH_KEYS = ["ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"]
MESH_PATH, INGRESS_PATH = "platform/istio/cacerts", "platform/istio/ingress"
# every ansible-playbook output of this module, for the no_log search
OUTPUTS: list = []


def _vault_role_policy() -> str:
    """The platform-deployer policy HCL exactly as roles/vault renders it with its defaults."""
    defaults = yaml.safe_load((REPO / "roles/vault/defaults/main.yml").read_text())
    tmpl = yaml.safe_load((REPO / "roles/vault/vars/main.yml").read_text())["_vault_deployer_policy_hcl"]
    return jinja2.Template(tmpl).render(**{k: defaults[k] for k in
                                           ("vault_kv_mount", "vault_mesh_ca_kv_path", "vault_ingress_kv_path")})


def kv_v2_client(bao):
    """A root client of the test bed's raft node, unsealed, with KV v2 mounted at secret/ (as roles/vault leaves it)."""
    if bao.is_sealed():
        bao.unseal()
    c = bao.client()
    if "secret/" not in c.sys.list_mounted_secrets_engines()["data"]:
        bao.enable_kv_v2("secret")
    return c


class _Writer:
    """hvac client whose write() takes the body as keywords (hvac 2 wants write_data(path, data=...))."""

    def __init__(self, client):
        self._c = client
        self.sys, self.secrets = client.sys, client.secrets

    def write(self, path, **body):
        return self._c.write_data(path, data=body)

    def delete(self, path):
        return self._c.delete(path)


def _issue_like_the_vault_role(c, uid: str) -> dict:
    """roles/vault/tasks/configure.yml's PKI and KV steps, through hvac on the test bed's node."""
    root, inter = f"pki-iv-{uid}", f"pki-int-iv-{uid}"
    c = _Writer(c)
    for mount in (root, inter):
        c.sys.enable_secrets_engine(backend_type="pki", path=mount, config={"max_lease_ttl": "87600h"})
    c.write(f"{root}/root/generate/internal", common_name="iv root CA", ttl="87600h", key_type="ec", key_bits=384)
    csr = c.write(f"{inter}/intermediate/generate/internal", common_name="iv intermediate CA",
                  key_type="ec", key_bits=384)["data"]["csr"]
    signed = c.write(f"{root}/root/sign-intermediate", csr=csr, common_name="iv intermediate CA", ttl="43800h",
                     format="pem", max_path_length=1)["data"]
    c.write(f"{inter}/intermediate/set-signed", certificate=signed["certificate"] + "\n" + signed["issuing_ca"])
    c.write(f"{inter}/roles/ingress", allowed_domains=["gpuops.test"], allow_subdomains=True,
            allow_bare_domains=True, server_flag=True, client_flag=False, key_type="ec", key_bits=256, max_ttl=7200)
    # the mesh CA: generate/exported, signed as a CA (path length 0), its key dropped from the engine
    mesh_csr = c.write(f"{inter}/intermediate/generate/exported", common_name="iv mesh CA", key_type="ec",
                       key_bits=256, key_name=f"mesh-{uid}")["data"]
    mesh = c.write(f"{inter}/root/sign-intermediate", csr=mesh_csr["csr"], common_name="iv mesh CA", ttl="8760h",
                   format="pem", max_path_length=0, use_csr_values=False)["data"]
    c.delete(f"{inter}/key/{mesh_csr['key_id']}")
    cacerts = {"ca-cert.pem": mesh["certificate"], "ca-key.pem": mesh_csr["private_key"],
               "root-cert.pem": mesh["ca_chain"][-1],
               "cert-chain.pem": "\n".join([mesh["certificate"]] + mesh["ca_chain"])}
    leaf = c.write(f"{inter}/issue/ingress", common_name="models.gpuops.test", ttl="1h")["data"]
    ingress = {"tls.crt": "\n".join([leaf["certificate"]] + leaf["ca_chain"][:-1]), "tls.key": leaf["private_key"],
               "ca.crt": leaf["ca_chain"][-1]}
    c.secrets.kv.v2.create_or_update_secret(path=MESH_PATH, secret=cacerts, mount_point="secret")
    c.secrets.kv.v2.create_or_update_secret(path=INGRESS_PATH, secret=ingress, mount_point="secret")
    return {"cacerts": cacerts, "ingress": ingress, "inter": inter}


@pytest.fixture(scope="module")
def vault_kv(openbao_raft, tmp_path_factory):
    """KV entries as roles/vault leaves them, the deployer policy and token (0600 file), a root token file."""
    bao = openbao_raft
    c = kv_v2_client(bao)
    uid = uuid.uuid4().hex[:8]
    issued = _issue_like_the_vault_role(c, uid)
    c.sys.create_or_update_policy(name="platform-deployer", policy=_vault_role_policy())
    token = c.auth.token.create_orphan(policies=["platform-deployer"], no_default_policy=True, period="768h",
                                       renewable=True)["auth"]["client_token"]
    # the AppRole alternative: a role with the same policy, its secret id in a 0600 file
    approle = f"approle-iv-{uid}"
    c.sys.enable_auth_method("approle", path=approle)
    c.auth.approle.create_or_update_approle("platform-deployer", token_policies=["platform-deployer"],
                                            token_ttl="10m", mount_point=approle)
    role_id = c.auth.approle.read_role_id("platform-deployer", mount_point=approle)["data"]["role_id"]
    secret_id = c.auth.approle.generate_secret_id("platform-deployer", mount_point=approle)["data"]["secret_id"]
    work = tmp_path_factory.mktemp("istio-vault")
    yield {"bao": bao, "token": token, "work": work, **issued,
           "approle": {"istio_vault_auth": "approle", "istio_vault_approle_mount": approle,
                       "istio_vault_role_id": role_id,
                       "istio_vault_secret_id_file": str(write_private(work / "secret-id", secret_id))},
           "secret_id": secret_id,
           "token_file": write_private(work / "platform-deployer.token", token),
           "root_token_file": write_private(work / "root.token", bao.token)}


@pytest.fixture(scope="module")
def istio_vault(vault_kv, k8s):
    """Runs of the certificates entry point, two at a time: the first run beside the two failing runs
    (they stop at the Vault checks, before any Kubernetes call), then the second run beside a
    check-mode run that reads a rotated ingress certificate."""
    work = vault_kv["work"]
    ns, gw_ns = f"iv-istio-{uuid.uuid4().hex[:6]}", f"iv-ingress-{uuid.uuid4().hex[:6]}"
    pb = work / "certificates.yml"
    pb.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "istio certificates", "ansible.builtin.include_role": {
            "name": "gpuops.cluster.istio", "tasks_from": "certificates.yml"}}]}]))
    inv = inventory(work / "hosts.yml", {})
    xv = {"gpuops_kubeconfig": k8s.kubeconfig, "istio_namespace": ns, "istio_gateway_namespace": gw_ns,
          "istio_ingress_hosts": ["models.gpuops.test"],
          "istio_pki_source": "vault", "istio_vault_url": vault_kv["bao"].addr,
          "istio_vault_ca_cert": vault_kv["bao"].ca_cert, "istio_vault_token_file": str(vault_kv["token_file"])}
    c = vault_kv["bao"].client()
    # an entry without two of the plug-in CA's keys (read with the root token: the deployer may not)
    broken = {k: v for k, v in vault_kv["cacerts"].items() if k not in ("ca-key.pem", "cert-chain.pem")}
    c.secrets.kv.v2.create_or_update_secret(path="platform/istio/broken", secret=broken, mount_point="secret")
    failing = {
        "broken": dict(xv, istio_vault_mesh_ca_path="platform/istio/broken",
                       istio_vault_token_file=str(vault_kv["root_token_file"])),
        # the deployer token on a path its policy does not name
        "denied": dict(xv, istio_vault_ingress_path="torchserve/other", istio_plugin_ca=False),
        # both disabled (a site's own cacerts Secret, no gateway): no Vault read at all, not even the options'
        "disabled": dict(xv, istio_plugin_ca=False, istio_gateway_enabled=False, istio_vault_url="",
                         istio_vault_token_file="/nonexistent", istio_namespace=ns + "-own"),
    }
    # a rotated ingress certificate at another KV path (root token): check mode reports the Secret's
    # change and makes none, so it runs beside the real second run (which must change nothing)
    leaf = _Writer(c).write(f"{vault_kv['inter']}/issue/ingress", common_name="models.gpuops.test", ttl="1h")["data"]
    rotated = {"tls.crt": leaf["certificate"], "tls.key": leaf["private_key"], "ca.crt": leaf["ca_chain"][-1]}
    c.secrets.kv.v2.create_or_update_secret(path="platform/istio/ingress-rotated", secret=rotated, mount_point="secret")
    xv_rotated = dict(xv, istio_vault_ingress_path="platform/istio/ingress-rotated",
                      istio_vault_token_file=str(vault_kv["root_token_file"]))
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run, pb, work / name, inv, v) for name, v in failing.items()}
        runs = {"first": run(pb, work / "first", inv, xv)}
        runs.update({name: f.result() for name, f in futures.items()})
        check = pool.submit(run, pb, work / "check", inv, xv_rotated, check=True)
        runs["second"] = run(pb, work / "second", inv, xv)
        runs["check"] = check.result()
    for name, r in runs.items():
        OUTPUTS.append(r["stdout"] + r["stderr"])
        # (CPU of runs side by side is shared out by whichever finishes first)
        print(f"istio vault run {name}: rc={r['rc']} wall={r['wall']}s cpu={r['cpu']}s changed={r['stats'].get('changed')}")
    yield {"runs": runs, "ns": ns, "gw_ns": gw_ns, "secrets": [rotated["tls.key"]]}


def _secret(k8s, ns, name):
    from kubernetes import client
    with k8s.api_client() as api:
        return client.CoreV1Api(api).read_namespaced_secret(name, ns)


def test_kv_entries_become_the_two_secrets(istio_vault, vault_kv, k8s):
    first = istio_vault["runs"]["first"]
    assert first["rc"] == 0 and first["stats"]["changed"] > 0, brief(first)
    ca = _secret(k8s, istio_vault["ns"], "cacerts")
    assert ca.type == "Opaque" and sorted(ca.data) == sorted(MESH_KEYS)
    assert {k: base64.b64decode(v).decode() for k, v in ca.data.items()} == vault_kv["cacerts"]
    tls = _secret(k8s, istio_vault["gw_ns"], "gpuops-ingress-tls")
    assert tls.type == "kubernetes.io/tls"
    # the Gateway's credential: certificate (with chain) and key; KV's ca.crt (the root) is not a client CA
    assert sorted(tls.data) == ["tls.crt", "tls.key"]
    assert base64.b64decode(tls.data["tls.crt"]).decode() == vault_kv["ingress"]["tls.crt"]
    assert base64.b64decode(tls.data["tls.key"]).decode() == vault_kv["ingress"]["tls.key"]


def test_second_run_changes_nothing_and_check_mode_makes_no_change(istio_vault, vault_kv, k8s):
    second, check = istio_vault["runs"]["second"], istio_vault["runs"]["check"]
    assert second["rc"] == 0 and second["stats"]["changed"] == 0, brief(second)
    assert check["rc"] == 0, brief(check)
    # the rotated KV entry is seen (reported as a change of the TLS Secret only) ...
    changed = [n for n, rs in check["tasks"].items() if any(r.get("changed") for r in rs)]
    assert changed == ["Ingress TLS Secret for the Gateway"], brief(check)
    # ... and not made
    tls = _secret(k8s, istio_vault["gw_ns"], "gpuops-ingress-tls")
    assert base64.b64decode(tls.data["tls.key"]).decode() == vault_kv["ingress"]["tls.key"]


def test_approle_login_reads_and_checks_the_same_entries(vault_kv):
    """The AppRole alternative, on the Vault side only (material.yml: read, key and PEM checks)."""
    work = vault_kv["work"] / "approle"
    work.mkdir()
    pb = work / "material.yml"
    pb.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "istio material", "ansible.builtin.include_role": {
            "name": "gpuops.cluster.istio", "tasks_from": "material.yml"}}]}]))
    xv = {"istio_pki_source": "vault", "istio_vault_url": vault_kv["bao"].addr,
          "istio_vault_ca_cert": vault_kv["bao"].ca_cert, **vault_kv["approle"]}
    inv = inventory(work / "hosts.yml", {})
    # beside it, a wrong secret id: the failure names the path and the AppRole options, not the secret
    bad = write_private(work / "bad-secret-id", "0" * 36)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        bad_run = pool.submit(run, pb, work / "bad", inv, dict(xv, istio_vault_secret_id_file=str(bad)))
        r = run(pb, work / "good", inv, xv)
        bad_r = bad_run.result()
    OUTPUTS.extend(x["stdout"] + x["stderr"] for x in (r, bad_r))
    assert r["rc"] == 0 and r["stats"]["changed"] == 0, brief(r)
    reads = r["tasks"]["Read the certificates from Vault KV v2 (on the controller)"][0]["results"]
    assert len(reads) == 2 and not any(x.get("failed") for x in reads)
    for name in ("Check the plug-in CA material (cacerts)", "Check the ingress TLS material"):
        assert not r["tasks"][name][0].get("skipped") and not r["tasks"][name][0].get("failed"), brief(r)
    r = bad_r
    msg = r["tasks"]["Check that every KV entry could be read"][0]["msg"]
    assert r["rc"] != 0 and "secret/platform/istio/cacerts (plug-in CA)" in msg, brief(r)
    assert "istio_vault_role_id / istio_vault_secret_id_file" in msg, msg


def test_incomplete_kv_entry_fails_naming_path_and_keys(istio_vault):
    r = istio_vault["runs"]["broken"]
    assert r["rc"] != 0, brief(r)
    msg = r["tasks"]["Check that every KV entry holds the keys Istio needs"][0]["msg"]
    assert "secret/platform/istio/broken (plug-in CA) lacks ca-key.pem, cert-chain.pem" in msg, msg
    assert "ingress" not in msg.split("lacks")[1] and "BEGIN" not in msg
    # nothing was written: the Secrets come after the checks
    assert "Plug-in CA for istiod (Secret cacerts)" not in r["tasks"], brief(r)


def test_deployer_token_is_refused_other_paths_and_the_failure_names_them(istio_vault, vault_kv):
    r = istio_vault["runs"]["denied"]
    assert r["rc"] != 0, brief(r)
    msg = r["tasks"]["Check that every KV entry could be read"][0]["msg"]
    assert "secret/torchserve/other (ingress certificate)" in msg and "ermission" in msg, msg
    assert "istio_vault_token_file" in msg and vault_kv["token"] not in msg


def test_disabled_modes_read_nothing_from_vault(istio_vault, k8s):
    r = istio_vault["runs"]["disabled"]
    assert r["rc"] == 0, brief(r)
    read = r["tasks"]["Read the certificates from Vault KV v2 (on the controller)"][0]
    assert read.get("skipped") or read.get("results") == [], read
    assert all(x.get("skipped") for x in r["tasks"]["Check the Vault options (istio_pki_source vault)"])
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    with k8s.api_client() as api:
        with pytest.raises(ApiException) as exc:
            client.CoreV1Api(api).read_namespaced_secret("cacerts", istio_vault["ns"] + "-own")
    assert exc.value.status == 404


def test_no_token_or_private_key_in_any_output(istio_vault, vault_kv):
    assert len(OUTPUTS) == 8
    text = "\n".join(OUTPUTS)
    secrets = [vault_kv["token"], vault_kv["bao"].token, vault_kv["secret_id"], vault_kv["cacerts"]["ca-key.pem"],
               vault_kv["ingress"]["tls.key"]] + istio_vault["secrets"]
    secrets += [base64.b64encode(s.encode()).decode() for s in secrets[3:]]
    assert not [s[:12] for s in secrets if s in text]
    assert "PRIVATE KEY" not in text and "BEGIN" not in text


def test_summary_lists_the_vault_layer_on_the_control_planes(tmp_path):
    """playbooks/platform.yml runs vault on kube_control_plane before istio; the site summary names it."""
    from tests.integration.test_site import _summary
    cluster = {"kube_control_plane": {"hosts": {"cp1": {}, "cp2": {}, "cp3": {}}}, "kube_node": {"hosts": {"w1": {}}}}
    assert _summary(tmp_path, None, {}, children=cluster)["vault"] == "ran on all 3 kube_control_plane hosts"
    skipped = _summary(tmp_path, None, {"gpuops_skip_layers": {"vault": "the site's own Vault"}}, children=cluster)
    assert skipped["vault"] == "SKIPPED on all 3 kube_control_plane hosts: the site's own Vault"
    plays = yaml.safe_load((REPO / "playbooks" / "platform.yml").read_text())
    assert [p["hosts"] for p in plays[:2]] == ["kube_control_plane", "localhost"]
    assert plays[0]["tasks"][0]["ansible.builtin.include_role"]["name"] == "gpuops.cluster.vault"
    assert plays[0]["tasks"][0]["when"] == "'vault' not in (gpuops_skip_layers | default({}))"
