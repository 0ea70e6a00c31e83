{{/* Names, labels and shared pod settings of the DSO chart. */}}

{{- define "dso.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dso.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dso.operator.fullname" -}}{{ include "dso.fullname" . }}-operator{{- end -}}
{{- define "dso.webhook.fullname" -}}{{ include "dso.fullname" . }}-webhook{{- end -}}
{{- define "dso.webhook.tlsSecret" -}}{{ include "dso.fullname" . }}-webhook-tls{{- end -}}
{{- /* runtime mode's Secret: another name than helm mode's kubernetes.io/tls one, whose type
cannot change, so switching modes is a plain upgrade. */ -}}
{{- define "dso.webhook.certsSecret" -}}{{ include "dso.fullname" . }}-webhook-certs{{- end -}}

{{/* The webhook's TLS mode: runtime, helm or certManager (certManager.enabled wins). */}}
{{- define "dso.webhook.tlsMode" -}}
{{- $tls := .Values.webhook.tls -}}
{{- if $tls.certManager.enabled -}}
certManager
{{- else if has $tls.mode (list "runtime" "helm" "certManager") -}}
{{- $tls.mode -}}
{{- else -}}
{{- fail (printf "webhook.tls.mode: %q is not one of runtime, helm, certManager" $tls.mode) -}}
{{- end -}}
{{- end -}}

{{/* A component's ServiceAccount: the chart's (default name <fullname>-<component>), or an
existing one named by serviceAccount.name when serviceAccount.create is false. */}}
{{- define "dso.operator.serviceAccountName" -}}
{{- $sa := .Values.operator.serviceAccount -}}
{{- if $sa.create -}}
{{- default (include "dso.operator.fullname" .) $sa.name -}}
{{- else -}}
{{- if $sa.roleArn -}}
{{- fail "operator.serviceAccount.roleArn is only applied to a ServiceAccount the chart creates: with operator.serviceAccount.create=false, annotate your own ServiceAccount (eks.amazonaws.com/role-arn) and leave roleArn empty" -}}
{{- end -}}
{{- required "operator.serviceAccount.name: the name of your existing ServiceAccount is required when operator.serviceAccount.create is false" $sa.name -}}
{{- end -}}
{{- end -}}
{{- define "dso.webhook.serviceAccountName" -}}
{{- $sa := .Values.webhook.serviceAccount -}}
{{- if $sa.create -}}
{{- default (include "dso.webhook.fullname" .) $sa.name -}}
{{- else -}}
{{- required "webhook.serviceAccount.name: the name of your existing ServiceAccount is required when webhook.serviceAccount.create is false" $sa.name -}}
{{- end -}}
{{- end -}}

{{- define "dso.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "dso.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dso
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "webhook") */}}
{{- define "dso.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dso.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dso.componentLabels" -}}
{{ include "dso.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: (dict "ctx" $ "image" .Values.operator.image). global.imageRegistry
replaces the repository's registry (its first part when that has a dot or a port, or is
localhost; else it is prefixed); a digest pins the image (repository@digest, the tag unused). */}}
{{- define "dso.image" -}}
{{- $repo := .image.repository -}}
{{- with (.ctx.Values.global).imageRegistry -}}
{{- $parts := splitn "/" 2 $repo -}}
{{- if and $parts._1 (or (contains "." $parts._0) (contains ":" $parts._0) (eq $parts._0 "localhost")) -}}
{{- $repo = $parts._1 -}}
{{- end -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Default affinity: replicas on different nodes, preferred (podAntiAffinity: soft) or
required (hard). (dict "ctx" $ "component" "x" "affinity" {} "antiAffinity" "soft") */}}
{{- define "dso.affinity" -}}
{{- if .affinity -}}
{{ toYaml .affinity }}
{{- else if eq .antiAffinity "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "dso.selectorLabels" . | nindent 10 }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "dso.selectorLabels" . | nindent 12 }}
{{- end -}}
{{- end -}}

{{/* topologySpreadConstraints, each without a labelSelector given the component's pods.
(dict "ctx" $ "component" "x" "constraints" list) */}}
{{- define "dso.topologySpread" -}}
{{- $out := list -}}
{{- range .constraints -}}
{{- $c := deepCopy . -}}
{{- if not $c.labelSelector -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "dso.selectorLabels" $ | fromYaml)) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Whether the webhook runs on the node's network: webhook.hostNetwork, else hostNetwork. */}}
{{- define "dso.webhook.hostNetwork" -}}
{{- if kindIs "invalid" .Values.webhook.hostNetwork -}}
{{- if .Values.hostNetwork }}true{{ end -}}
{{- else if .Values.webhook.hostNetwork -}}
true
{{- end -}}
{{- end -}}

{{/* Host of the webhook URL, when it is registered by URL. */}}
{{- define "dso.webhook.urlHost" -}}
{{- if .Values.webhook.url -}}
{{- $u := urlParse .Values.webhook.url -}}
{{- regexReplaceAll ":[0-9]+$" (get $u "host") "" | trimPrefix "[" | trimSuffix "]" -}}
{{- end -}}
{{- end -}}

{{/* The serving certificate's SANs, as JSON {"dns": [...], "ips": [...]}. */}}
{{- define "dso.webhook.sans" -}}
{{- $svc := include "dso.webhook.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $ips := list -}}
{{- $host := include "dso.webhook.urlHost" . -}}
{{- if $host -}}
{{- if regexMatch "^[0-9.]+$|:" $host -}}
{{- $ips = append $ips $host -}}
{{- else -}}
{{- $dns = append $dns $host -}}
{{- end -}}
{{- end -}}
{{- $dns = concat $dns .Values.webhook.tls.extraDnsNames | uniq -}}
{{- $ips = concat $ips .Values.webhook.tls.extraIpAddresses | uniq -}}
{{- dict "dns" $dns "ips" $ips | toJson -}}
{{- end -}}

{{/* Changes exactly when the generated certificate must be regenerated (its names change). */}}
{{- define "dso.webhook.sansHash" -}}
{{- include "dso.webhook.sans" . | fromJson | toJson | sha256sum | trunc 16 -}}
{{- end -}}

{{/* The secret allowlist's pod pieces (templates/secret-allowlist.yaml), when one is set. */}}
{{- define "dso.allowlist.annotation" -}}
{{- with .Values.secretAllowlist }}
checksum/secret-allowlist: {{ toYaml . | sha256sum | quote }}
{{- end }}
{{- end -}}
{{- define "dso.allowlist.arg" -}}
{{- if .Values.secretAllowlist }}
- --secret-allowlist=/etc/dso/allowlist/allowlist.yaml
{{- end }}
{{- end -}}
{{- define "dso.allowlist.mount" -}}
{{- if .Values.secretAllowlist }}
- name: secret-allowlist
  mountPath: /etc/dso/allowlist
  readOnly: true
{{- end }}
{{- end -}}
{{- define "dso.allowlist.volume" -}}
{{- if .Values.secretAllowlist }}
- name: secret-allowlist
  configMap:
    name: {{ include "dso.fullname" . }}-secret-allowlist
{{- end }}
{{- end -}}
