{{/*
Names are cut to 63 characters (the DNS label limit of many Kubernetes name fields and of
label values) and never end with "-".
*/}}
{{- define "asgi-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "asgi-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "asgi-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release. helm.sh/chart and the version change on
every upgrade, and a Deployment's selector is immutable, so they are kept out of it.
*/}}
{{- define "asgi-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asgi-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "asgi-operator.labels" -}}
helm.sh/chart: {{ include "asgi-operator.chart" . }}
{{ include "asgi-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: asgi-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "asgi-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "asgi-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "asgi-operator.peeringName" -}}
{{- default (include "asgi-operator.fullname" .) .Values.peering.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "asgi-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "asgi-operator.sidecarImage" -}}
{{- default (printf "asgi-dev/asgi-sidecar:%s" .Chart.AppVersion) .Values.sidecarImage }}
{{- end }}

{{/*
The webhook's Service and Certificate: "<fullname>-webhook", with the full name cut so that
it stays a DNS label (the Service name is one). The Secret adds "-tls" (Secret names may be
longer).
*/}}
{{- define "asgi-operator.webhookName" -}}
{{- printf "%s-webhook" (include "asgi-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "asgi-operator.webhookSecretName" -}}
{{- printf "%s-tls" (include "asgi-operator.webhookName" .) }}
{{- end }}

{{/* The operator's own certificates: no cert-manager. */}}
{{- define "asgi-operator.webhookSelfManaged" -}}
{{- if and .Values.webhook.enabled (not .Values.webhook.certManager.enabled) }}true{{ end }}
{{- end }}

{{/*
The namespaces whose Pods the webhook is sent with watchNamespaces, as a JSON list: the
watched ones but the release namespace, sorted (as asgi_operator.admission's builder does).
*/}}
{{- define "asgi-operator.webhookNamespaces" -}}
{{- without (.Values.watchNamespaces | uniq | sortAlpha) .Release.Namespace | toJson }}
{{- end }}

{{/* The PodDisruptionBudget: auto means only with more than one Pod to keep. */}}
{{- define "asgi-operator.webhookPdbEnabled" -}}
{{- $enabled := .Values.webhook.podDisruptionBudget.enabled }}
{{- if and .Values.webhook.enabled (eq (toString $enabled) "auto") }}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- else if and .Values.webhook.enabled (eq (toString $enabled) "true") }}true
{{- end }}
{{- end }}

{{/* Two operators without peering would both reconcile every AsgiServer. */}}
{{- define "asgi-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 needs peering.enabled=true: operators without peering would both reconcile" }}
{{- end }}
{{- if and .Values.monitoring.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "monitoring.serviceMonitor.enabled needs metrics.service.enabled=true" }}
{{- end }}
{{- if and .Values.webhook.enabled .Values.watchNamespaces (eq (include "asgi-operator.webhookNamespaces" .) "[]") }}
{{- fail "webhook.enabled with watchNamespaces holding only the release namespace: the webhook would serve no namespace (the release namespace's Pods are never sent to it); watch another namespace, or set webhook.enabled=false" }}
{{- end }}
{{- if and .Values.monitoring.podMonitor.enabled (not .Values.webhook.enabled) }}
{{- fail "monitoring.podMonitor.enabled needs webhook.enabled=true: it scrapes the Pods the webhook injects" }}
{{- end }}
{{- end }}

{{/*
The Pod template of the operator, shared by the Deployment (standalone) and the StatefulSet
(peering: each Pod's priority is its ordinal, from the apps.kubernetes.io/pod-index label,
because kopf pauses every operator of a peering that sees another one of the same priority).
*/}}
{{- define "asgi-operator.podTemplate" -}}
metadata:
  labels:
    {{- include "asgi-operator.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "asgi-operator.serviceAccountName" . }}
  automountServiceAccountToken: true
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: operator
      image: {{ include "asgi-operator.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - run
        {{- if .Values.watchNamespaces }}
        {{- range .Values.watchNamespaces }}
        - --namespace={{ . }}
        {{- end }}
        {{- else }}
        - --all-namespaces
        {{- end }}
        - --sidecar-image={{ include "asgi-operator.sidecarImage" . }}
        - --native-sidecars={{ .Values.nativeSidecars }}
        {{- if .Values.peering.enabled }}
        - --peering={{ include "asgi-operator.peeringName" . }}
        - --priority=$(POD_INDEX)
        {{- end }}
        - --liveness=http://0.0.0.0:{{ .Values.liveness.port }}/healthz
        - --metrics-port={{ .Values.metrics.port }}
        - --log-format={{ .Values.logFormat }}
        - --resync-seconds={{ .Values.resyncSeconds }}
        {{- if .Values.webhook.enabled }}
        - --webhook-port={{ .Values.webhook.port }}
        - --webhook-configuration={{ include "asgi-operator.fullname" . }}
        - --webhook-service={{ .Release.Namespace }}/{{ include "asgi-operator.webhookName" . }}
        {{- if .Values.webhook.certManager.enabled }}
        # cert-manager's Secret, mounted; the operator reloads the files when it renews them.
        - --webhook-cert-dir=/etc/asgi-operator/webhook-tls
        {{- else }}
        # The operator keeps its own CA and certificate in this Secret.
        - --webhook-secret={{ .Release.Namespace }}/{{ include "asgi-operator.webhookSecretName" . }}
        - --webhook-cert-days={{ .Values.webhook.certDays }}
        {{- end }}
        {{- end }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- if or .Values.peering.enabled .Values.extraEnv }}
      env:
        # kopf names the operator after its Pod (peering, logs); without it kopf asks the
        # system for the user name, and uid 65532 has none in a slim image.
        - name: POD_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- if .Values.peering.enabled }}
        - name: POD_INDEX
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      ports:
        - name: healthz
          containerPort: {{ .Values.liveness.port }}
          protocol: TCP
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
        {{- if .Values.webhook.enabled }}
        - name: webhook
          containerPort: {{ .Values.webhook.port }}
          protocol: TCP
        {{- end }}
      {{- if .Values.webhook.enabled }}
      # Ready once the webhook serves TLS: the webhook Service sends the API server's calls
      # only to ready Pods (the kubelet does not verify the certificate).
      readinessProbe:
        httpGet:
          scheme: HTTPS
          path: /healthz
          port: webhook
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 3
      {{- end }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: healthz
        initialDelaySeconds: 10
        periodSeconds: {{ .Values.liveness.periodSeconds }}
        timeoutSeconds: 5
        failureThreshold: {{ .Values.liveness.failureThreshold }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if and .Values.webhook.enabled .Values.webhook.certManager.enabled }}
        - name: webhook-tls
          mountPath: /etc/asgi-operator/webhook-tls
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if and .Values.webhook.enabled .Values.webhook.certManager.enabled }}
    # tls.crt and tls.key of the Certificate in webhook-certificates.yaml.
    - name: webhook-tls
      secret:
        secretName: {{ include "asgi-operator.webhookSecretName" . }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
Rules on namespaced resources: granted cluster-wide by the ClusterRole, or by a Role in each
of .Values.watchNamespaces. Each one was found needed by running the operator under exactly
this identity against a real API server (tests/integration/test_chart.py proves it, and that
dropping any one rule breaks the operator).
*/}}
{{- define "asgi-operator.namespacedRules" -}}
# The AsgiServers: kopf lists and watches them, and patches them to keep its progress and
# last-handled state in annotations (asgi.dev/...); the webhook gets the one a Pod's
# asgi.dev/inject label names.
- apiGroups: [asgi.dev]
  resources: [asgiservers]
  verbs: [get, list, watch, patch]
# Status (conditions, effective settings, autotuning state).
- apiGroups: [asgi.dev]
  resources: [asgiservers/status]
  verbs: [patch]
# Children, written with server-side apply (a patch, and create when the object is new) and
# watched to reconcile on change; the Deployment is also read for the rollout state.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [list, watch, create, patch]
# spec.targetRef (an attached workload) names a Deployment (read with the rule above) or a
# StatefulSet: read, never written, for the Injected condition (does its pod template opt
# in?); the Service list above also tells whether the user's own Services bypass the proxy.
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get]
# The optional PodDisruptionBudget (spec.disruptionBudget), applied like the others, and
# deleted when it is turned off or the replicas drop to one.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create, patch, delete]
# Pods: readiness, sysctl failures, and the Pod IPs the autotuner scrapes; patched with the
# annotation asgi.dev/config-hash, which makes each kubelet refresh the sidecar's ConfigMap
# at once instead of on its periodic sync (about a minute).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]
# Warning Events on AsgiServers (the operator's and kopf's own).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
