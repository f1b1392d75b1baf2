#!/bin/bash
# build-image.sh OUTDIR AGENT UNIT: a Debian bookworm disk that boots through its own GRUB.
#   OUTDIR/rootfs.versions  the installed packages (dpkg-query), the key's source of truth
#   OUTDIR/base.qcow2       MBR disk: GRUB boot.img + core.img before the first partition,
#                           one ext4 partition made with mke2fs -d (no loop device, no mount)
#   OUTDIR/armed.qcow2      the same root filesystem armed as a Debian admin arms kdump-tools
#   OUTDIR/image.env        kernel release and the root filesystem's UUID
# Built with mmdebstrap --variant=minbase from Debian's packages; on base.qcow2 kdump-tools is
# installed but not armed (USE_KDUMP=0): arming it is the extension's job. armed.qcow2 differs
# by two files only: USE_KDUMP=1 and /etc/sysctl.d/90-kdump-nmi.conf (unknown_nmi_panic=1).
# Both boot with kdump-tools' own crashkernel= (its grub.d file); kernel.panic stays Debian's 0.
# Needs (Debian packages): mmdebstrap e2fsprogs fdisk qemu-utils.
set -euo pipefail
OUT=${1:?usage: build-image.sh OUTDIR AGENT UNIT}
AGENT=${2:?agent script}
UNIT=${3:?systemd unit}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PART_MIB=${DEBIAN_ROOT_MIB:-4096}
log() { echo "[build-image] $*" >&2; }
for t in mmdebstrap mke2fs sfdisk qemu-img; do
    command -v "$t" >/dev/null || { log "$t is missing (as root: apt-get install mmdebstrap e2fsprogs fdisk qemu-utils)"; exit 1; }
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R="$WORK/root"
PACKAGES=linux-image-amd64,kdump-tools,makedumpfile,kexec-tools,systemd-sysv,udev,initramfs-tools,grub-pc,procps,kmod,coreutils,e2fsprogs
log "mmdebstrap $SUITE ($PACKAGES)"
# kdump-tools' kernel hook builds its initrd with MODULES=dep, which cannot find the root device
# in a chroot: the hook is diverted while the packages install and its initrd is built below.
# grub-pc's update-grub cannot probe a chroot's root either: the boot blocks and the first
# grub.cfg are made here.
HOOK=/etc/kernel/postinst.d/kdump-tools
mmdebstrap --variant=minbase --include="$PACKAGES" \
    --essential-hook="chroot \"\$1\" dpkg-divert --quiet --local --rename --divert $HOOK.build --add $HOOK" \
    --essential-hook='echo "kdump-tools kdump-tools/use_kdump boolean false" | chroot "$1" debconf-set-selections' \
    --essential-hook='echo "kexec-tools kexec-tools/load_kexec boolean false" | chroot "$1" debconf-set-selections' \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$SUITE" "$R" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY $SUITE-security main" >&2
KVER=$(ls "$R/lib/modules" | head -n 1)
UUID=$(cat /proc/sys/kernel/random/uuid)
log "kernel $KVER, root $UUID"
chroot "$R" dpkg-query -W -f='${Package}=${Version}\n' > "$OUT/rootfs.versions"

echo debian-lab > "$R/etc/hostname"
printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$UUID" > "$R/etc/fstab"
chroot "$R" passwd -d root >/dev/null
install -m 0755 "$AGENT" "$R/usr/local/sbin/lab-agent"
# the agent naps with busybox's usleep; Debian's sleep takes fractions
printf '#!/bin/sh\nexec sleep "$(printf "0.%%06d" "$1")"\n' > "$R/usr/local/bin/usleep"
chmod 0755 "$R/usr/local/bin/usleep"
install -m 0644 "$UNIT" "$R/etc/systemd/system/lab-agent.service"
ln -sf /etc/systemd/system/lab-agent.service "$R/etc/systemd/system/multi-user.target.wants/lab-agent.service"
ln -sf /dev/null "$R/etc/systemd/system/systemd-timesyncd.service"
# GRUB: the serial console, no menu wait; update-grub in the guest rebuilds grub.cfg from these
sed -i -e 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=0/' \
    -e 's/^GRUB_CMDLINE_LINUX_DEFAULT=.*/GRUB_CMDLINE_LINUX_DEFAULT=""/' \
    -e 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="console=ttyS0,115200"/' "$R/etc/default/grub"
