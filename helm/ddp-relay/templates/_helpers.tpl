{{/*
Names and labels.
*/}}
{{- define "ddp-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ddp-relay.fullname" -}}
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

{{- define "ddp-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Relay pods carry component "relay" and the migration Job's pod "migrate", so the Service,
the PodDisruptionBudget and the Deployment never select the Job's pod.
*/}}
{{- define "ddp-relay.instanceLabels" -}}
app.kubernetes.io/name: {{ include "ddp-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ddp-relay.selectorLabels" -}}
{{ include "ddp-relay.instanceLabels" . }}
app.kubernetes.io/component: relay
{{- end }}

{{- define "ddp-relay.commonLabels" -}}
helm.sh/chart: {{ include "ddp-relay.chart" . }}
{{ include "ddp-relay.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ddp-relay.labels" -}}
{{ include "ddp-relay.commonLabels" . }}
app.kubernetes.io/component: relay
{{- end }}

{{/*
The web tier (component "web") and the bundled ZooKeeper (component "zookeeper") have
selectors of their own, disjoint from the relays', so no Service, PDB or NetworkPolicy
of one ever picks the pods of another.
*/}}
{{- define "ddp-relay.webSelectorLabels" -}}
{{ include "ddp-relay.instanceLabels" . }}
app.kubernetes.io/component: web
{{- end }}

{{- define "ddp-relay.webLabels" -}}
{{ include "ddp-relay.commonLabels" . }}
app.kubernetes.io/component: web
{{- end }}

{{- define "ddp-relay.zookeeperSelectorLabels" -}}
{{ include "ddp-relay.instanceLabels" . }}
app.kubernetes.io/component: zookeeper
{{- end }}

{{- define "ddp-relay.zookeeperLabels" -}}
{{ include "ddp-relay.commonLabels" . }}
app.kubernetes.io/component: zookeeper
{{- end }}

{{- define "ddp-relay.webFullname" -}}
{{- printf "%s-web" (include "ddp-relay.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ddp-relay.zookeeperFullname" -}}
{{- printf "%s-zookeeper" (include "ddp-relay.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "ddp-relay.zookeeperHeadless" -}}
{{- printf "%s-headless" (include "ddp-relay.zookeeperFullname" .) }}
{{- end }}

{{- define "ddp-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ddp-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ddp-relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep and gunicorn's graceful drain both run
inside it, so it must exceed their sum. Default: their sum + 10 s.
*/}}
{{- define "ddp-relay.terminationGracePeriodSeconds" -}}
{{- $drain := add (int64 .Values.preStopSleepSeconds) (int64 .Values.relay.gracefulTimeout) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain 10 }}
{{- else if le (int64 .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds + relay.gracefulTimeout (%d)" (int64 .Values.terminationGracePeriodSeconds) $drain) }}
{{- else }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
A value as a ConfigMap string: integers without Helm's float64 exponent form
(8388608 would otherwise render as 8.388608e+06), whole floats as integers.
*/}}
{{- define "ddp-relay.int" -}}
{{- int64 . | toString | quote }}
{{- end }}

{{- define "ddp-relay.number" -}}
{{- if eq (float64 .) (float64 (int64 .)) }}
{{- int64 . | toString | quote }}
{{- else }}
{{- float64 . | toString | quote }}
{{- end }}
{{- end }}

{{/*
Database URLs. DATABASE_URL comes from database.existingSecret, else from the chart's own
Secret (database.url). RELAY_DATABASE_URL (the change stream's URL) comes from
database.existingSecret's key database.changeStreamSecretKey, else from the chart's Secret
(relay.databaseUrl), else it is not set at all (the relay then uses DATABASE_URL).
*/}}
{{- define "ddp-relay.chartSecretName" -}}
{{- printf "%s-database" (include "ddp-relay.fullname" .) }}
{{- end }}

{{- define "ddp-relay.databaseSecretName" -}}
{{- .Values.database.existingSecret | default (include "ddp-relay.chartSecretName" .) }}
{{- end }}

{{/* "existing", "chart" or "" (RELAY_DATABASE_URL not set). */}}
{{- define "ddp-relay.changeStreamSource" -}}
{{- if and .Values.database.existingSecret .Values.database.changeStreamSecretKey }}
{{- "existing" }}
{{- else if .Values.relay.databaseUrl }}
{{- "chart" }}
{{- end }}
{{- end }}

{{/* "true" when the chart renders a Secret of its own. */}}
{{- define "ddp-relay.chartSecretEnabled" -}}
{{- if or (not .Values.database.existingSecret) (eq (include "ddp-relay.changeStreamSource" .) "chart") }}
{{- "true" }}
{{- end }}
{{- end }}

{{- define "ddp-relay.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ddp-relay.databaseSecretName" . }}
      key: {{ .Values.database.secretKey }}
{{- $source := include "ddp-relay.changeStreamSource" . }}
{{- if $source }}
- name: RELAY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if eq $source "existing" }}
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.changeStreamSecretKey }}
      {{- else }}
      name: {{ include "ddp-relay.chartSecretName" . }}
      key: RELAY_DATABASE_URL
      {{- end }}
{{- end }}
{{- end }}

{{/*
Checks shared by every template that needs a database.
*/}}
{{- define "ddp-relay.validateDatabase" -}}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) }}
{{- fail "set database.existingSecret (production) or database.url (development)" }}
{{- end }}
{{- if and .Values.database.changeStreamSecretKey (not .Values.database.existingSecret) }}
{{- fail "database.changeStreamSecretKey is a key of database.existingSecret: set that too (or use relay.databaseUrl)" }}
{{- end }}
{{- end }}

