#!/usr/bin/env python3
"""Template tests of the Helm chart: renders it with `helm template` and checks what a user relies
on, value by value. Run by tests/chart.sh (helm on PATH).

    tests/chart-render-tests.py KUBE_VERSION

Python rather than helm-unittest: no plugin to install, and an assertion reads as the object a
user would look at (the Deployment's serviceAccountName, the pod's securityContext)."""
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml  # PyYAML, installed with moto (tests/cluster/deps.sh)

repo = Path(__file__).resolve().parent.parent
kube_version = sys.argv[1]
failures = []

RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def render(*args, values=None):
    """(objects, error): the rendered objects, or helm's error output."""
    cmd = ["helm", "template", "dso", str(repo / "charts/dso"), "-n", "dso-system"]
    cmd += ["--kube-version", kube_version, *args]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        if values is not None:
            f.write(values)
            f.flush()
            cmd += ["-f", f.name]
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d], None


def find(objs, kind, name=None):
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def pod(objs, name):
    [deploy] = find(objs, "Deployment", name)
    return deploy["spec"]["template"]["spec"]


def subjects_of(objs, component_fullname):
    """ServiceAccount names the component's (Cluster)RoleBindings grant to."""
    return sorted(
        {
            s["name"]
            for o in objs
            if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
            and o["metadata"]["name"].startswith(component_fullname)
            for s in o["subjects"]
        }
    )


def check(name, cond, detail=""):
    print(f"  {'ok' if cond else 'FAILED'}: {name}")
    if not cond:
        failures.append(f"{name} {detail}")


def test(title):
    print(f"[render] {title}")


test("defaults: the chart creates each component's ServiceAccount and runs it as Pod Security restricted")
objs, err = render()
check("rendered", objs is not None, err)
sas = sorted(o["metadata"]["name"] for o in find(objs, "ServiceAccount"))
check("ServiceAccounts dso-operator and dso-webhook", sas == ["dso-operator", "dso-webhook"], sas)
for comp in ("dso-operator", "dso-webhook"):
    spec = pod(objs, comp)
    check(f"{comp} runs as {comp}", spec["serviceAccountName"] == comp, spec["serviceAccountName"])
    check(f"{comp} bindings name {comp}", subjects_of(objs, comp) == [comp], subjects_of(objs, comp))
    check(f"{comp} pod securityContext", spec["securityContext"] == RESTRICTED_POD, spec["securityContext"])
    sc = spec["containers"][0]["securityContext"]
    check(f"{comp} container securityContext", sc == RESTRICTED_CONTAINER, sc)

test("existing ServiceAccounts (eksctl create iamserviceaccount): not created, used by pods and bindings")
objs, err = render(
    "--set", "operator.serviceAccount.create=false", "--set", "operator.serviceAccount.name=dso-irsa",
    "--set", "webhook.serviceAccount.create=false", "--set", "webhook.serviceAccount.name=hooks",
)
check("rendered", objs is not None, err)
check("no ServiceAccount rendered", find(objs, "ServiceAccount") == [], find(objs, "ServiceAccount"))
for comp, sa in (("dso-operator", "dso-irsa"), ("dso-webhook", "hooks")):
    got = pod(objs, comp)["serviceAccountName"]
    check(f"{comp} runs as {sa}", got == sa, got)
    check(f"{comp} bindings name {sa}", subjects_of(objs, comp) == [sa], subjects_of(objs, comp))

test("only the operator's account is external: the webhook's is still created")
objs, err = render("--set", "operator.serviceAccount.create=false", "--set", "operator.serviceAccount.name=dso-irsa")
check("rendered", objs is not None, err)
sas = [o["metadata"]["name"] for o in find(objs, "ServiceAccount")]
check("ServiceAccount dso-webhook only", sas == ["dso-webhook"], sas)

