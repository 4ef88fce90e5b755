#!/usr/bin/env bash
# Offline smoke test of the container image (run from CI as root).
#
# No registry is reachable here, so deploy/Dockerfile's base images cannot be
# pulled. Instead this builds, with podman, an image FROM scratch that holds
# what the Dockerfile's runtime stage holds: the --locked release binary and
# the shared libraries it links (distroless `cc` ships the same glibc and
# libgcc), the non-root user 65532, the /data volume (0700, owned by 65532),
# and the same ENV, EXPOSE, STOPSIGNAL, USER, ENTRYPOINT and CMD. podman cannot
# run containers here, so the image's filesystem is exported and started the
# way a runtime would: in a mount namespace, with the root read-only, /data a
# writable volume, as the image's user, with the image's environment.
#
# It proves from outside that the image starts as non-root on a read-only
# root, answers /healthz and its HEALTHCHECK command, accepts a replayed
# fixture and forwards it byte for byte to a mock Accelerate, keeps an event
# across a restart on its /data volume, and exits 0 on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
WORK=$(mktemp -d /tmp/relay-smoke.XXXXXX)
ROOT=$WORK/root
RELAY_PID=
MOCK_PID=
# The relay process of this run: the one whose root is this run's image.
relay_pid() {
  local pid
  for pid in $(pgrep -f "^/usr/local/bin/accelerate-relay serve"); do
    [ "$(readlink "/proc/$pid/root")" = "$ROOT" ] && { echo "$pid"; return; }
  done
}
cleanup() {
  local pid
  pid=$(relay_pid 2>/dev/null || true)
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  [ -n "$RELAY_PID" ] && kill -9 "$RELAY_PID" 2>/dev/null || true
  [ -n "$MOCK_PID" ] && kill "$MOCK_PID" 2>/dev/null || true
  podman rm -f relay-smoke >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "image smoke test FAILED: $*" >&2; [ -f "$WORK/relay.log" ] && tail -20 "$WORK/relay.log" >&2; exit 1; }
# `contains TEXT PATTERN`: grep on text already read in full. Piping a command
# into `grep -q` fails under pipefail whenever grep matches and exits before
# the writer is done (curl exit 23, SIGPIPE), which is how CI once went red.
contains() { grep -q -- "$2" <<<"$1"; }

command -v podman >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman >/dev/null
}

# 1. The image: what the runtime stage of deploy/Dockerfile holds.
cargo build --release --locked -p accelerate-relay
BIN=target/release/accelerate-relay
CTX=$WORK/context
mkdir -p "$CTX/rootfs/usr/local/bin" "$CTX/rootfs/etc" "$CTX/data"
install -m 0755 "$BIN" "$CTX/rootfs/usr/local/bin/accelerate-relay"
for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
  mkdir -p "$CTX/rootfs$(dirname "$lib")"
  cp -L "$lib" "$CTX/rootfs$lib"
done
echo 'root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$CTX/rootfs/etc/passwd"
echo 'root:x:0:
nonroot:x:65532:' > "$CTX/rootfs/etc/group"
chmod 0700 "$CTX/data"
# The runtime stage's instructions, copied from deploy/Dockerfile.
{
  echo 'FROM scratch'
  echo 'COPY rootfs/ /'
  # As the runtime stage does: /data owned by the image's user.
  echo 'COPY --chown=65532:65532 data /data'
  sed -n '/^USER /,$p' deploy/Dockerfile
} > "$CTX/Containerfile"
podman build -q --format docker -t accelerate-relay-smoke:latest -f "$CTX/Containerfile" "$CTX" >/dev/null
config() { podman image inspect accelerate-relay-smoke:latest --format "$1"; }
USER_ID=$(config '{{.Config.User}}')
[ "$USER_ID" = "65532:65532" ] || fail "the image's user is '$USER_ID', not 65532:65532"
[ "$(config '{{.Config.StopSignal}}')" = "SIGTERM" ] || fail "STOPSIGNAL is not SIGTERM"
contains "$(config '{{json .Config.Volumes}}')" '"/data"' || fail "no /data volume"
contains "$(config '{{json .Config.Healthcheck}}')" 'accelerate-relay","healthcheck' || fail "HEALTHCHECK is not the healthcheck command"
ENTRYPOINT=$(config '{{join .Config.Entrypoint " "}}')
CMD=$(config '{{join .Config.Cmd " "}}')
mapfile -t IMAGE_ENV < <(config '{{range .Config.Env}}{{println .}}{{end}}' | grep -v '^$')

