#!/usr/bin/env python3
"""Template tests of the Helm chart: renders it with `helm template` and checks what a user relies
on, value by value. Run by tests/chart.sh (helm on PATH).

    tests/chart-render-tests.py KUBE_VERSION

Python rather than helm-unittest (why: charts/dso/README.md, "How the chart is tested"): no
plugin to install, an assertion reads as the object a user would look at (the Deployment's
serviceAccountName, the pod's securityContext), and relations between objects (a monitor's
selector and the Services it must match) are plain code. Every chart value has a case here."""
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
def fence(objs, name="dso-operator-fence"):
    vaps = [o for o in find(objs, "ValidatingAdmissionPolicy") if o["metadata"]["name"] == name]
    bindings = [o for o in find(objs, "ValidatingAdmissionPolicyBinding") if o["metadata"]["name"] == name]
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
pods, pods_binding = fence(objs or [], "dso-operator-fence-pods")
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

test("dso:// in pods that do not opt in: a ValidatingAdmissionPolicy, bound with Deny, on by default")
objs, err = render("--set", "webhook.excludeNamespaces={legacy}")
vap, binding = fence(objs or [], "dso-env-references")
check("one binding of it, Deny", binding is not None and binding["spec"] == {"policyName": "dso-env-references", "validationActions": ["Deny"]}, binding)
if vap:
    rules = vap["spec"]["matchConstraints"]["resourceRules"]
    check("pods on CREATE, ephemeral containers on UPDATE", [(r["resources"], r["operations"]) for r in rules] == [(["pods"], ["CREATE"]), (["pods/ephemeralcontainers"], ["UPDATE"])], rules)
    excluded = vap["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"][0]["values"]
    check("not in the release namespace, kube-system, excludeNamespaces", excluded == ["dso-system", "kube-system", "legacy"], excluded)
    check("fails closed", vap["spec"]["failurePolicy"] == "Fail", vap["spec"])
else:
    check("rendered by default", False, err)
objs, err = render("--set", "webhook.envReferencePolicy.enabled=false")
check("envReferencePolicy.enabled=false: none", objs is not None and fence(objs, "dso-env-references") == (None, None), err)

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