test("a created account keeps a custom name and the IRSA annotation")
objs, err = render(
    "--set", "operator.serviceAccount.name=dso-op",
    "--set", "operator.serviceAccount.roleArn=arn:aws:iam::123456789012:role/dso-operator",
)
[sa] = find(objs, "ServiceAccount", "dso-op") or [None]
check("ServiceAccount dso-op with the role", sa is not None and sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/dso-operator"), sa)
check("operator runs as dso-op", pod(objs, "dso-operator")["serviceAccountName"] == "dso-op")

test("create=false without a name, or with a roleArn the chart cannot apply, fails with the fix")
objs, err = render("--set", "operator.serviceAccount.create=false")
check("operator: refused, naming operator.serviceAccount.name", objs is None and "operator.serviceAccount.name" in err, err)
objs, err = render("--set", "webhook.serviceAccount.create=false")
check("webhook: refused, naming webhook.serviceAccount.name", objs is None and "webhook.serviceAccount.name" in err, err)
objs, err = render(
    "--set", "operator.serviceAccount.create=false", "--set", "operator.serviceAccount.name=x",
    "--set", "operator.serviceAccount.roleArn=arn:aws:iam::123456789012:role/r",
)
check("roleArn on an existing account: refused", objs is None and "annotate your own ServiceAccount" in err, err)

test("OpenShift restricted-v2: null removes the fixed user, group and fsGroup; the rest stays")
openshift = """
operator:
  podSecurityContext: {runAsUser: null, runAsGroup: null, fsGroup: null}
webhook:
  podSecurityContext: {runAsUser: null, runAsGroup: null, fsGroup: null}
"""
objs, err = render(values=openshift)
check("rendered", objs is not None, err)
want = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
for comp in ("dso-operator", "dso-webhook"):
    spec = pod(objs, comp)
    check(f"{comp} pod securityContext without fixed IDs", spec["securityContext"] == want, spec["securityContext"])
    sc = spec["containers"][0]["securityContext"]
    check(f"{comp} container securityContext unchanged", sc == RESTRICTED_CONTAINER, sc)

test("a container securityContext key is merged with the defaults")
objs, err = render("--set", "webhook.securityContext.runAsUser=1000700000")
sc = pod(objs, "dso-webhook")["containers"][0]["securityContext"]
check("runAsUser added, defaults kept", sc == {**RESTRICTED_CONTAINER, "runAsUser": 1000700000}, sc)
sc = pod(objs, "dso-operator")["containers"][0]["securityContext"]
check("the operator's untouched", sc == RESTRICTED_CONTAINER, sc)

test("values.schema.json refuses a misspelt securityContext field and a non-boolean create")
objs, err = render("--set", "operator.podSecurityContext.runAsUsr=1000")
check("runAsUsr refused", objs is None and "runAsUsr" in err, err)
objs, err = render("--set", "webhook.securityContext.privileged=maybe")
check("privileged=maybe refused", objs is None and "privileged" in err, err)
objs, err = render("--set-string", "operator.serviceAccount.create=yes")
check("create=\"yes\" refused", objs is None and "create" in err, err)

test("labels and annotations the API server would refuse are refused at install, valid ones rendered")
objs, err = render("--set", "commonLabels.team=platform ops")
check("label value with a space refused", objs is None and "commonLabels/team" in err, err)
objs, err = render("--set", "webhook.podLabels.bad key=x")
check("label key with a space refused", objs is None and "bad key" in err, err)
objs, err = render("--set", "operator.podAnnotations.prometheus\\.io/port=8080")
check("non-string annotation refused", objs is None and "podAnnotations" in err, err)
objs, err = render(
    "--set", "operator.podLabels.example\\.com/team=platform",
    "--set-string", "operator.podAnnotations.prometheus\\.io/port=8080",
)
check("rendered", objs is not None, err)
meta = find(objs, "Deployment", "dso-operator")[0]["spec"]["template"]["metadata"]
check("pod label example.com/team", meta["labels"].get("example.com/team") == "platform", meta["labels"])
check("pod annotation prometheus.io/port", meta["annotations"].get("prometheus.io/port") == "8080", meta["annotations"])

test("webhook NetworkPolicy: off by default; on, only the listed peers reach each port")
objs, err = render()
check("none by default", find(objs, "NetworkPolicy") == [], find(objs, "NetworkPolicy"))
netpol = """
webhook:
  networkPolicy:
    enabled: true
    from: [{ipBlock: {cidr: 10.0.0.0/16}}, {ipBlock: {cidr: 10.1.0.0/16}}]
    metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
"""
objs, err = render(values=netpol)
check("rendered", objs is not None, err)
[np] = find(objs or [], "NetworkPolicy", "dso-webhook") or [None]
check("NetworkPolicy dso-webhook", np is not None, objs)
if np:
    spec = np["spec"]
    selector = find(objs, "Deployment", "dso-webhook")[0]["spec"]["selector"]["matchLabels"]
    check("selects the webhook's pods", spec["podSelector"]["matchLabels"] == selector, spec["podSelector"])
    check("isolates ingress only", spec["policyTypes"] == ["Ingress"], spec["policyTypes"])
    rules = {tuple(p["port"] for p in r["ports"]): r["from"] for r in spec["ingress"]}
    check("the control-plane CIDRs to port 8443", rules.get((8443,)) == [{"ipBlock": {"cidr": "10.0.0.0/16"}}, {"ipBlock": {"cidr": "10.1.0.0/16"}}], rules)
    check("the monitoring namespace to port 8081", rules.get((8081,)) == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}], rules)
    check("no other rule", len(spec["ingress"]) == 2, spec["ingress"])
