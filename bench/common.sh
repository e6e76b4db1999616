# Sourced by run.sh and reload.sh: packages, release build, a working folder, process cleanup,
# the backend (nginx answering fixed text) and a readiness wait. Loopback only.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
(cd "$ROOT" && cargo build --release --locked -q -p gatehouse -p gatehouse-bench)
# GATEHOUSE_BINARY runs another build of Gatehouse (to compare two side by side).
GATEHOUSE="${GATEHOUSE_BINARY:-$ROOT/target/release/gatehouse}"
TOOLS="$ROOT/target/release/gatehouse-bench"
B="$(mktemp -d /tmp/gatehouse-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# nginx writes temporary files; keep them in the working folder.
NGINX_TEMP_PATHS="client_body_temp_path $B; proxy_temp_path $B; fastcgi_temp_path $B; uwsgi_temp_path $B; scgi_temp_path $B;"

# require_free ADDR...: stops the run when something already listens on an address: a server
# left over from another run would be measured in place of the one this run starts.
require_free() {
  local addr
  for addr in "$@"; do
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
      echo "$addr is already in use (a server left from another run?): stop it first" >&2
      exit 1
    fi
  done
}

# start_backend ADDR=TEXT...: one nginx on CPU $BACKEND_CPU (default 0) answering 200 TEXT on
# each address; first, the backend's, proxy's and admin addresses must be free.
start_backend() {
  local servers="" pair
  require_free ${PROXY:-} ${PROXY_TLS:-} ${ADMIN:-}
  for pair in "$@"; do
    require_free "${pair%%=*}"
    servers+="server { listen ${pair%%=*}; location / { return 200 \"${pair#*=}\\n\"; } } "
  done
  cat >"$B/backend.conf" <<CONF
worker_processes 1; daemon off; pid $B/backend.pid; error_log $B/backend.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; $NGINX_TEMP_PATHS $servers }
CONF
  taskset -c "${BACKEND_CPU:-0}" nginx -c "$B/backend.conf" & PIDS+=($!)
}

# wait_ready ADDR [TENTHS]: until http://ADDR/ answers 200 for Host app.local (10 s, or
# TENTHS tenths of a second, at most).
wait_ready() {
  for _ in $(seq 1 "${2:-100}"); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: app.local' "http://$1/")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

# gatehouse_config: Gatehouse on $PROXY (one worker, admin on $ADMIN) with service "app" for
# Host app.local on $BACKEND; callers append further [[services]]. ACCESS_LOG=FILE turns the
# access log on.
gatehouse_config() {
  cat <<CONF
address = "127.0.0.1"
port = ${ADMIN##*:}
loglevel = "warn"
workers = 1
access_log = "${ACCESS_LOG:-off}"
[[listeners]]
address = "$PROXY"
[[services]]
name = "app"
hosts = ["app.local"]
targets = ["http://$BACKEND"]
CONF
}

# service NAME HOST ADDR: a [[services]] block routing HOST to http://ADDR.
service() {
  printf '[[services]]\nname = "%s"\nhosts = ["%s"]\ntargets = ["http://%s"]\n' "$1" "$2" "$3"
}

# nginx_config "DIRECTIVES" ["MORE"]: nginx (one worker) proxying Host app.local to $BACKEND
# with kept-alive upstream connections; DIRECTIVES go into that server block (listen, ssl_*),
# MORE (further upstreams and servers) into the http block.
nginx_config() {
  cat <<CONF
worker_processes 1; daemon off; pid $B/nginx.pid; error_log $B/nginx.err;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; $NGINX_TEMP_PATHS
  upstream be { server $BACKEND; keepalive 128; }
  ssl_session_cache shared:SSL:10m;
  server { $1 server_name app.local;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  ${2:-} }
CONF
}

# haproxy_config: HAProxy on $PROXY with one thread, routing Host app.local to $BACKEND with
# idle server connections reused.
haproxy_config() {
  cat <<CONF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind $PROXY
  use_backend be_app if { hdr(host) -i app.local }
backend be_app
  http-reuse always
  server s1 $BACKEND
CONF
}

# make_certificate: an ECDSA P-256 certificate for app.local in $B/cert.pem and $B/key.pem,
# and both in $B/combined.pem (HAProxy's form).
make_certificate() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=app.local \
    -addext subjectAltName=DNS:app.local -keyout "$B/key.pem" -out "$B/cert.pem" 2>/dev/null
  cat "$B/cert.pem" "$B/key.pem" >"$B/combined.pem"
}

# ticks "PIDS": user+system clock ticks the processes have used.
ticks() { local s=0; for p in $1; do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$s"; }
# launch NAME READY COMMAND...: starts COMMAND on CPU $PROXY_CPU (default 1), its output in
# $B/NAME.out, then runs READY (a command line) until it serves; sets PID. Says why and fails
# if it does not.
launch() {
  local name=$1 ready=$2; shift 2
  taskset -c "${PROXY_CPU:-1}" "$@" >"$B/$name.out" 2>&1 & PID=$!
  PIDS+=($PID)
  $ready || { echo "$name did not come up: $(tail -5 "$B/$name.out")" >&2; kill $PID; return 1; }
}

# user_ticks PIDS: the user-space part of ticks.
user_ticks() { local s=0; for p in $1; do s=$((s + $(awk '{print $14}' "/proc/$p/stat"))); done; echo "$s"; }