cat >> "$R/etc/default/grub" <<'G'
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
G
# unarmed: kdump-tools installed and told not to dump (USE_KDUMP=0)
sed -i 's/^USE_KDUMP=.*/USE_KDUMP=0/' "$R/etc/default/kdump-tools"
mkdir -p "$R/boot/grub/i386-pc"
cp "$R"/usr/lib/grub/i386-pc/*.mod "$R"/usr/lib/grub/i386-pc/*.lst "$R/boot/grub/i386-pc/"
# grub.cfg as update-grub makes it on the booted disk (kdump-tools.cfg's crashkernel= included):
# grub-probe cannot see a chroot's disk, so it answers for the disk being made while it runs.
mv "$R/usr/sbin/grub-probe" "$R/usr/sbin/grub-probe.real"
cat > "$R/usr/sbin/grub-probe" <<G
#!/bin/sh
for a; do case "\$a" in
  --target=device) echo /dev/vda1; exit ;; --target=fs_uuid) echo $UUID; exit ;;
  --target=fs) echo ext2; exit ;; --target=partmap) echo msdos; exit ;;
  --target=abstraction|--target=fs_label|--target=partuuid) exit ;;
  --target=drive) echo '(hd0,msdos1)'; exit ;; --target=compatibility_hint) echo hd0,msdos1; exit ;;
  --target=*) exit 1 ;;
esac; done
G
chmod 0755 "$R/usr/sbin/grub-probe"
chroot "$R" grub-mkconfig -o /boot/grub/grub.cfg >&2
mv "$R/usr/sbin/grub-probe.real" "$R/usr/sbin/grub-probe"
# (no /dev/disk/by-uuid in a chroot: root=/dev/vda1 until the guest's own update-grub)
grep -Eq "root=(UUID=$UUID|/dev/vda1) " "$R/boot/grub/grub.cfg" || { log "grub.cfg names another root"; exit 1; }
# kdump-tools' initrd as its hook makes it, but with the modules MODULES=dep finds in this
# machine (virtio disk, ext4) listed; the sysctls it was made with are recorded as the hook's
# caller does, so that the first `kdump-config load` does not rebuild it (134 s under TCG).
chroot "$R" dpkg-divert --quiet --local --rename --remove "$HOOK"
KD="$R/var/lib/kdump"
rm -rf "$KD/initramfs-tools"; mkdir -p "$KD"
cp -pr "$R/etc/initramfs-tools" "$KD/"
mkdir -p "$KD/initramfs-tools/conf.d"
echo MODULES=list > "$KD/initramfs-tools/conf.d/zzz-kdump"
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >> "$KD/initramfs-tools/modules"
echo KDUMP=y >> "$KD/initramfs-tools/initramfs.conf"
chroot "$R" mkinitramfs -d /var/lib/kdump/initramfs-tools -o "/var/lib/kdump/initrd.img-$KVER" "$KVER" >&2
cp "$R/etc/kdump/sysctl.conf" "$KD/latest_sysctls-$KVER"
chroot "$R" grub-mkimage -O i386-pc -o /tmp/core.img -p "(hd0,msdos1)/boot/grub" biosdisk part_msdos ext2
cp "$R/tmp/core.img" "$WORK/core.img"; rm -f "$R/tmp/core.img"
cp "$R/usr/lib/grub/i386-pc/boot.img" "$WORK/boot.img"
rm -rf "$R/var/cache/apt/archives/"*.deb "$R/var/lib/apt/lists/"*_Packages

[ "$(stat -c %s "$WORK/core.img")" -lt $(( 2047 * 512 )) ] || { log "core.img does not fit before the partition"; exit 1; }
# disk NAME: the root filesystem as it is now, as OUTDIR/NAME.qcow2
disk() {
    log "disk $1: ${PART_MIB} MiB ext4 at 1 MiB"
    local raw="$WORK/disk.raw"
    rm -f "$raw"; truncate -s $(( (PART_MIB + 1) * 1024 * 1024 )) "$raw"
    echo 'start=2048, type=83, bootable' | sfdisk -q "$raw" >&2
    mke2fs -q -F -t ext4 -U "$UUID" -L debian-root -d "$R" -E offset=1048576 "$raw" "${PART_MIB}M" >&2
    dd if="$WORK/boot.img" of="$raw" bs=440 count=1 conv=notrunc status=none
    dd if="$WORK/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none
    qemu-img convert -O qcow2 "$raw" "$OUT/$1.qcow2.part"
    rm -f "$raw"
}
disk base
# armed as a Debian admin arms kdump-tools: USE_KDUMP=1 (crashkernel= is already on the line
# from its /etc/default/grub.d/kdump-tools.cfg); an NMI panics through a sysctl.d file
sed -i 's/^USE_KDUMP=.*/USE_KDUMP=1/' "$R/etc/default/kdump-tools"
echo kernel.unknown_nmi_panic = 1 > "$R/etc/sysctl.d/90-kdump-nmi.conf"
disk armed
mv "$OUT/armed.qcow2.part" "$OUT/armed.qcow2"
mv "$OUT/base.qcow2.part" "$OUT/base.qcow2"
cp "$R/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
printf 'IMAGE_KERNEL_RELEASE=%s\nIMAGE_ROOT_UUID=%s\n' "$KVER" "$UUID" > "$OUT/image.env"
log "done: $OUT"