objs, err = render("--set", "webhook.networkPolicy.enabled=true", "--set", "webhook.networkPolicy.from[0].ipBlock.cidr=10.0.0.0/16")
np = find(objs or [], "NetworkPolicy")
check("without metricsFrom: one rule, the webhook port", np and [r["ports"][0]["port"] for r in np[0]["spec"]["ingress"]] == [8443], np)
objs, err = render("--set", "webhook.networkPolicy.enabled=true")
check("enabled without peers: refused (an empty from admits everyone)", objs is None and "webhook.networkPolicy.from" in err, err)
objs, err = render("--set", "webhook.networkPolicy.enabled=true", "--set", "webhook.networkPolicy.from[0].ipBlock.cidr=10.0.0.0/16", "--set", "hostNetwork=true", "--set", "webhook.url=https://127.0.0.1:8443/mutate", "--set", "webhook.replicas=1")
check("on the host network: refused", objs is None and "host network" in err, err)

test("webhook limits, staleness, identity and token lifetime reach the command line")
def webhook_args(*args):
    objs, err = render(*args)
    check("rendered", objs is not None, err)
    return pod(objs, "dso-webhook")["containers"][0]["args"] if objs else []
got = webhook_args()
for flag in ("--header-read-timeout=5s", "--request-timeout=10s", "--max-connections=512",
             "--max-concurrent-reviews=64", "--max-concurrent-large-reviews=2", "--max-body-size=3Mi",
             "--cache-stale-after=2m", "--token-expiration-seconds=3600"):
    check(f"default {flag}", flag in got, got)
check("default credentials refused by default", "--allow-default-credentials" not in got, got)
got = webhook_args("--set", "init.allowDefaultCredentials=true", "--set", "webhook.limits.maxBodySize=1Mi")
check("allowDefaultCredentials=true", "--allow-default-credentials" in got, got)
check("maxBodySize=1Mi", "--max-body-size=1Mi" in got, got)
for bad, field in (("init.tokenExpirationSeconds=86400", "tokenExpirationSeconds"),
                   ("init.tokenExpirationSeconds=599", "tokenExpirationSeconds"),
                   ("webhook.limits.requestTimeout=10", "requestTimeout"),
                   ("webhook.limits.maxConnections=0", "maxConnections")):
    objs, err = render("--set", bad)
    check(f"{bad} refused", objs is None and field in err, err)

test("the operator's fence: a ValidatingAdmissionPolicy for its ServiceAccount, bound with Deny")
def fence(objs, suffix=""):
    named = lambda o: not o["metadata"]["name"].endswith("-pods") if not suffix else o["metadata"]["name"].endswith(suffix)
    vaps = [o for o in find(objs, "ValidatingAdmissionPolicy") if named(o)]
    bindings = [o for o in find(objs, "ValidatingAdmissionPolicyBinding") if named(o)]
    return (vaps[0] if len(vaps) == 1 else None), (bindings[0] if len(bindings) == 1 else None)
