#!/usr/bin/env bash
# All the set-up a fresh machine needs, idempotent: Debian packages, the Python environment with
# the pinned dependencies (kubectl among them), and the lab's binaries built from Go modules.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

missing=()
# command:package — the lab's network tools, PostgreSQL, what `kubectl exec` offers in a pod,
# Alertmanager with its amtool, and Node.js with npm, which build Prometheus's web UI.
for pair in ip:iproute2 ss:iproute2 iptables:iptables conntrack:conntrack sysctl:procps \
            runuser:util-linux curl:curl nslookup:bind9-dnsutils psql:postgresql git:git \
            prometheus-alertmanager:prometheus-alertmanager amtool:prometheus-alertmanager \
            node:nodejs npm:npm; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# Debian's services would start their own instances at install and at boot (Alertmanager's on a
# wildcard address); the lab runs its own, on loopback. invoke-rc.d and deb-systemd-invoke start
# nothing while policy-rc.d says 101.
policy=/usr/sbin/policy-rc.d
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus-alertmanager.service >/dev/null 2>&1 || true
fi

python=$(command -v python3.11 || command -v python3)
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "opslab needs Python 3.11"'
if [ ! -x .venv/bin/python ]; then
  step "creating the Python environment in .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.opslab-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "installing opslab and its pinned dependencies"
  .venv/bin/pip install --quiet --disable-pip-version-check --progress-bar off -e '.[test]'
  touch "$stamp"
fi

command -v go >/dev/null 2>&1 || { echo "setup: Go >= 1.26 is needed to build the lab" >&2; exit 1; }
step "building the lab's binaries (cached; the first build takes a while)"
.venv/bin/opslab lab build