test("webhook TLS runtime (default): no key material nor caBundle in the render; an empty Secret, a Lease, RBAC by name")
objs, err = render()
check("rendered", objs is not None, err)
if objs:
    text = yaml.safe_dump_all(objs)
    check("no PEM in the render", "BEGIN" not in text and "LS0tLS1CRUdJTi" not in text, "")
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        [conf] = find(objs, kind, "dso-webhook")
        check(f"{kind} without caBundle (the webhook patches it)", all("caBundle" not in w["clientConfig"] for w in conf["webhooks"]), conf["webhooks"])
    [secret] = find(objs, "Secret", "dso-webhook-certs") or [None]
    check("the certificate Secret is rendered empty", secret is not None and "data" not in secret and "stringData" not in secret, secret)
    check("no chart-generated Secret", find(objs, "Secret", "dso-webhook-tls") == [], find(objs, "Secret"))
    check("the Lease dso-webhook", len(find(objs, "Lease", "dso-webhook")) == 1, find(objs, "Lease"))
    [role] = find(objs, "Role", "dso-webhook") or [None]
    check("a Role of the webhook", role is not None, find(objs, "Role"))
    if role:
        rules = {r["resources"][0]: r for r in role["rules"]}
        check("secrets: its own only, no create", rules["secrets"]["resourceNames"] == ["dso-webhook-certs"] and "create" not in rules["secrets"]["verbs"], rules["secrets"])
        check("leases: its own only, no create", rules["leases"]["resourceNames"] == ["dso-webhook"] and "create" not in rules["leases"]["verbs"], rules["leases"])
    [cr] = find(objs, "ClusterRole", "dso-webhook")
    hooks = [r for r in cr["rules"] if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    check("webhook configurations: DSO's only", len(hooks) == 1 and hooks[0]["resourceNames"] == ["dso-webhook"] and "create" not in hooks[0]["verbs"], hooks)
    check("no rule without resourceNames on secrets", all("secrets" not in r["resources"] for r in cr["rules"]), cr["rules"])
    spec = pod(objs, "dso-webhook")
    args = spec["containers"][0]["args"]
    for flag in ("--tls-mode=runtime", "--tls-secret=dso-webhook-certs", "--tls-webhook-configuration=dso-webhook", "--leader-lease=dso-webhook",
                 "--tls-san=dso-webhook,dso-webhook.dso-system,dso-webhook.dso-system.svc,dso-webhook.dso-system.svc.cluster.local"):
        check(f"webhook flag {flag}", flag in args, args)
    check("no certificate volume", "volumes" not in spec, spec.get("volumes"))
    env = {e["name"] for e in spec["containers"][0]["env"]}
    check("POD_NAME and POD_NAMESPACE from the downward API", {"POD_NAME", "POD_NAMESPACE"} <= env, env)

test("webhook TLS helm mode: the chart's Secret and caBundle, no runtime RBAC; certManager: annotations")
objs, err = render("--set", "webhook.tls.mode=helm")
check("rendered", objs is not None, err)
if objs:
    [conf] = find(objs, "MutatingWebhookConfiguration", "dso-webhook")
    check("caBundle rendered", all(w["clientConfig"].get("caBundle") for w in conf["webhooks"]), conf["webhooks"])
    check("the chart-generated Secret", len(find(objs, "Secret", "dso-webhook-tls")) == 1, find(objs, "Secret"))
    check("no Role, no Lease", find(objs, "Role", "dso-webhook") == [] and find(objs, "Lease", "dso-webhook") == [], "")
    check("files mode", "--tls-cert=/etc/dso/tls/tls.crt" in pod(objs, "dso-webhook")["containers"][0]["args"], "")
for args in (("--set", "webhook.tls.mode=certManager"), ("--set", "webhook.tls.certManager.enabled=true")):
    objs, err = render(*args)
    check(f"{args[1]}: rendered", objs is not None, err)
    if objs:
        [conf] = find(objs, "MutatingWebhookConfiguration", "dso-webhook")
        check(f"{args[1]}: CA injected by cert-manager", "cert-manager.io/inject-ca-from" in conf["metadata"].get("annotations", {}), conf["metadata"])
        check(f"{args[1]}: a Certificate", len(find(objs, "Certificate")) == 1, "")
objs, err = render("--set", "webhook.tls.validity=1y")
check("validity=1y refused", objs is None and "validity" in err, err)
test("secretAllowlist: one ConfigMap, mounted into the webhook and the operator, which restart when it changes")
ALLOWLIST = """
secretAllowlist:
  default: ["{namespace}/"]
  namespaces:
    payments: ["shared/payments-", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:payments/*"]
"""
objs, err = render()
check("defaults: no allowlist, no ConfigMap", objs is not None and not find(objs, "ConfigMap", "dso-secret-allowlist"), err)
for comp in ("dso-operator", "dso-webhook"):
    args = pod(objs, comp)["containers"][0]["args"] if objs else []
    check(f"defaults: {comp} without --secret-allowlist", not any(a.startswith("--secret-allowlist") for a in args), args)
objs, err = render(values=ALLOWLIST)
check("rendered", objs is not None, err)
if objs:
    [cm] = find(objs, "ConfigMap", "dso-secret-allowlist")
    got = yaml.safe_load(cm["data"]["allowlist.yaml"])
    check("the ConfigMap holds the value as written", got == yaml.safe_load(ALLOWLIST)["secretAllowlist"], got)
    sums = set()
    for comp in ("dso-operator", "dso-webhook"):
        [deploy] = find(objs, "Deployment", comp)
        spec = deploy["spec"]["template"]["spec"]
        c = spec["containers"][0]
        check(f"{comp} reads it", "--secret-allowlist=/etc/dso/allowlist/allowlist.yaml" in c["args"], c["args"])
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        check(f"{comp} mounts it read-only", mounts.get("secret-allowlist", {}).get("mountPath") == "/etc/dso/allowlist" and mounts["secret-allowlist"].get("readOnly"), mounts)
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        check(f"{comp} volume from the ConfigMap", vols.get("secret-allowlist", {}).get("configMap", {}).get("name") == "dso-secret-allowlist", vols)
        sums.add(deploy["spec"]["template"]["metadata"]["annotations"].get("checksum/secret-allowlist"))
    check("both pods carry the same checksum", len(sums) == 1 and None not in sums, sums)
    changed, _ = render(values=ALLOWLIST.replace("shared/", "common/"))
    after = find(changed or [], "Deployment", "dso-webhook")[0]["spec"]["template"]["metadata"]["annotations"].get("checksum/secret-allowlist") if changed else None
    check("a change changes the checksum (restarts them)", after not in sums, after)
for bad, why, named in (('secretAllowlist: {default: ["team-*"]}', "a * in a name prefix", "secretAllowlist"),
                        ('secretAllowlist: {namespaces: {Team_A: ["a/"]}}', "a namespace that is no DNS label", "Team_A"),
                        ('secretAllowlist: {default: ["arn:aws:secretsmanager:us-*:*:secret:x"]}', "a partial region glob", "secretAllowlist"),
                        ('secretAllowlist: {defaults: ["a/"]}', "an unknown key", "defaults")):
    objs, err = render(values=bad)
    check(f"refused by the schema: {why}", objs is None and named in (err or ""), err)
test("monitoring: nothing by default; a ServiceMonitor or a PodMonitor scrapes both components' http-metrics port")
import json
import re
objs, err = render()
kinds = {o["kind"] for o in objs}
check("no ServiceMonitor, PodMonitor, PrometheusRule or dashboard", not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"} and not find(objs, "ConfigMap"), kinds)
def selects(selector, labels):
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e
        ok = ok and labels.get(e["key"]) in e["values"]
    return ok
objs, err = render("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.labels.release=prom",
                   "--set", "metrics.serviceMonitor.interval=15s", "--set", "metrics.serviceMonitor.metricRelabelings[0].action=drop",
                   "--set", "metrics.serviceMonitor.metricRelabelings[0].sourceLabels[0]=__name__")
check("rendered", objs is not None, err)
[sm] = find(objs, "ServiceMonitor") or [None]
check("one ServiceMonitor, labelled release=prom", sm is not None and sm["metadata"]["labels"].get("release") == "prom", sm)
if sm:
    scraped = sorted(o["metadata"]["name"] for o in find(objs, "Service") if selects(sm["spec"]["selector"], o["metadata"]["labels"]))
    check("selects the operator's and the webhook's Services", scraped == ["dso-operator-metrics", "dso-webhook"], scraped)
    [ep] = sm["spec"]["endpoints"]
    check("scrapes their port http-metrics every 15s", ep["port"] == "http-metrics" and ep["interval"] == "15s", ep)
    check("metricRelabelings passed through", ep.get("metricRelabelings") == [{"action": "drop", "sourceLabels": ["__name__"]}], ep)
    check("no scrapeTimeout unless given", "scrapeTimeout" not in ep, ep)
    for svc in find(objs, "Service"):
        if svc["metadata"]["name"] in scraped:
            check(f"{svc['metadata']['name']} has a port http-metrics", "http-metrics" in [p["name"] for p in svc["spec"]["ports"]], svc["spec"]["ports"])
    check("in the release namespace only", sm["spec"]["namespaceSelector"] == {"matchNames": ["dso-system"]}, sm["spec"])
objs, err = render("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.scrapeTimeout=10s", "--set", "metrics.serviceMonitor.relabelings[0].targetLabel=cluster", "--set", "metrics.serviceMonitor.relabelings[0].replacement=prod")
ep = find(objs or [], "ServiceMonitor")[0]["spec"]["endpoints"][0] if objs else {}
check("scrapeTimeout and relabelings", ep.get("scrapeTimeout") == "10s" and ep.get("relabelings") == [{"targetLabel": "cluster", "replacement": "prod"}], (ep, err))
objs, err = render("--set", "metrics.podMonitor.enabled=true", "--set", "metrics.podMonitor.interval=")
check("rendered", objs is not None, err)
[pm] = find(objs, "PodMonitor") or [None]
check("one PodMonitor", pm is not None, objs and [o["kind"] for o in objs])
if pm:
    for comp in ("dso-operator", "dso-webhook"):
        [d] = find(objs, "Deployment", comp)
        tpl = d["spec"]["template"]
        check(f"selects {comp}'s pods", selects(pm["spec"]["selector"], tpl["metadata"]["labels"]), pm["spec"]["selector"])
        ports = [p["name"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])]
        check(f"{comp} has a container port http-metrics", "http-metrics" in ports, ports)
    [ep] = pm["spec"]["podMetricsEndpoints"]
    check("port http-metrics, Prometheus's own interval", ep == {"port": "http-metrics", "path": "/metrics", "scheme": "http"}, ep)
objs, err = render("--set", "metrics.podMonitor.enabled=true", "--set", "metrics.serviceMonitor.enabled=true")
check("both monitors: refused", objs is None and "metrics.podMonitor.enabled" in err, err)

test("PrometheusRule: the alerts of docs/monitoring.md, on metrics the code exports")
doc = (repo / "docs/monitoring.md").read_text()
documented_metrics = set(re.findall(r"^\| `(dso_[a-z_]+)` \|", doc, re.M))
documented_alerts = re.findall(r"^\| <a id=\"[a-z]+\"></a>`(Dso[A-Za-z]+)` \|", doc, re.M)
check("docs list metrics and alerts", len(documented_metrics) >= 13 and len(documented_alerts) >= 8, (documented_metrics, documented_alerts))
def metric_names(expr):
    """Metric names an expression reads (histogram series named by their histogram)."""
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"\bdso_[a-z_]+", expr)}
objs, err = render("--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.prometheusRule.labels.release=prom")
check("rendered", objs is not None, err)
[rule] = find(objs or [], "PrometheusRule") or [None]
check("one PrometheusRule labelled release=prom", rule is not None and rule["metadata"]["labels"].get("release") == "prom", rule)
if rule:
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    check("exactly the documented alerts", sorted(names) == sorted(documented_alerts), (names, documented_alerts))
    used = set().union(*(metric_names(r["expr"]) for r in rules))
    check("every metric an alert reads is documented (so exported: the crates' tests compare)", used and used <= documented_metrics, used - documented_metrics)
    check("every alert selects the release namespace", all('namespace="dso-system"' in r["expr"] for r in rules), [r["expr"] for r in rules])
    check("every alert has a severity, a summary, a description and a runbook link", all(r["labels"].get("severity") in ("warning", "critical") and {"summary", "description", "runbook_url"} <= set(r["annotations"]) for r in rules), rules)
    anchors = set(re.findall(r'<a id="([a-z]+)"></a>', doc))
    check("each runbook link's anchor exists in docs/monitoring.md", all(r["annotations"]["runbook_url"].rsplit("#", 1)[1] in anchors for r in rules), [r["annotations"]["runbook_url"] for r in rules])
    [nr] = [r for r in rules if r["alert"] == "DsoSecretNotReady"]
    check("DsoSecretNotReady waits notReadyFor (10m)", nr["for"] == "10m", nr)
