# `helm test`: one WebSocket through the http Service, one push through the HTTP API of
# the control-plane Service, and the push must arrive on the socket. POSIX sh with
# busybox's nc, wget, base64, od and sha256sum (the Redis image has them; the wsgate
# image has no shell). Configured by the environment the test Pod sets:
#   WS_HOST WS_PORT WS_PATH API_URL AUTH TIMEOUT SECRETS_DIR, optional HOST_HEADER ORIGIN
#   (for preflight.allowed_hosts and allowed_origins), JWT_ISSUER JWT_AUDIENCE.
# Secrets are files in SECRETS_DIR: api-keys (comma-separated; the first is used) and,
# for AUTH=jwt-hs256, jwt-secret.
# AUTH: jwt-hs256 (mint a token with the HS256 secret), none (?user=), or other (tokens
# come from an identity service the test cannot sign for: only check that the WebSocket
# endpoint refuses a handshake without credentials and that the API answers).
set -eu
api_key=$(cat "$SECRETS_DIR/api-keys")
api_key=${api_key%%,*}
host_header=${HOST_HEADER:-$WS_HOST:$WS_PORT}
origin_line=''
[ -z "${ORIGIN:-}" ] || origin_line="Origin: $ORIGIN\r\n"

now=$(date +%s)
user="helm-test-$now-$$"
nonce="helm-test-nonce-$now-$$-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
out=/tmp/ws.out
: >"$out"

say() { printf 'helm-test: %s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }

b64url() { base64 | tr -d '\n=' | tr '+/' '-_'; }
# Hex digits of stdin, no spaces.
hex() { od -An -v -tx1 | tr -d ' \n'; }
# printf escapes (\NNN octal) for the hex string $1, each byte XORed with $2 (decimal).
esc() {
    h=$1 e=''
    while [ -n "$h" ]; do
        b=${h%"${h#??}"}
        h=${h#??}
        e="$e\\$(printf '%03o' $(( 0x$b ^ $2 )))"
    done
    printf '%s' "$e"
}
# HMAC-SHA256 (RFC 2104) of the message $2 with the key $1; binary on stdout.
hmac_sha256() {
    k=$(printf '%s' "$1" | hex)
    if [ ${#k} -gt 128 ]; then k=$(printf '%s' "$1" | sha256sum | cut -c1-64); fi
    while [ ${#k} -lt 128 ]; do k="${k}00"; done
    inner=$({ printf "$(esc "$k" 54)"; printf '%s' "$2"; } | sha256sum | cut -c1-64)
    outer=$({ printf "$(esc "$k" 92)"; printf "$(esc "$inner" 0)"; } | sha256sum | cut -c1-64)
    printf "$(esc "$outer" 0)"
}
# A token for $user signed with the HS256 secret $1.
jwt_hs256() {
    claims="{\"sub\":\"$user\",\"iat\":$now,\"exp\":$((now + 300))"
    [ -z "${JWT_ISSUER:-}" ] || claims="$claims,\"iss\":\"$JWT_ISSUER\""
    [ -z "${JWT_AUDIENCE:-}" ] || claims="$claims,\"aud\":\"$JWT_AUDIENCE\""
    claims="$claims}"
    signing="$(printf '%s' '{"alg":"HS256","typ":"JWT"}' | b64url).$(printf '%s' "$claims" | b64url)"
    printf '%s.%s' "$signing" "$(hmac_sha256 "$1" "$signing" | b64url)"
}

# Waits up to TIMEOUT seconds for $1 (a fixed string) in the socket's output; gives up
# at once on an HTTP error status (the handshake was refused).
wait_for() {
    i=0
    while ! grep -a -q -F -- "$1" "$out"; do
        if [ "$1" != "HTTP/1.1 401" ] && grep -a -q '^HTTP/1.1 [45]' "$out"; then return 1; fi
        i=$((i + 1))
        [ "$i" -le $((TIMEOUT * 5)) ] || return 1
        sleep 0.2
    done
}

# Opens the WebSocket with the query $1; the socket's bytes go to $out. The request
# side stays open (sleep) so that nc keeps reading.
open_ws() {
    key=$(head -c 16 /dev/urandom | base64)
    {
        printf 'GET %s?%s HTTP/1.1\r\nHost: %s\r\n%bUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wsgate.v1\r\n\r\n' \
            "$WS_PATH" "$1" "$host_header" "$origin_line" "$key"
        sleep $((TIMEOUT * 2 + 5))
    } | nc "$WS_HOST" "$WS_PORT" >"$out" 2>&1 &
    ws_pid=$!
}

api() {
    wget -q -O - --header "Authorization: Bearer $api_key" \
        --header 'Content-Type: application/json' --post-data "$2" "$API_URL/api/v1/$1"
}

case "$AUTH" in
    jwt-hs256) query="access_token=$(jwt_hs256 "$(cat "$SECRETS_DIR/jwt-secret")")" ;;
    none) query="user=$user" ;;
    *)
        say "auth is not HS256 here: checking that a handshake without a token is refused and that the API answers"
        open_ws ""
        wait_for "HTTP/1.1 401" || { cat "$out"; fail "no 401 for a handshake without a token from ws://$WS_HOST:$WS_PORT$WS_PATH"; }
        kill "$ws_pid" 2>/dev/null || true
        reply=$(api send_to_user "{\"user_id\":\"$user\",\"payload\":{\"text\":\"$nonce\"}}") \
            || fail "POST $API_URL/api/v1/send_to_user failed"
        say "send_to_user: $reply"
        say "PASS (handshake refused without a token, API answered)"
        exit 0
        ;;
esac

say "connecting ws://$WS_HOST:$WS_PORT$WS_PATH as $user"
open_ws "$query"
if ! wait_for '"op":"welcome"'; then
    head -c 2000 "$out" | tr -d '\000-\010\016-\037'
    fail "no welcome frame within ${TIMEOUT}s (the answer is above)"
fi
grep -a -q -F 'HTTP/1.1 101' "$out" || fail "no 101 Switching Protocols"
say "welcome received; pushing through $API_URL/api/v1/send_to_user"
reply=$(api send_to_user "{\"user_id\":\"$user\",\"payload\":{\"text\":\"$nonce\"}}") \
    || fail "POST $API_URL/api/v1/send_to_user failed"
say "send_to_user: $reply"
case "$reply" in
    *'"targets":"1"'*) ;;
    *) fail "the registry did not count the test's session (targets should be \"1\")" ;;
esac
if ! wait_for "$nonce"; then
    head -c 2000 "$out" | tr -d '\000-\010\016-\037'
    fail "the push did not arrive within ${TIMEOUT}s"
fi
kill "$ws_pid" 2>/dev/null || true
say "PASS (WebSocket opened, push delivered through the control plane)"
