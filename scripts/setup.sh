# Sourced by the other scripts: what a fresh Debian machine lacks, installed as root
# (python3-venv, and for the real QEMU guests qemu-system-x86, busybox-static, kexec-tools,
# makedumpfile, cpio, kmod; for the real Debian guest mmdebstrap, e2fsprogs, fdisk, qemu-utils),
# then a Python virtual environment in .venv with chaosec2panic
# and the given extra.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extra="$1"
debian_packages=(python3 python3-venv qemu-system-x86 busybox-static kexec-tools makedumpfile cpio kmod chromium
  mmdebstrap e2fsprogs fdisk qemu-utils)
missing=()
for p in "${debian_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
# The guest kit downloads the kernel package with apt-get download: the lists must exist.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# A regular (not editable) install: `chaos discover` finds a package by its installed files.
.venv/bin/python -m pip install -q ".[$extra]"
export PATH="$PWD/.venv/bin:$PATH"