objs, err = render("--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.prometheusRule.selector=job=\"dso\"",
                   "--set", "metrics.prometheusRule.notReadyFor=30m", "--set", "metrics.prometheusRule.latencyP99Seconds=0.5",
                   "--set", "metrics.prometheusRule.disabled={DsoWebhookDenials}", "--set", "metrics.prometheusRule.additionalRuleLabels.team=platform")
check("rendered", objs is not None, err)
if objs:
    rules = {r["alert"]: r for g in find(objs, "PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]}
    check("disabled: DsoWebhookDenials left out", "DsoWebhookDenials" not in rules and len(rules) == len(documented_alerts) - 1, list(rules))
    check("selector: job=\"dso\" instead of the namespace", all('{job="dso"' in r["expr"] and "dso-system" not in r["expr"] for r in rules.values()), [r["expr"] for r in rules.values()])
    check("notReadyFor=30m", rules["DsoSecretNotReady"]["for"] == "30m", rules["DsoSecretNotReady"])
    check("latencyP99Seconds=0.5", rules["DsoWebhookLatencyHigh"]["expr"].endswith("> 0.5"), rules["DsoWebhookLatencyHigh"]["expr"])
    check("additionalRuleLabels on every alert", all(r["labels"].get("team") == "platform" for r in rules.values()), rules)
objs, err = render("--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.prometheusRule.denialsFor=1h", "--set", "metrics.prometheusRule.errorRatio=0.05")
check("rendered", objs is not None, err)
if objs:
    rules = {r["alert"]: r for g in find(objs, "PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]}
    check("denialsFor=1h", rules["DsoWebhookDenials"]["for"] == "1h", rules["DsoWebhookDenials"])
    check("errorRatio=0.05", "> 0.05 * (" in rules["DsoWebhookErrors"]["expr"], rules["DsoWebhookErrors"]["expr"])
for bad, field in (("metrics.prometheusRule.notReadyFor=10 minutes", "notReadyFor"),
                   ("metrics.prometheusRule.disabled={DsoNoSuchAlert}", "disabled"),
                   ("metrics.prometheusRule.errorRatio=2", "errorRatio"),
                   ("metrics.serviceMonitor.interval=30", "interval")):
    objs, err = render("--set", bad)
    check(f"{bad} refused", objs is None and field in err, err)

test("Grafana dashboard: a ConfigMap for the sidecar, on documented metrics")
objs, err = render("--set", "metrics.dashboard.enabled=true", "--set", "metrics.dashboard.namespace=monitoring",
                   "--set", "metrics.dashboard.annotations.grafana_folder=DSO")
check("rendered", objs is not None, err)
[cm] = find(objs or [], "ConfigMap", "dso-dashboard") or [None]
check("ConfigMap dso-dashboard in monitoring, labelled grafana_dashboard=1, folder DSO", cm is not None and cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"].get("grafana_dashboard") == "1" and cm["metadata"]["annotations"] == {"grafana_folder": "DSO"}, cm and cm["metadata"])
if cm:
    dash = json.loads(cm["data"]["dso.json"])
    check("the chart's dashboards/dso.json, as is", dash == json.loads((repo / "charts/dso/dashboards/dso.json").read_text()), "differs")
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = set().union(*(metric_names(e) for e in exprs))
    check("every metric a panel reads is documented", used and used <= documented_metrics, used - documented_metrics)
    check("every documented metric is on a panel", documented_metrics <= used, documented_metrics - used)
    check("every query takes the namespace variable", all('namespace=~"$namespace"' in e for e in exprs), exprs)

test("images: global.imageRegistry replaces each registry, a digest pins the image")
DIGEST = "sha256:" + "ab" * 32
def images(objs):
    op = pod(objs, "dso-operator")["containers"][0]["image"]
    wh = pod(objs, "dso-webhook")["containers"][0]
    init = [a.split("=", 1)[1] for a in wh["args"] if a.startswith("--init-image=")][0]
    return op, wh["image"], init
objs, err = render()
check("defaults: ghcr.io/dso-dev/*:<appVersion>", images(objs) == ("ghcr.io/dso-dev/dso-operator:0.1.0", "ghcr.io/dso-dev/dso-webhook:0.1.0", "ghcr.io/dso-dev/dso-init:0.1.0"), images(objs))
objs, err = render("--set", "global.imageRegistry=123456789012.dkr.ecr.us-east-1.amazonaws.com/ghcr", "--set", f"init.image.digest={DIGEST}", "--set", "operator.image.tag=1.2.3")
check("rendered", objs is not None, err)
want = ("123456789012.dkr.ecr.us-east-1.amazonaws.com/ghcr/dso-dev/dso-operator:1.2.3",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/ghcr/dso-dev/dso-webhook:0.1.0",
        f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ghcr/dso-dev/dso-init@{DIGEST}")
check("mirror for all three, dso-init by digest", objs is not None and images(objs) == want, objs and images(objs))
objs, err = render("--set", f"operator.image.digest={DIGEST}", "--set", "operator.image.tag=9.9.9")
check("operator by digest, the tag unused", objs is not None and images(objs)[0] == f"ghcr.io/dso-dev/dso-operator@{DIGEST}", objs and images(objs))
objs, err = render("--set", "global.imageRegistry=mirror:5000", "--set", "webhook.image.repository=dso-webhook", "--set", f"webhook.image.digest={DIGEST}")
check("a repository without a registry is prefixed", objs is not None and images(objs)[1] == f"mirror:5000/dso-webhook@{DIGEST}", objs and images(objs))
for bad, field in (("operator.image.digest=latest", "digest"), ("global.imageRegistry=https://mirror", "imageRegistry")):
    objs, err = render("--set", bad)
    check(f"{bad} refused", objs is None and field in err, err)

test("resources are free-form per component: any requests, limits or claims; null removes one, or all")
objs, err = render(values="""
operator:
  resources: {requests: {cpu: 100m, memory: 128Mi, ephemeral-storage: 1Gi}, limits: null}
webhook:
  resources: null
""")
check("rendered", objs is not None, err)
if objs:
    r = pod(objs, "dso-operator")["containers"][0]["resources"]
    check("operator: requests only, ephemeral-storage kept", r == {"requests": {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "1Gi"}}, r)
    c = pod(objs, "dso-webhook")["containers"][0]
    check("webhook: null renders no resources", "resources" not in c, c.get("resources"))
objs, err = render("--set", "operator.resources.limits.memory=lots")
check("a quantity that is not one: refused", objs is None and "memory" in err, err)
objs, err = render("--set", "webhook.resources.limit.cpu=1")
check("a misspelt key (limit): refused", objs is None and "limit" in err, err)

test("anti-affinity soft by default, hard on request; affinity given wins")
def anti(objs, comp):
    return pod(objs, comp)["affinity"]["podAntiAffinity"]
objs, err = render()
check("soft: preferred", list(anti(objs, "dso-webhook")) == ["preferredDuringSchedulingIgnoredDuringExecution"], anti(objs, "dso-webhook"))
objs, err = render("--set", "webhook.podAntiAffinity=hard", "--set", "operator.podAntiAffinity=hard")
check("rendered", objs is not None, err)
for comp in ("dso-operator", "dso-webhook"):
    a = anti(objs, comp)
    [term] = a.get("requiredDuringSchedulingIgnoredDuringExecution", [None])
    sel = find(objs, "Deployment", comp)[0]["spec"]["selector"]["matchLabels"]
    check(f"{comp}: required, one per node, its own pods", list(a) == ["requiredDuringSchedulingIgnoredDuringExecution"] and term["topologyKey"] == "kubernetes.io/hostname" and term["labelSelector"]["matchLabels"] == sel, a)
objs, err = render("--set", "webhook.podAntiAffinity=hard", "--set", "webhook.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
                   "--set", "webhook.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists")
check("an affinity given replaces the default", objs is not None and list(pod(objs, "dso-webhook")["affinity"]) == ["nodeAffinity"], objs and pod(objs, "dso-webhook")["affinity"])
objs, err = render("--set", "webhook.podAntiAffinity=always")
check("podAntiAffinity=always refused", objs is None and "podAntiAffinity" in err, err)

test("topologySpreadConstraints: rendered, the component's labels filled in")
objs, err = render(values="""
webhook:
  topologySpreadConstraints:
    - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}
    - {maxSkew: 2, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {team: x}}}
""")
check("rendered", objs is not None, err)
if objs:
    tsc = pod(objs, "dso-webhook")["topologySpreadConstraints"]
    sel = find(objs, "Deployment", "dso-webhook")[0]["spec"]["selector"]["matchLabels"]
    check("zone spread over the webhook's own pods", tsc[0] == {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": sel}}, tsc[0])
    check("a labelSelector given is kept", tsc[1]["labelSelector"] == {"matchLabels": {"team": "x"}}, tsc[1])
    check("operator: none", "topologySpreadConstraints" not in pod(objs, "dso-operator"), pod(objs, "dso-operator").get("topologySpreadConstraints"))
objs, err = render("--set", "operator.topologySpreadConstraints[0].maxSkew=1", "--set", "operator.topologySpreadConstraints[0].topologyKey=zone")
check("without whenUnsatisfiable: refused", objs is None and "whenUnsatisfiable" in err, err)

test("extraVolumes and extraVolumeMounts reach the pod and its container, beside the chart's")
objs, err = render(values="""
operator:
  extraVolumes: [{name: aws-config, configMap: {name: aws-config}}]
  extraVolumeMounts: [{name: aws-config, mountPath: /home/nonroot/.aws, readOnly: true}]
webhook:
  extraVolumes: [{name: scratch, emptyDir: {}}]
  extraVolumeMounts: [{name: scratch, mountPath: /tmp}]
""")
check("rendered", objs is not None, err)
if objs:
    op = pod(objs, "dso-operator")
    check("operator volume", op.get("volumes") == [{"name": "aws-config", "configMap": {"name": "aws-config"}}], op.get("volumes"))
    check("operator mount", op["containers"][0].get("volumeMounts") == [{"name": "aws-config", "mountPath": "/home/nonroot/.aws", "readOnly": True}], op["containers"][0].get("volumeMounts"))
    wh = pod(objs, "dso-webhook")
    # Runtime TLS (the default) has no certificate volume: the extra one is alone.
    check("runtime TLS: webhook gets scratch", [v["name"] for v in wh["volumes"]] == ["scratch"], wh["volumes"])
    check("runtime TLS: webhook mounts /tmp", [m["mountPath"] for m in wh["containers"][0]["volumeMounts"]] == ["/tmp"], wh["containers"][0]["volumeMounts"])
objs, err = render("--set", "webhook.tls.mode=helm", "--set", "webhook.extraVolumes[0].name=scratch", "--set", "webhook.extraVolumes[0].emptyDir.medium=Memory",
                   "--set", "webhook.extraVolumeMounts[0].name=scratch", "--set", "webhook.extraVolumeMounts[0].mountPath=/tmp")
check("rendered (helm TLS)", objs is not None, err)
if objs:
    wh = pod(objs, "dso-webhook")
    check("helm TLS: webhook keeps its tls volume, adds scratch", [v["name"] for v in wh["volumes"]] == ["tls", "scratch"], wh["volumes"])
    check("helm TLS: webhook keeps its tls mount, adds /tmp", [m["mountPath"] for m in wh["containers"][0]["volumeMounts"]] == ["/etc/dso/tls", "/tmp"], wh["containers"][0]["volumeMounts"])
objs, err = render()
check("defaults: the operator has no volumes", "volumes" not in pod(objs, "dso-operator") and "volumeMounts" not in pod(objs, "dso-operator")["containers"][0], pod(objs, "dso-operator"))
objs, err = render("--set", "webhook.extraVolumeMounts[0].name=x")
check("a mount without mountPath: refused", objs is None and "mountPath" in err, err)

test("webhook.hostNetwork: only the webhook on the node's network, on webhook.port; the Service follows")
objs, err = render("--set", "webhook.hostNetwork=true", "--set", "webhook.port=9443")
check("rendered", objs is not None, err)
if objs:
    wh = pod(objs, "dso-webhook")
    check("webhook: hostNetwork, ClusterFirstWithHostNet", wh.get("hostNetwork") is True and wh.get("dnsPolicy") == "ClusterFirstWithHostNet", wh)
    check("operator: pod network", "hostNetwork" not in pod(objs, "dso-operator"), pod(objs, "dso-operator").get("hostNetwork"))
    c = wh["containers"][0]
    check("listens on 9443", "--listen=0.0.0.0:9443" in c["args"], c["args"])
    https = [p for p in c["ports"] if p["name"] == "https"]
    check("container port https is 9443", https == [{"name": "https", "containerPort": 9443, "protocol": "TCP"}], c["ports"])
    [svc] = find(objs, "Service", "dso-webhook")
    port = [p for p in svc["spec"]["ports"] if p["name"] == "https"][0]
    check("the Service targets the port named https", port["targetPort"] == "https", port)
    strategy = find(objs, "Deployment", "dso-webhook")[0]["spec"]["strategy"]
    check("two replicas: one replaced at a time, none added", strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}, strategy)
objs, err = render("--set", "hostNetwork=true", "--set", "webhook.hostNetwork=false", "--set", "webhook.url=https://127.0.0.1:8443/mutate", "--set", "webhook.replicas=1")
check("hostNetwork=true, webhook.hostNetwork=false: the operator only", objs is not None and pod(objs, "dso-operator").get("hostNetwork") is True and "hostNetwork" not in pod(objs, "dso-webhook"), err)
objs, err = render("--set", "webhook.hostNetwork=true", "--set", "webhook.networkPolicy.enabled=true", "--set", "webhook.networkPolicy.from[0].ipBlock.cidr=10.0.0.0/16")
check("with a NetworkPolicy: refused", objs is None and "host network" in err, err)

test("init.caBundle: the webhook is told the ConfigMap and its key")
got = webhook_args()
check("none by default", not [a for a in got if a.startswith("--init-ca-bundle")], got)
got = webhook_args("--set", "init.caBundle.configMap=corp-proxy-ca", "--set", "init.caBundle.key=bundle.pem")
check("--init-ca-bundle-configmap and -key", "--init-ca-bundle-configmap=corp-proxy-ca" in got and "--init-ca-bundle-key=bundle.pem" in got, got)
objs, err = render("--set", "init.caBundle.configMap=Corp_CA")
check("a ConfigMap name that is not one: refused", objs is None and "configMap" in err, err)
test("operator.events: the SQS queue of Secrets Manager change events, and its fallback interval")
def operator_args(objs):
    return pod(objs, "dso-operator")["containers"][0]["args"]
objs, err = render()
check("defaults: no queue flag", objs is not None and not [a for a in operator_args(objs) if a.startswith("--events-")], objs and operator_args(objs))
QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/dso-secret-events"
objs, err = render("--set", f"operator.events.queueUrl={QUEUE}", "--set", "operator.events.fallbackInterval=1h")
args = operator_args(objs) if objs else err
check("queueUrl set: the queue and the fallback interval", objs is not None and f"--events-queue-url={QUEUE}" in args and "--events-fallback-interval=1h" in args, args)
objs, err = render("--set", "operator.events.queueUrl=arn:aws:sqs:eu-west-1:123456789012:dso-secret-events")
check("a queue ARN for its URL: refused, naming queueUrl", objs is None and "queueUrl" in err, err)
objs, err = render("--set", "operator.events.fallbackInterval=30")
check("an interval without unit: refused, naming fallbackInterval", objs is None and "fallbackInterval" in err, err)

test("GitOps: every atomic struct or list spells out the API server's defaults (what is rendered is what is stored)")
# A server-side apply replaces an atomic struct or list as a whole: if the render leaves out a
# default the API server fills in, the stored value differs from the applied one, and a
# server-side apply after a client-side one (Argo CD, `kubectl apply --server-side`) conflicts on
# the whole field. These are the atomic places of the chart's kinds that the API server defaults.
def missing_defaults(o):
    name = f'{o["kind"]}/{o["metadata"]["name"]}'
    missing = []
    if o["kind"] == "ValidatingAdmissionPolicy":
        mc = o["spec"].get("matchConstraints", {})
        missing += [f"{name} matchConstraints.{k}" for k in ("matchPolicy", "namespaceSelector", "objectSelector") if k not in mc]
        missing += [f"{name} matchConstraints.{rules}[{i}].scope" for rules in ("resourceRules", "excludeResourceRules") for i, r in enumerate(mc.get(rules, [])) if "scope" not in r]
    if o["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        missing += [f'{name} webhooks[{w["name"]}].rules[{i}].scope' for w in o["webhooks"] for i, r in enumerate(w.get("rules", [])) if "scope" not in r]
    if o["kind"] == "NetworkPolicy":
        missing += [f"{name} {way}[{i}].ports[{j}].protocol" for way in ("ingress", "egress") for i, r in enumerate(o["spec"].get(way, [])) for j, p in enumerate(r.get("ports", [])) if "protocol" not in p]
    if o["kind"] == "Deployment":
        spec = o["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            missing += [f'{name} container {c["name"]} env {e["name"]} fieldRef.apiVersion' for e in c.get("env", []) if "fieldRef" in e.get("valueFrom", {}) and "apiVersion" not in e["valueFrom"]["fieldRef"]]
    return missing
for label, args in (
    ("defaults", ()),
    ("values-local.yaml (the e2e render)", ("-f", str(repo / "charts/dso/values-local.yaml"))),
    ("cert-manager, NetworkPolicy with metrics peers", ("--set", "webhook.tls.mode=certManager", "--set", "webhook.networkPolicy.enabled=true", "--set", "webhook.networkPolicy.from[0].ipBlock.cidr=10.0.0.0/16", "--set", "webhook.networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=obs")),
):
    objs, err = render(*args)
    check(f"{label}: rendered", objs is not None, err)
    missing = [m for o in objs or [] for m in missing_defaults(o)]
    check(f"{label}: no default left to the API server", not missing, missing)
    if label == "defaults":
        kinds = {o["kind"] for o in objs or []}
        check("defaults render the kinds checked", {"ValidatingAdmissionPolicy", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "Deployment"} <= kinds, kinds)

if failures:
    print("chart template tests failed:\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)
print("[render] all template tests passed")