{{/*
The relays' internal port (metrics and health) or, when relay.internalPort is 0 (one
port for everything, as `make run`), the public one: what probes and scrapers use.
*/}}
{{- define "ddp-relay.internalEnabled" -}}
{{- if gt (int64 .Values.relay.internalPort) 0 }}{{ "true" }}{{ end }}
{{- end }}

{{- define "ddp-relay.healthPortName" -}}
{{- if include "ddp-relay.internalEnabled" . }}internal{{ else }}http{{ end }}
{{- end }}

{{- define "ddp-relay.healthPortNumber" -}}
{{- if include "ddp-relay.internalEnabled" . }}{{ int64 .Values.relay.internalPort }}{{ else }}{{ int64 .Values.containerPort }}{{ end }}
{{- end }}

{{/* The WSGI app the relays serve: none when the web tier serves it. */}}
{{- define "ddp-relay.relayWsgiApp" -}}
{{- if .Values.web.enabled }}{{ "" }}{{ else }}{{ .Values.relay.wsgiApp }}{{ end }}
{{- end }}

{{/*
ZooKeeper. RELAY_ZOOKEEPER is coordinator.zookeeper.hosts (an external ensemble) or the
bundled ensemble's client Service (its TLS port when coordinator.zookeeper.tls.enabled).
*/}}
{{- define "ddp-relay.zookeeperConnect" -}}
{{- $zk := .Values.coordinator.zookeeper }}
{{- if $zk.hosts }}
{{- $zk.hosts }}
{{- else if .Values.zookeeper.bundled.enabled }}
{{- $port := ternary .Values.zookeeper.bundled.ports.secureClient .Values.zookeeper.bundled.ports.client $zk.tls.enabled }}
{{- printf "%s.%s.svc:%d" (include "ddp-relay.zookeeperFullname" .) .Release.Namespace (int64 $port) }}
{{- end }}
{{- end }}

{{- define "ddp-relay.zookeeperTlsSecret" -}}
{{- .Values.zookeeper.bundled.tls.existingSecret | default .Values.coordinator.zookeeper.tls.existingSecret }}
{{- end }}

{{/* A mounted file of the TLS Secret, or "" when its key is "". */}}
{{- define "ddp-relay.zookeeperTlsFile" -}}
{{- if and .root.Values.coordinator.zookeeper.tls.enabled .key }}
{{- printf "%s/%s" (trimSuffix "/" .root.Values.coordinator.zookeeper.tls.mountPath) .key }}
{{- end }}
{{- end }}

