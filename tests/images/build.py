"""Build the QEMU test board's boot files from Debian packages, cached by package versions.

    python -m tests.images.build [--cache DIR]          # prints the directory holding vmlinuz + initrd
    python -m tests.images.build --disk OUT.img MARKER  # a small raw disk whose first line is MARKER

The kernel is Debian's `linux-image-amd64` (its versioned package, fetched with `apt-get download`
and unpacked in Python: no root, no install). The initramfs is a cpio (newc) written here holding
`busybox-static`, the virtio modules the kernel needs for its disk and network, and an init that
prints the first line of the disk (`disk marker: ...`) and starts a shell with the prompt `PROMPT`
on the console. Results live in `<cache>/<key>/` where the key hashes the two package versions and
this builder's init, so a new kernel or a changed init builds afresh and anything else is reused.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

PROMPT = "qemu-board# "
READY = "jumpstarter test image: boot complete"
KERNEL_ARGS = "console=tty0 console=ttyS0 quiet panic=-1 rdinit=/init"
# Module names the init loads (their dependencies are found in the modules themselves).
MODULES = ("virtio_pci", "virtio_blk", "virtio_net")
GUEST_ADDRESS = "10.0.2.15/24"  # QEMU user-mode networking's fixed guest address and gateway
GATEWAY = "10.0.2.2"

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /lib/modules/load-order); do insmod /lib/modules/$module.ko; done
ip link set lo up
ip link set eth0 up && ip addr add {GUEST_ADDRESS} dev eth0 && ip route add default via {GATEWAY}
# a virtio disk (device id 2) is registered asynchronously and its node made by another kernel thread:
# on a loaded host that takes a while, so wait for it (only when there is one) and make the node if late
if grep -q 0x0002 /sys/bus/virtio/devices/*/device 2>/dev/null; then
    for i in $(seq 300); do [ -e /sys/block/vda/dev ] && break; usleep 100000; done
    [ -b /dev/vda ] || mknod /dev/vda b $(tr : ' ' < /sys/block/vda/dev) 2>/dev/null
fi
if [ -b /dev/vda ]; then
    echo "disk marker: $(head -c 512 /dev/vda | tr -d '\\000' | head -n 1)"
else
    echo "disk marker: (no disk)"
fi
echo "{READY}"
export PS1='{PROMPT}'
exec setsid cttyhack sh
"""


def default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("JUMPSTARTER_IMAGE_CACHE") or os.path.join(base, "jumpstarter", "images")


def _run(*argv: str, cwd: str | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise SystemExit(f"{argv[0]} is missing: building the test image needs Debian's apt tools") from None
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()[-400:]}")
    return done.stdout


def _candidate(package: str) -> dict[str, str]:
    """The Version and Depends fields of the package apt would install."""
    fields: dict[str, str] = {}
    for line in _run("apt-cache", "show", "--no-all-versions", package).splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("Version", "Depends"):
            fields[key] = value.strip()
    if "Version" not in fields:
        raise SystemExit(f"apt knows no package {package!r} (run apt-get update)")
    return fields


def packages() -> dict[str, str]:
    """name -> version: the versioned kernel package behind linux-image-amd64, and busybox-static."""
    meta = _candidate("linux-image-amd64")
    match = re.search(r"(linux-image-[0-9][^\s,(]*)", meta.get("Depends", ""))
    if match is None:
        raise SystemExit(f"linux-image-amd64 depends on no versioned kernel: {meta.get('Depends')!r}")
    kernel = match.group(1)
    return {kernel: _candidate(kernel)["Version"], "busybox-static": _candidate("busybox-static")["Version"]}


def cache_key(versions: dict[str, str]) -> str:
    text = "\n".join(f"{name}={version}" for name, version in sorted(versions.items())) + INIT
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _download(versions: dict[str, str], folder: str) -> dict[str, str]:
    """Each package's .deb in `folder` (apt-get download writes to the current directory)."""
    os.chmod(folder, 0o755)  # apt's unprivileged _apt user writes there when run as root
    _run(
        "apt-get", "download", "-q", *(f"{name}={version}" for name, version in versions.items()), cwd=folder
    )
    debs = {}
    for name in versions:
        found = [f for f in os.listdir(folder) if f.startswith(name + "_") and f.endswith(".deb")]
        if len(found) != 1:
            raise SystemExit(f"apt-get download left no single .deb for {name}: {found}")
        debs[name] = os.path.join(folder, found[0])
    return debs


