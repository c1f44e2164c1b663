#!/usr/bin/env bash
# Install what tests/slurm needs on Debian 12 (bookworm), as root: slurm-wlm 22.05 (slurmctld,
# slurmd, client), munge, slurmdbd + MariaDB (a real `sacct`: nemo-run waits on it, and the
# requeue test reads it), libslurm-dev + gcc (to build the pyxis stand-in, pyxis_shim.c), and
# the emulated node names n1..n4 in /etc/hosts (MASTER_ADDR=n1 must resolve).
# Idempotent and quiet: installs only what is missing. About 40 s on the 2-core CI machine.
# The packages' postinst scripts try to start the daemons and are refused without systemd
# ("invoke-rc.d: policy-rc.d denied execution of start"): harmless, tests start their own.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server libslurm-dev gcc)
missing=()
for p in "${PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
grep -qE '^127\.0\.0\.1[[:space:]].*\bn1\b' /etc/hosts ||
    echo "127.0.0.1 n1 n2 n3 n4  # local Slurm test cluster (tools/slurm)" >> /etc/hosts
slurmctld -V