{{/*
DJANGO_SECRET_KEY: django.existingSecret (production), django.secretKey (the chart's
Secret; development), or an extraEnv entry of that name. The chart adds its own env entry
only for the first two.
*/}}
{{- define "ddp-relay.djangoSecretName" -}}
{{- printf "%s-django" (include "ddp-relay.fullname" .) }}
{{- end }}

{{- define "ddp-relay.secretKeyInExtraEnv" -}}
{{- range .Values.extraEnv }}{{ if eq (toString .name) "DJANGO_SECRET_KEY" }}{{ "true" }}{{ end }}{{ end }}
{{- end }}

{{- define "ddp-relay.djangoEnv" -}}
{{- if .Values.django.existingSecret }}
- name: DJANGO_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.django.existingSecret }}
      key: {{ .Values.django.existingSecretKey }}
{{- else if .Values.django.secretKey }}
- name: DJANGO_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "ddp-relay.djangoSecretName" . }}
      key: DJANGO_SECRET_KEY
{{- end }}
{{- end }}

{{/* How many relay pods there can be: what the coordinator check counts. */}}
{{- define "ddp-relay.maxRelays" -}}
{{- if .Values.autoscaling.enabled }}{{ int64 .Values.autoscaling.maxReplicas }}{{ else }}{{ int64 .Values.replicaCount }}{{ end }}
{{- end }}

{{/* The fewest relay pods there can be: what the PDB check counts. */}}
{{- define "ddp-relay.minRelays" -}}
{{- if .Values.autoscaling.enabled }}{{ int64 .Values.autoscaling.minReplicas }}{{ else }}{{ int64 .Values.replicaCount }}{{ end }}
{{- end }}

{{- define "ddp-relay.minWeb" -}}
{{- if .Values.web.autoscaling.enabled }}{{ int64 .Values.web.autoscaling.minReplicas }}{{ else }}{{ int64 .Values.web.replicaCount }}{{ end }}
{{- end }}