objs, err = render()
check("rendered", objs is not None, err)
vap, binding = fence(objs or [])
check("one policy dso-operator-fence", vap is not None and vap["metadata"]["name"] == "dso-operator-fence", vap)
check("one binding of it, Deny, no narrowing", binding is not None and binding["spec"] == {"policyName": "dso-operator-fence", "validationActions": ["Deny"]}, binding)
if vap:
    [cond] = vap["spec"]["matchConditions"]
    check("applies to the operator's ServiceAccount only", cond["expression"] == "request.userInfo.username == 'system:serviceaccount:dso-system:dso-operator'", cond)
    rules = vap["spec"]["matchConstraints"]["resourceRules"]
    resources = sorted(r for rule in rules for r in rule["resources"])
    check("matches the three workload kinds and their subresources", resources == sorted(["deployments", "deployments/*", "statefulsets", "statefulsets/*", "daemonsets", "daemonsets/*"]), resources)
    check("on every write", all({"CREATE", "UPDATE", "DELETE"} <= set(rule["operations"]) for rule in rules), rules)
    text = yaml.safe_dump(vap["spec"]["validations"])
    check("names the two annotations", "dso.dev/versions-hash" in text and "dso.dev/recorded-versions" in text, text)
    check("refuses kube-system and the release namespace", "['kube-system', 'dso-system']" in vap["spec"]["validations"][0]["expression"], vap["spec"]["validations"][0])
    check("fails closed", vap["spec"]["failurePolicy"] == "Fail", vap["spec"])
pods, pods_binding = fence(objs or [], "-pods")
check("a second policy fences pods", pods is not None and pods_binding is not None and pods_binding["spec"]["validationActions"] == ["Deny"], pods)
if pods:
    resources = sorted(r for rule in pods["spec"]["matchConstraints"]["resourceRules"] for r in rule["resources"])
    check("it matches pods and their subresources", resources == ["pods", "pods/*"], resources)
    text = yaml.safe_dump(pods["spec"]["validations"])
    check("it names only dso.dev/desired-versions", "dso.dev/desired-versions" in text and "versions-hash" not in text, text)
    check("it applies to the operator's ServiceAccount only", pods["spec"]["matchConditions"] == vap["spec"]["matchConditions"], pods["spec"]["matchConditions"])
objs, err = render("--set", "operator.serviceAccount.create=false", "--set", "operator.serviceAccount.name=dso-irsa")
vap, _ = fence(objs or [])
check("an existing ServiceAccount is the one fenced", vap is not None and "system:serviceaccount:dso-system:dso-irsa'" in vap["spec"]["matchConditions"][0]["expression"], vap)
objs, err = render("--set", "operator.admissionPolicy.enabled=false")
check("admissionPolicy.enabled=false: none", objs is not None and fence(objs) == (None, None), err)
objs, err = render("--set", "operator.watchNamespace=dso-system")
check("watching the release namespace with the fence: refused", objs is None and "operator.watchNamespace" in err, err)

test("operator RBAC: a ClusterRole for all namespaces, a Role in watchNamespace otherwise")
OPERATOR_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
def operator_rbac(objs):
    return sorted((o["kind"], o["metadata"].get("namespace", "")) for o in objs if o["kind"] in OPERATOR_KINDS and o["metadata"]["name"] == "dso-operator")
objs, err = render()
check("defaults: ClusterRole and ClusterRoleBinding", objs is not None and operator_rbac(objs) == [("ClusterRole", ""), ("ClusterRoleBinding", "")], objs and operator_rbac(objs))
objs, err = render("--set", "operator.watchNamespace=apps")
check("watchNamespace=apps: Role and RoleBinding in apps", objs is not None and operator_rbac(objs) == [("Role", "apps"), ("RoleBinding", "apps")], objs and operator_rbac(objs))
if objs:
    [rb] = find(objs, "RoleBinding", "dso-operator")
    check("the RoleBinding grants the Role to the operator", rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dso-operator"} and rb["subjects"] == [{"kind": "ServiceAccount", "name": "dso-operator", "namespace": "dso-system"}], rb)
    check("no ClusterRole grants the operator workloads", not [o for o in find(objs, "ClusterRole") if o["metadata"]["name"].startswith("dso-operator")], find(objs, "ClusterRole"))

if failures:
    print("chart template tests failed:\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)
print("[render] all template tests passed")
