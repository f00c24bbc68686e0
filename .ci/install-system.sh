#!/usr/bin/env bash
# Installs the Debian packages the project runs for real: nginx (+ Lua for reload-free routing),
# Prometheus and promtool, wrk, etcd, redis-server (the store that joins feedback labels to
# predictions, bentos/redis_join.py); and for the single-node cluster of tests/k8s (node.py):
# containerd, runc, the CNI plugins, iptables, conntrack, busybox-static (the test images are built
# from it) and socat; for the images of the model service and the controller
# (tests/k8s/buildah_images.py): debootstrap (their Debian base) and buildah (the builds; it
# brings uidmap and golang-github-containers-common, whose /etc/containers files the builds never
# read or change: they pass their own storage, policy and registries configuration). Idempotent.
#
# Never starts the packaged services and leaves the host as it was: a postinst must not start
# nginx, prometheus or containerd on the machine's own ports, so for the duration of `apt-get
# install` only, /usr/sbin/policy-rc.d answers 101 ("action forbidden") to invoke-rc.d. The file is
# created only if absent and removed afterwards (on any exit); an existing one is left untouched,
# unless it is one of ours that a run killed mid-install left behind (the next run removes it).
# No process is ever ended by name.
set -euo pipefail
pkgs=(nginx libnginx-mod-http-lua lua-resty-core lua-cjson prometheus wrk etcd-server curl ca-certificates openssl
  containerd runc containernetworking-plugins iproute2 iptables conntrack socat busybox-static
  debootstrap debian-archive-keyring buildah redis-server)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
POLICY_RC_D="${POLICY_RC_D:-/usr/sbin/policy-rc.d}"
MARK="# bento-rollout .ci/install-system.sh: no service starts during its apt-get install"
# One of ours left by a run killed mid-install (SIGKILL runs no trap) is removed, never kept as the admin's.
if grep -qxF "$MARK" "$POLICY_RC_D" 2>/dev/null; then $SUDO rm -f "$POLICY_RC_D"; fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ ! -e "$POLICY_RC_D" ]; then
  trap '$SUDO rm -f "$POLICY_RC_D"' EXIT
  printf '#!/bin/sh\n%s\nexit 101\n' "$MARK" | $SUDO tee "$POLICY_RC_D" >/dev/null
  $SUDO chmod +x "$POLICY_RC_D"
fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