# 2. Its filesystem, as a runtime would unpack it.
mkdir -p "$ROOT"
podman create --name relay-smoke accelerate-relay-smoke:latest >/dev/null
podman export relay-smoke | tar -x -C "$ROOT"
DATA=$WORK/data            # the volume, initialised from the image's /data
cp -a "$ROOT/data" "$DATA"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADMIN_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MOCK_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
AUTH=smoke-authorization-key
SIG=smoke-signature-key
RUN_ENV=("${IMAGE_ENV[@]}"
  "RELAY_LISTEN=127.0.0.1:$PORT" "RELAY_ADMIN_LISTEN=127.0.0.1:$ADMIN_PORT"
  "CKO_SANDBOX_AUTHORIZATION_KEY=$AUTH" "CKO_SANDBOX_SIGNATURE_KEY=$SIG"
  "ACCELERATE_SANDBOX_URL=http://127.0.0.1:$MOCK_PORT/webhooks/checkoutdotcom"
  "RELAY_RETRY_SCHEDULE=1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s")

# Runs a command of the image: read-only root, /data the volume, the image's user.
in_image() {
  unshare --mount --fork -- sh -c '
    root=$1; data=$2; user=$3; shift 3
    mount --bind "$root" "$root" && mount -o remount,bind,ro "$root" "$root"
    mount --bind "$data" "$root/data"
    exec chroot --userspec="$user" "$root" "$@"' sh "$ROOT" "$DATA" "$USER_ID" "$@"
}

start_relay() {
  env -i "${RUN_ENV[@]}" bash -c "$(declare -f in_image); ROOT=$ROOT DATA=$DATA USER_ID=$USER_ID; in_image $ENTRYPOINT $CMD" \
    >>"$WORK/relay.log" 2>&1 &
  RELAY_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "the relay did not answer /healthz"
}

stop_relay() {
  local pid
  pid=$(relay_pid)
  [ -n "$pid" ] || fail "no relay process"
  kill -TERM "$pid"
  local status=0
  wait "$RELAY_PID" || status=$?
  RELAY_PID=
  [ "$status" = 0 ] || fail "exit status $status after SIGTERM, not 0"
}

start_mock() {
  python3 - "$MOCK_PORT" "$WORK/received" >>"$WORK/mock.log" 2>&1 <<'EOF' &
import http.server, sys, os
port, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)
class Accelerate(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n = len([f for f in os.listdir(out) if f.endswith(".body")])
        open(os.path.join(out, f"{n}.body"), "wb").write(body)
        open(os.path.join(out, f"{n}.headers"), "w").write(str(self.headers))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), Accelerate).serve_forever()
EOF
  MOCK_PID=$!
  sleep 0.5
}

replay() {
  "$BIN" replay --url "http://127.0.0.1:$PORT/webhooks/checkoutdotcom/sandbox" \
    --authorization "$AUTH" --signature-key "$SIG" "$@"
}

# 3. Accelerate down: the first event waits on the /data volume.
start_relay
pid=$(relay_pid)
[ -n "$pid" ] || fail "no relay process"
[ "$(ps -o uid= -p "$pid" | tr -d ' ')" = 65532 ] || fail "the relay does not run as 65532"
contains "$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo")" '^ro' || fail "the relay's root is not read-only"
env -i "${RUN_ENV[@]}" bash -c "$(declare -f in_image); ROOT=$ROOT DATA=$DATA USER_ID=$USER_ID; in_image /usr/local/bin/accelerate-relay healthcheck" ||
  fail "the image's HEALTHCHECK command failed"
contains "$(replay fixtures/payment_approved.json)" '"accepted"' || fail "the fixture was not accepted"
for f in relay.db relay.db-wal; do
  [ "$(stat -c '%a %u' "$DATA/$f")" = "600 65532" ] || fail "$f is $(stat -c '%a %u' "$DATA/$f"), not 600 owned by 65532"
done
stop_relay

# 4. Restarted on the same volume with Accelerate up: the stored event goes out.
start_mock
start_relay
for _ in $(seq 1 100); do [ -f "$WORK/received/0.body" ] && break; sleep 0.1; done
[ -f "$WORK/received/0.body" ] || fail "the event kept on /data was not delivered after the restart"
cmp -s "$WORK/received/0.body" fixtures/payment_approved.json || fail "the forwarded body differs from the fixture"
grep -qi "^authorization: $AUTH" "$WORK/received/0.headers" || fail "Authorization was not forwarded"
# A second event, accepted and forwarded while running.
contains "$(replay fixtures/payment_declined.json)" '"accepted"' || fail "the second fixture was not accepted"
for _ in $(seq 1 50); do [ -f "$WORK/received/1.body" ] && break; sleep 0.1; done
cmp -s "$WORK/received/1.body" fixtures/payment_declined.json || fail "the second event was not forwarded byte for byte"
metrics=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics") || fail "/metrics on the admin port did not answer"
contains "$metrics" 'accelerate_relay_webhooks_total{environment="sandbox",result="accepted"} 1' ||
  fail "/metrics on the admin port does not count the accepted webhook"
stop_relay
echo "image smoke test passed: non-root (65532), read-only root, /healthz and HEALTHCHECK, replayed fixture forwarded byte for byte, kept across a restart on /data (files 0600), exit 0 on SIGTERM"
