{{/* Chart name, truncated to a DNS label. */}}
{{- define "wsgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name. */}}
{{- define "wsgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wsgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wsgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wsgate.labels" -}}
helm.sh/chart: {{ include "wsgate.chart" . }}
{{ include "wsgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "wsgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wsgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wsgate.secretName" -}}
{{- default (include "wsgate.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "wsgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Where the config file and the optional JWT public key are mounted. */}}
{{- define "wsgate.configDir" -}}/etc/wsgate{{- end -}}

{{/* auth.mode from the config (wsgate's default is "none"). */}}
{{- define "wsgate.authMode" -}}
{{- dig "auth" "mode" "none" (.Values.config | default dict) -}}
{{- end -}}

{{/* auth.allow_insecure from the config. */}}
{{- define "wsgate.allowInsecure" -}}
{{- $v := dig "auth" "allow_insecure" false (.Values.config | default dict) -}}
{{- if has (toString $v | lower) (list "true" "1" "yes" "on") -}}true{{- end -}}
{{- end -}}

{{/* True when the pod needs an HS256 secret: auth.mode jwt without a public key. */}}
{{- define "wsgate.needsJwtSecret" -}}
{{- $jwt := dig "auth" "jwt" dict (.Values.config | default dict) -}}
{{- if and (eq (include "wsgate.authMode" .) "jwt") (not .Values.jwtPublicKey) (not (hasKey $jwt "public_key_file")) -}}true{{- end -}}
{{- end -}}

{{/*
The wsgate configuration, as YAML: .Values.config plus the JWT public key file when one
is given. Fails when a secret, a listener or the pod id is put in `config`: the
listeners and the pod id are set per pod through the environment (which also overrides
the image's defaults).
*/}}
{{- define "wsgate.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $jwt := dig "auth" "jwt" dict $cfg -}}
{{- if hasKey $jwt "secret" -}}
{{- fail "config.auth.jwt.secret: secrets do not go in the ConfigMap; use secrets.jwtSecret or existingSecret (key jwt-secret)" -}}
{{- end -}}
{{- if hasKey (dig "control" dict $cfg) "api_keys" -}}
{{- fail "config.control.api_keys: secrets do not go in the ConfigMap; use secrets.apiKeys or existingSecret (key api-keys)" -}}
{{- end -}}
{{- if hasKey (dig "redis" dict $cfg) "url" -}}
{{- fail "config.redis.url: the Redis URL may hold a password and does not go in the ConfigMap; use secrets.redisUrl or existingSecret (key redis-url)" -}}
{{- end -}}
{{- $server := dig "server" dict $cfg -}}
{{- if or (hasKey $server "listen") (hasKey $server "grpc_listen") -}}
{{- fail "config.server.listen / config.server.grpc_listen are set by the chart; use listenAddress and containerPorts" -}}
{{- end -}}
{{- if hasKey $server "pod_id" -}}
{{- fail "config.server.pod_id is set per pod from POD_NAME (downward API); remove it" -}}
{{- end -}}
{{- if .Values.jwtPublicKey -}}
{{- if hasKey $jwt "public_key_file" -}}
{{- fail "set either jwtPublicKey or config.auth.jwt.public_key_file, not both" -}}
{{- end -}}
{{- $_ := set $jwt "public_key_file" (printf "%s/jwt.pub.pem" (include "wsgate.configDir" .)) -}}
{{- $auth := dig "auth" dict $cfg -}}
{{- $_ := set $auth "jwt" $jwt -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* shutdown.grace in whole seconds (rounded up). */}}
{{- define "wsgate.graceSeconds" -}}
{{- $g := toString (dig "shutdown" "grace" "10s" (.Values.config | default dict)) -}}
{{- if regexMatch "^[0-9]+ms$" $g -}}
{{- div (add (trimSuffix "ms" $g | atoi) 999) 1000 -}}
{{- else if regexMatch "^[0-9]+s$" $g -}}
{{- trimSuffix "s" $g | atoi -}}
{{- else if regexMatch "^[0-9]+m$" $g -}}
{{- mul (trimSuffix "m" $g | atoi) 60 -}}
{{- else if .Values.terminationGracePeriodSeconds -}}
0
{{- else -}}
{{- fail (printf "config.shutdown.grace %q: write it as whole seconds or minutes (\"10s\", \"1m\") so the chart can derive terminationGracePeriodSeconds, or set terminationGracePeriodSeconds yourself" $g) -}}
{{- end -}}
{{- end -}}

{{/* preStop sleep + shutdown.grace + 5 s for the last close handshakes and exit. */}}
{{- define "wsgate.terminationGracePeriodSeconds" -}}
{{- $grace := include "wsgate.graceSeconds" . | atoi -}}
{{- $min := add (int .Values.preStopSleepSeconds) $grace 1 -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- if and (gt $grace 0) (lt (int .Values.terminationGracePeriodSeconds) $min) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than preStopSleepSeconds + shutdown.grace (%d s), or Kubernetes kills the pod before its sockets are closed" .Values.terminationGracePeriodSeconds (sub $min 1)) -}}
{{- end -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add (int .Values.preStopSleepSeconds) $grace 5 -}}
{{- end -}}
{{- end -}}

{{/* Checks of the values that make a working install. */}}
{{- define "wsgate.validate" -}}
{{- if and (not .Values.existingSecret) (not .Values.secrets.redisUrl) -}}
{{- fail "\n\nwsgate needs a Redis shared by its pods: set secrets.redisUrl (e.g. --set secrets.redisUrl=redis://:PASSWORD@redis-master:6379) or existingSecret (a Secret with key redis-url).\nSee docs/deploy.md." -}}
{{- end -}}
{{- if and .Values.secrets.jwtSecret (lt (len .Values.secrets.jwtSecret) 32) -}}
{{- fail "secrets.jwtSecret must be at least 32 bytes" -}}
{{- end -}}
{{- range .Values.secrets.apiKeys -}}
{{- if lt (len .) 16 -}}
{{- fail "every entry of secrets.apiKeys must be at least 16 characters" -}}
{{- end -}}
{{- if contains "," . -}}
{{- fail "secrets.apiKeys entries cannot contain a comma" -}}
{{- end -}}
{{- end -}}
{{- end -}}