def _deb_members(deb: str, wanted: re.Pattern[str]) -> dict[str, bytes]:
    """The files of a .deb whose path matches `wanted` (streamed through dpkg-deb, never unpacked to disk)."""
    found: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if member.isfile() and wanted.search(name):
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    found[name] = extracted.read()
    if proc.returncode != 0:
        raise SystemExit(f"dpkg-deb could not read {deb}")
    return found


def _module_depends(ko: bytes) -> list[str]:
    match = re.search(rb"\0depends=([^\0]*)\0", ko)
    return [d for d in match.group(1).decode().split(",") if d] if match else []


def _load_order(modules: dict[str, bytes]) -> list[str]:
    """MODULES and their dependencies, dependencies first."""
    order: list[str] = []

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in order:
            return
        if name not in modules:
            raise SystemExit(f"kernel module {name} is not in the kernel package")
        for dependency in _module_depends(modules[name]):
            visit(dependency)
        order.append(name)

    for module in MODULES:
        visit(module)
    return order


def _cpio(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive of (path, mode, data, rdev) entries; device nodes need no root here."""
    out = io.BytesIO()
    for ino, (path, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], start=1):
        name = path.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(name), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name)
        out.write(b"\0" * (-(110 + len(name)) % 4) + data + b"\0" * (-len(data) % 4))
    return out.getvalue()


def _initramfs(busybox: bytes, modules: dict[str, bytes], order: list[str]) -> bytes:
    directory, executable, regular, chardev = 0o040755, 0o100755, 0o100644, 0o020600
    entries = [(d, directory, b"", 0) for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules")]
    entries += [("dev/console", chardev, b"", (5 << 8) | 1), ("bin/busybox", executable, busybox, 0)]
    entries += [(f"lib/modules/{name}.ko", regular, modules[name], 0) for name in order]
    entries += [("lib/modules/load-order", regular, "\n".join(order).encode() + b"\n", 0)]
    entries += [("init", executable, INIT.encode(), 0)]
    return gzip.compress(_cpio(entries), compresslevel=6, mtime=0)


def build(cache: str | None = None) -> str:
    """The cache directory holding `vmlinuz` and `initrd.gz` for the current packages (built if absent)."""
    versions = packages()
    folder = os.path.join(cache or default_cache(), cache_key(versions))
    if os.path.exists(os.path.join(folder, "initrd.gz")):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(folder))
    try:
        debs = _download(versions, work)
        kernel_deb = next(deb for name, deb in debs.items() if name.startswith("linux-image-"))
        kernel_files = _deb_members(kernel_deb, re.compile(r"^boot/vmlinuz-|/kernel/(drivers|net)/.*\.ko$"))
        vmlinuz = next(data for name, data in kernel_files.items() if name.startswith("boot/vmlinuz-"))
        modules = {
            os.path.basename(n)[:-3].replace("-", "_"): d
            for n, d in kernel_files.items()
            if n.endswith(".ko")
        }
        busybox = _deb_members(debs["busybox-static"], re.compile(r"^bin/busybox$"))["bin/busybox"]
        result = os.path.join(work, "result")
        os.mkdir(result)
        with open(os.path.join(result, "vmlinuz"), "wb") as out:
            out.write(vmlinuz)
        with open(os.path.join(result, "initrd.gz"), "wb") as out:
            out.write(_initramfs(busybox, modules, _load_order(modules)))
        with open(os.path.join(result, "versions.txt"), "w") as out:
            out.writelines(f"{name}={version}\n" for name, version in sorted(versions.items()))
        try:
            os.rename(result, folder)  # atomic: a parallel build that finished first wins
        except OSError:
            if not os.path.exists(os.path.join(folder, "initrd.gz")):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def write_disk(path: str, marker: str, size: int = 1024 * 1024) -> None:
    """A raw disk image whose first line (the test image's init prints it) is `marker`."""
    head = marker.encode() + b"\n"
    if len(head) > 512 or b"\0" in head:
        raise ValueError("the marker must fit the first sector and hold no NUL")
    with open(path, "wb") as out:
        out.write(head)
        out.truncate(size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", default=None, help=f"cache directory (default {default_cache()})")
    parser.add_argument("--disk", nargs=2, metavar=("OUT", "MARKER"), help="write a raw disk image instead")
    args = parser.parse_args(argv)
    if args.disk:
        write_disk(args.disk[0], args.disk[1])
        print(args.disk[0])
    else:
        print(build(args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