{{/*
A PDB that no eviction can ever satisfy blocks every node drain (and so every cluster
upgrade) until someone deletes it. dict "name" "pdb" "replicas".
*/}}
{{- define "ddp-relay.validatePdb" -}}
{{- $pdb := .pdb }}
{{- if $pdb.enabled }}
{{- if not (kindIs "invalid" $pdb.minAvailable) }}
{{- $min := toString $pdb.minAvailable }}
{{- if hasSuffix "%" $min }}
{{- if ge (int64 (trimSuffix "%" $min)) 100 }}
{{- fail (printf "%s.minAvailable %s blocks every drain: no pod may ever be evicted. Lower it or use maxUnavailable" .name $min) }}
{{- end }}
{{- else if ge (int64 $min) (int64 .replicas) }}
{{- fail (printf "%s.minAvailable (%s) is not below the replica count (%d): it blocks every drain, no pod may ever be evicted. Lower it or add replicas" .name $min (int64 .replicas)) }}
{{- end }}
{{- else if kindIs "invalid" $pdb.maxUnavailable }}
{{- fail (printf "%s: set maxUnavailable or minAvailable" .name) }}
{{- else if eq (trimSuffix "%" (toString $pdb.maxUnavailable)) "0" }}
{{- fail (printf "%s.maxUnavailable 0 blocks every drain: no pod may ever be evicted. Use 1 (or more)" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds of the web tier: the preStop sleep and gunicorn's default
graceful timeout (30 s) + 10 s.
*/}}
{{- define "ddp-relay.webTerminationGracePeriodSeconds" -}}
{{- .Values.web.terminationGracePeriodSeconds | default (add (int64 .Values.preStopSleepSeconds) 40) | int64 }}
{{- end }}

{{/*
The HPA's scale-down period: at most one relay per period, and a period no shorter than a
relay's drain (terminationGracePeriodSeconds), so the next pod is only taken once the
previous one's sessions have moved.
*/}}
{{- define "ddp-relay.scaleDownPeriod" -}}
{{- $grace := int64 (include "ddp-relay.terminationGracePeriodSeconds" .) }}
{{- $period := .Values.autoscaling.scaleDown.periodSeconds }}
{{- if kindIs "invalid" $period }}
{{- $period = $grace }}
{{- else if lt (int64 $period) $grace }}
{{- fail (printf "autoscaling.scaleDown.periodSeconds (%d) is shorter than a relay's drain (terminationGracePeriodSeconds %d): scale-down would take the next pod before the previous one's sessions moved" (int64 $period) $grace) }}
{{- end }}
{{- if gt (int64 $period) 1800 }}
{{- fail (printf "autoscaling.scaleDown.periodSeconds would be %d: an HPA policy period is at most 1800 s; shorten terminationGracePeriodSeconds" (int64 $period)) }}
{{- end }}
{{- int64 $period }}
{{- end }}

{{/*
Default topology spread: across zones and across nodes, both ScheduleAnyway (a zone or
node short of capacity must not stop a rollout); matchLabelKeys pod-template-hash so a
rolling update spreads the new ReplicaSet's pods, not old and new together.
dict "root" . "selector" (selector labels as YAML) "value" (the user's list or null).
*/}}
{{- define "ddp-relay.topologySpread" -}}
{{- if kindIs "invalid" .value }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- .selector | nindent 8 }}
    {{- if .rolling }}
    matchLabelKeys: ["pod-template-hash"]
    {{- end }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- .selector | nindent 8 }}
    {{- if .rolling }}
    matchLabelKeys: ["pod-template-hash"]
    {{- end }}
{{- else if .value }}
topologySpreadConstraints:
  {{- toYaml .value | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The combinations the chart refuses, each with what to do instead. Included by the relay
Deployment, which every release renders.
*/}}
{{- define "ddp-relay.validate" -}}
{{- include "ddp-relay.validateDatabase" . }}
{{- /* DJANGO_SECRET_KEY */ -}}
{{- $inExtra := include "ddp-relay.secretKeyInExtraEnv" . }}
{{- if and (not .Values.django.secretKey) (not .Values.django.existingSecret) (not $inExtra) }}
{{- fail "no DJANGO_SECRET_KEY: set django.existingSecret (a Secret holding it under django.existingSecretKey; production) or django.secretKey (development). Relays and the web tier must share one key (sessions, password reset tokens)" }}
{{- end }}
{{- if and $inExtra (or .Values.django.secretKey .Values.django.existingSecret) }}
{{- fail "DJANGO_SECRET_KEY is set twice: in extraEnv and in django.secretKey/django.existingSecret. Keep one" }}
{{- end }}
{{- /* A shared coordinator for several relays */ -}}
{{- $zk := .Values.coordinator.zookeeper }}
{{- if and $zk.hosts .Values.zookeeper.bundled.enabled }}
{{- fail "coordinator.zookeeper.hosts (an external ensemble) and zookeeper.bundled.enabled are both set: choose one (set zookeeper.bundled.enabled=false to use the external ensemble)" }}
{{- end }}
{{- $shared := or $zk.hosts .Values.zookeeper.bundled.enabled }}
{{- $resume := ne (float64 .Values.relay.resumeWindow) 0.0 }}
{{- if and (ge (int64 (include "ddp-relay.maxRelays" .)) 2) (not $shared) $resume }}
{{- fail (printf "%s relays without a shared coordinator: a client resuming on another pod would get a new session. Set coordinator.zookeeper.hosts (an external ZooKeeper), or zookeeper.bundled.enabled=true, or run one relay (replicaCount=1, no autoscaling), or turn resuming off (relay.resumeWindow=0)" (include "ddp-relay.maxRelays" .)) }}
{{- end }}
{{- if and (or $zk.tls.enabled $zk.digest.existingSecret) (not $shared) }}
{{- fail "coordinator.zookeeper.tls or .digest is set but there is no ZooKeeper: set coordinator.zookeeper.hosts or zookeeper.bundled.enabled=true" }}
{{- end }}
{{- if and (include "ddp-relay.internalEnabled" .) (eq (int64 .Values.relay.internalPort) (int64 .Values.containerPort)) }}
{{- fail (printf "relay.internalPort (%d) must differ from containerPort: it is a second listener" (int64 .Values.relay.internalPort)) }}
{{- end }}
{{- if and $zk.tls.enabled (not $zk.tls.existingSecret) }}
{{- fail "coordinator.zookeeper.tls.enabled needs coordinator.zookeeper.tls.existingSecret (a Secret with the CA under tls.caKey)" }}
{{- end }}
{{- if and $zk.tls.enabled (not $zk.tls.caKey) }}
{{- fail "coordinator.zookeeper.tls.caKey is empty: the relays need the CA that signed ZooKeeper's certificate" }}
{{- end }}
{{- if ne (empty $zk.tls.certKey) (empty $zk.tls.keyKey) }}
{{- fail "coordinator.zookeeper.tls.certKey and keyKey go together (a client certificate and its key), or both empty" }}
{{- end }}
{{- if and $zk.digest.existingSecret (not $zk.digest.key) }}
{{- fail "coordinator.zookeeper.digest.key is empty: the key of \"user:password\" in coordinator.zookeeper.digest.existingSecret" }}
{{- end }}
{{- /* The load balancer */ -}}
{{- $ing := .Values.ingress }}
{{- if and $ing.enabled (eq $ing.className "alb") }}
{{- $idle := float64 $ing.alb.idleTimeoutSeconds }}
{{- range $name, $seconds := dict "relay.heartbeatInterval" .Values.relay.heartbeatInterval "relay.sockjsHeartbeat" .Values.relay.sockjsHeartbeat }}
{{- if le $idle (float64 $seconds) }}
{{- fail (printf "ingress.alb.idleTimeoutSeconds (%v) must be above %s (%v): the ALB would close idle DDP sockets before the heartbeat keeps them open" $ing.alb.idleTimeoutSeconds $name $seconds) }}
{{- end }}
{{- end }}
{{- if and (eq $ing.alb.targetType "instance") (eq .Values.service.type "ClusterIP") }}
{{- fail "ingress.alb.targetType instance needs a NodePort (or LoadBalancer) Service, and service.type is ClusterIP: the ALB would have no node port to send to. Use targetType ip (the default) or service.type NodePort" }}
{{- end }}
{{- if and (eq $ing.alb.targetType "instance") .Values.web.enabled (eq .Values.web.service.type "ClusterIP") }}
{{- fail "ingress.alb.targetType instance needs a NodePort (or LoadBalancer) Service, and web.service.type is ClusterIP. Use targetType ip (the default) or web.service.type NodePort" }}
{{- end }}
{{- end }}
{{- /* Drains */ -}}
{{- include "ddp-relay.validatePdb" (dict "name" "podDisruptionBudget" "pdb" .Values.podDisruptionBudget "replicas" (include "ddp-relay.minRelays" .)) }}
{{- if .Values.web.enabled }}
{{- include "ddp-relay.validatePdb" (dict "name" "web.podDisruptionBudget" "pdb" .Values.web.podDisruptionBudget "replicas" (include "ddp-relay.minWeb" .)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int64 .Values.autoscaling.minReplicas) (int64 .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas is above autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
{{- /* NetworkPolicy */ -}}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.ingressControllers) }}
{{- fail "networkPolicy.enabled with an empty networkPolicy.ingressControllers: nothing could reach the relays' public port. List the load balancer's peers (the VPC subnets of the ALB as ipBlock, or the ingress controller's namespace/pod selectors)" }}
{{- end }}
{{- end }}

{{/* NetworkPolicy egress rules shared by the relays, the web tier and the Job. */}}
{{- define "ddp-relay.npDns" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns.peers | nindent 4 }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}
{{- define "ddp-relay.npPostgres" -}}
- {{- with .Values.networkPolicy.postgres.peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- range .Values.networkPolicy.postgres.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
