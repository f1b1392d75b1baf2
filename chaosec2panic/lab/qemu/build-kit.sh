#!/bin/bash
# build-kit.sh OUTDIR: the crash lab's guest kit, built from Debian packages only.
#   OUTDIR/vmlinuz          the kernel of linux-image-amd64 (extracted with dpkg-deb -x, not installed)
#   OUTDIR/initrd.img       core initramfs + a second cpio adding /boot/vmlinuz and /boot/initrd.img
#                           (= the core) so that the running guest can `kexec -p` them
#   OUTDIR/kit.env          versions
# The same /init serves the normal boot and the kdump capture boot (lab.mode=capture).
# Needs (Debian packages): busybox-static kexec-tools makedumpfile cpio kmod; the kernel
# package is fetched with `apt-get download` (KERNEL_DEB=path uses a local one instead).
set -euo pipefail

OUT=${1:?usage: build-kit.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${LAB_DEB_CACHE:-$OUT/.debs}
mkdir -p "$CACHE"

log() { echo "[build-kit] $*" >&2; }

missing=()
for p in busybox-static kexec-tools makedumpfile cpio kmod; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})"
    exit 1
fi

# ---------------------------------------------------------------- kernel
if [ -z "${KERNEL_DEB:-}" ]; then
    imgpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$imgpkg" ] || { log "cannot resolve linux-image-amd64 dependency (run apt-get update?)"; exit 1; }
    KERNEL_DEB=$(ls "$CACHE"/"${imgpkg}"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$KERNEL_DEB" ]; then
        log "apt-get download $imgpkg"
        (cd "$CACHE" && apt-get download "$imgpkg" >&2 2>/dev/null) || (cd "$CACHE" && apt-get download "$imgpkg" >&2)
        KERNEL_DEB=$(ls "$CACHE"/"${imgpkg}"_*.deb | head -n1)
    fi
fi
log "kernel package: $KERNEL_DEB"
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$KERNEL_DEB" "$WORK/kpkg"
KVER=$(ls "$WORK/kpkg/lib/modules" | head -n1)
log "kernel version: $KVER"
cp "$WORK/kpkg/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
cp "$WORK/kpkg/boot/config-$KVER" "$OUT/config"
depmod -b "$WORK/kpkg" "$KVER"
MODDIR="$WORK/kpkg/lib/modules/$KVER"

# modules wanted, in load order; dependencies are resolved from modules.dep
WANT="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console crc16 mbcache jbd2 crc32c_generic ext4"

# ---------------------------------------------------------------- rootfs
R="$WORK/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,var/crash,etc,boot,lib/modules}
cp /bin/busybox "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do
    [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"
done
cp "$(command -v kexec)" "$R/sbin/kexec"
cp "$(command -v makedumpfile)" "$R/sbin/makedumpfile"
# shared libraries (preserve the paths ldd reports, plus the dynamic loader)
for bin in "$R/sbin/kexec" "$R/sbin/makedumpfile"; do
    ldd "$bin" | awk '{for(i=1;i<=NF;i++) if ($i ~ /^\//) print $i}' | while read -r lib; do
        [ -e "$lib" ] || continue
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done
done
# kernel modules (flat dir + ordered list)
: > "$R/lib/modules/load.order"
declare -A seen=()
add_mod() {
    local name=$1 line path deps d
    line=$(grep -E "/${name}\.ko(\.[a-z]+)?:" "$MODDIR/modules.dep" || true)
    [ -n "$line" ] || { log "module $name not found (builtin?)"; return 0; }
    path=${line%%:*}
    deps=${line#*:}
    for d in $deps; do add_mod "$(basename "$d" | sed -E 's/\.ko(\.[a-z]+)?$//')"; done
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    case "$path" in
        *.ko) cp "$MODDIR/$path" "$R/lib/modules/" ;;
        *.ko.xz) xz -dc "$MODDIR/$path" > "$R/lib/modules/$(basename "${path%.xz}")" ;;
        *.ko.zst) zstd -dc "$MODDIR/$path" > "$R/lib/modules/$(basename "${path%.zst}")" ;;
    esac
    echo "$(basename "${path%.ko*}").ko" >> "$R/lib/modules/load.order"
}
for m in $WANT; do add_mod "$m"; done
log "modules: $(tr '\n' ' ' < "$R/lib/modules/load.order")"
echo "$KVER" > "$R/etc/lab-kernel-release"

install -m 0755 "$HERE/init" "$R/init"
install -m 0755 "$HERE/agent" "$R/bin/lab-agent"
install -m 0755 "$HERE/lab-kdump" "$R/bin/lab-kdump"
install -m 0755 "$HERE/kdumpctl" "$R/sbin/kdumpctl"
printf 'ID=crashlab\nVERSION_ID=%s\nPRETTY_NAME="chaosec2panic crash lab (Debian kernel %s)"\n' "$KVER" "$KVER" > "$R/etc/os-release"
printf 'path /var/crash\ncore_collector makedumpfile -l -d 31\n' > "$R/etc/kdump.conf"
mknod -m 600 "$R/dev/console" c 5 1
mknod -m 666 "$R/dev/null" c 1 3

# core archive (gzip), padded with zeros to a 512-byte multiple so the kernel finds the next archive
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 > "$OUT/initrd-core.img"
sz=$(stat -c %s "$OUT/initrd-core.img"); pad=$(( (512 - sz % 512) % 512 ))
[ $pad -gt 0 ] && head -c $pad /dev/zero >> "$OUT/initrd-core.img"

# boot archive (uncompressed): /boot/vmlinuz + /boot/initrd.img for kexec -p
B="$WORK/bootarc"
mkdir -p "$B/boot"
cp "$OUT/vmlinuz" "$B/boot/vmlinuz"
cp "$OUT/initrd-core.img" "$B/boot/initrd.img"
(cd "$B" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) > "$WORK/boot.cpio"
cat "$OUT/initrd-core.img" "$WORK/boot.cpio" > "$OUT/initrd.img"

cat > "$OUT/kit.env" <<EOF
KIT_KERNEL_RELEASE=$KVER
KIT_KERNEL_DEB=$(basename "$KERNEL_DEB")
KIT_BUSYBOX=$(dpkg-query -W -f='${Version}' busybox-static)
KIT_KEXEC_TOOLS=$(dpkg-query -W -f='${Version}' kexec-tools)
KIT_MAKEDUMPFILE=$(dpkg-query -W -f='${Version}' makedumpfile)
KIT_BUILT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
log "kit ready in $OUT:"
ls -l "$OUT" >&2
