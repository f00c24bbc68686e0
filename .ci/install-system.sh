#!/usr/bin/env bash
# Installs the Debian packages the project runs for real: nginx (+ Lua for reload-free routing),
# Prometheus and promtool, wrk, etcd. Idempotent; never starts the packaged services.
set -euo pipefail
pkgs=(nginx libnginx-mod-http-lua lua-resty-core lua-cjson prometheus wrk etcd-server curl ca-certificates openssl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# Debian's postinst scripts would start nginx and prometheus on public ports: forbid it.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Stop anything a postinst may have started anyway.
$SUDO pkill -x nginx 2>/dev/null || true
$SUDO pkill -x prometheus 2>/dev/null || true
