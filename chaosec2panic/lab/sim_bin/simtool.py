"""The lab's stand-ins for the tools arm_kdump's script calls: one program, by the name it is
run as (or $SIMTOOL). It changes the guest's files as the real tool would change the system;
the guest reads them back after the command (sysctl, the crash kernel) and at boot.

Not imported: the lab copies it into each guest's /sim-bin."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

R = Path("/")  # the guest's own root: its commands run chrooted
HERE = Path(__file__).resolve().parent
CONF = json.loads((HERE / "simtool.json").read_text())
DB = R / "var/lib/chaosec2panic-lab/packages"
REPO = {CONF["package"], *CONF["pulled"]}


def err(text, code=1):
    print(text, file=sys.stderr)
    sys.exit(code)


def installed():
    return DB.read_text().split() if DB.exists() else []


def install(names):
    unknown = [n for n in names if n not in REPO]
    if unknown:
        err(f"No match for argument: {' '.join(unknown)}")
    have = installed()
    for name in names:
        for n in [name, *CONF["pulled"]] if name == CONF["package"] else [name]:
            if n not in have:
                have.append(n)
        print(f"Installing {name}")
        if name == CONF["package"]:
            unit = R / f"usr/lib/systemd/system/{CONF['unit']}.service"
            unit.parent.mkdir(parents=True, exist_ok=True)
            unit.write_text("[Unit]\nDescription=kdump\n[Install]\nWantedBy=multi-user.target\n")
            config = R / CONF["config_path"]
            if not config.exists():
                config.parent.mkdir(parents=True, exist_ok=True)
                config.write_text(CONF["config"])
            grub_d = R / "etc/default/grub.d/kdump-tools.cfg"
            if CONF["kdump_grub"] and not grub_d.exists():  # a conffile: one changed is kept
                grub_d.parent.mkdir(parents=True, exist_ok=True)
                value = CONF["kdump_grub"]
                grub_d.write_text(
                    f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT crashkernel={value}"\n'
                )
                if (R / "boot/grub/grub.cfg").exists():  # the postinst's update-grub
                    mkconfig(["-o", "/boot/grub/grub.cfg"])
    DB.write_text("".join(n + "\n" for n in have))


def package_manager(args):
    words = [a for a in args if not a.startswith("-")]
    if words[:1] == ["update"] or words[:1] == ["makecache"]:
        return
    if words[:1] not in (["install"], ["in"]):
        err(f"unsupported: {' '.join(args)}")
    install(words[1:])


def rpm(args):
    if args[:1] != ["-q"]:
        err("unsupported")
    missing = 0
    for name in args[1:]:
        if name in installed():
            print(f"{name}-1.0-1.x86_64")
        else:
            print(f"package {name} is not installed")
            missing += 1
    sys.exit(missing)


def dpkg_query(args):
    fmt = next((a[3:] for a in args if a.startswith("-f=")), "${Package}\t${Version}\n")
    names = [a for a in args if not a.startswith("-")]
    for name in names:
        if name not in installed():
            err(f"dpkg-query: no packages found matching {name}")
        sys.stdout.write(
            fmt.replace("${Status}", "install ok installed")
            .replace("${Package}", name)
            .replace("${Version}", "1.0")
            .replace("\\n", "\n")
        )


def grub_default():
    path = R / "etc/default/grub"
    return path, (path.read_text() if path.exists() else "")


def cmdline_of(text, key="GRUB_CMDLINE_LINUX"):
    found = re.findall(rf'^{key}=["\']?(.*?)["\']?$', text, re.M)
    return found[-1] if found else ""


def edit_args(words, add, remove):
    keys = {a.split("=", 1)[0] for a in add} | set(remove)
    return [w for w in words if w.split("=", 1)[0] not in keys] + list(add)


def grubby(args):
    entries = sorted((R / "boot/loader/entries").glob("*.conf"))
    if not entries:
        err("grubby: no boot entries")
    opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    if "info" in opts:
        lines = entries[0].read_text().splitlines()
        options = next((line[8:] for line in lines if line.startswith("options ")), "").split()
        root = next((w[5:] for w in options if w.startswith("root=")), "")
        kernel = next((line[6:] for line in lines if line.startswith("linux ")), "")
        args = " ".join(w for w in options if not w.startswith("root="))
        print(f'index=0\nkernel="{kernel}"\nargs="{args}"')
        print(f'root="{root}"')
        return
    if "update-kernel" not in opts:
        err("grubby: unsupported")
    add, remove = opts.get("args", "").split(), opts.get("remove-args", "").split()
    for entry in entries:
        lines = entry.read_text().splitlines()
        lines = [
            ("options " + " ".join(edit_args(line[8:].split(), add, remove)))
            if line.startswith("options ")
            else line
            for line in lines
        ]
        entry.write_text("\n".join(lines) + "\n")
    path, text = grub_default()
    if text:
        new = " ".join(edit_args(cmdline_of(text).split(), add, remove))
        path.write_text(re.sub(r"^GRUB_CMDLINE_LINUX=.*$", f'GRUB_CMDLINE_LINUX="{new}"', text, flags=re.M))


def grub_args():
    # grub-mkconfig sources /etc/default/grub, then (Debian's grub) /etc/default/grub.d/*.cfg in
    # name order, and gives the default entry GRUB_CMDLINE_LINUX then GRUB_CMDLINE_LINUX_DEFAULT.
    files = [R / "etc/default/grub"]
    if CONF["grub_d"]:
        files += sorted((R / "etc/default/grub.d").glob("*.cfg"))
    script = (
        'GRUB_CMDLINE_LINUX=; GRUB_CMDLINE_LINUX_DEFAULT=; for f in "$@"; do [ ! -e "$f" ] || '
        '. "$f" >/dev/null || exit 1; done; echo "$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT"'
    )
    done = subprocess.run(
        [str(R / "bin/sh"), "-c", script, "sh", *map(str, files)],
        capture_output=True,
        text=True,
        env={"LC_ALL": "C", "PATH": str(R / "bin")},
    )
    if done.returncode:
        err(f"grub-mkconfig: sourcing the defaults failed: {done.stderr.strip()}")
    return " ".join(done.stdout.split())


def mkconfig(args):
    out = args[args.index("-o") + 1] if "-o" in args else "/boot/grub/grub.cfg"
    line = grub_args()
    target = R / out.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        f"menuentry '{CONF['pretty']}' {{\n\tlinux /boot/vmlinuz-{CONF['release']} "
        f"root=/dev/nvme0n1p1 ro {line}\n}}\n"
    )
    print("Generating grub configuration file ... done", file=sys.stderr)


def systemctl(args):
    if args[:2] == ["show", "-p"] and len(args) == 4:
        state = R / CONF["unit_state"] / args[3]
        found = dict(line.split("=", 1) for line in state.read_text().split()) if state.is_file() else {}
        print(f"{args[2]}={found.get(args[2], '0' if args[2].endswith('Monotonic') else '')}")
        return
    words = [a for a in args if not a.startswith("-")]
    quiet = "--quiet" in args or "-q" in args
    if len(words) != 2:
        err("systemctl: unsupported")
    verb, unit = words[0], words[1].removesuffix(".service")
    unit_file = R / f"usr/lib/systemd/system/{unit}.service"
    wants = R / f"etc/systemd/system/multi-user.target.wants/{unit}.service"
    loaded = R / "sys/kernel/kexec_crash_loaded"
    kdump = unit == CONF["unit"] and unit_file.exists()
    if verb == "is-active":
        active = kdump and loaded.read_text().strip() == "1"
        if not quiet:
            print("active" if active else "inactive")
        sys.exit(0 if active else 3)
    if not unit_file.exists():
        err(f"Failed to {verb} unit: Unit file {unit}.service does not exist.")
    if verb == "is-enabled":
        on = wants.exists() or wants.is_symlink()
        if not quiet:
            print("enabled" if on else "disabled")
        sys.exit(0 if on else 1)
    if verb == "enable":
        wants.parent.mkdir(parents=True, exist_ok=True)
        if not wants.is_symlink():
            wants.symlink_to(f"/usr/lib/systemd/system/{unit}.service")
        return
    if verb == "disable":
        if wants.is_symlink() or wants.exists():
            wants.unlink()
        return
    if verb in ("start", "restart"):
        size = (R / "sys/kernel/kexec_crash_size").read_text().strip()
        config = R / CONF["config_path"]
        if CONF["kdump_tool"] == "kdump-config" and "USE_KDUMP=1" not in config.read_text().split():
            err(f"Job for {unit}.service failed: kdump-tools: not configured to use kdump (USE_KDUMP)")
        if not size.isdigit() or int(size) == 0:
            err(f"Job for {unit}.service failed: no memory reserved for the crash kernel (crashkernel=)")
        loaded.write_text("1\n")
        return
    if verb == "stop":
        loaded.write_text("0\n")
        return
    err(f"systemctl: unsupported verb {verb}")


def timedatectl(args):
    # AWS's images keep the clock synchronised (chrony or timesyncd on Amazon Time Sync): a model,
    # unless the fleet says clock_synced: false.
    if args == ["show", "-p", "NTPSynchronized"]:
        print(f"NTPSynchronized={'yes' if CONF['clock_synced'] else 'no'}")
        return
    err("timedatectl: unsupported")


def sysctl(args):
    if args[:1] == ["-n"] and len(args) == 2:
        print((R / "proc/sys" / args[1].replace(".", "/")).read_text().strip())
        return
    if args[:1] != ["-w"] or len(args) != 2 or "=" not in args[1]:
        err("sysctl: unsupported")
    key, value = args[1].split("=", 1)
    path = R / "proc/sys" / key.strip().replace(".", "/")
    if not path.exists():
        err(f"sysctl: cannot stat /proc/sys/{key.replace('.', '/')}: No such file or directory", 255)
    path.write_text(value.strip() + "\n")
    print(f"{key.strip()} = {value.strip()}")


name = os.environ.get("SIMTOOL") or Path(sys.argv[0]).name
args = sys.argv[1:] if not os.environ.get("SIMTOOL") else sys.argv[2:]
if name == "install":
    install(args)
elif name in ("dnf", "yum", "apt-get", "zypper"):
    package_manager(args)
elif name == "rpm":
    rpm(args)
elif name == "dpkg-query":
    dpkg_query(args)
elif name == "grubby":
    grubby(args)
elif name in ("update-grub", "grub-mkconfig", "grub2-mkconfig"):
    mkconfig(args)
elif name == "systemctl":
    systemctl(args)
elif name == "sysctl":
    sysctl(args)
elif name == "timedatectl":
    timedatectl(args)
else:
    err(f"{name}: not simulated")
