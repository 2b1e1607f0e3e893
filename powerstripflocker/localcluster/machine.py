"""This machine as a local cluster needs and leaves it: the tools it needs, the docker CLI
and an offline busybox image, whether a part answers, and the mounts and processes a
cluster leaves behind (found by path, pid file, process tree or network namespace)."""

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request

from powerstripflocker.localcluster.layout import ClusterError

BUSYBOX = "/bin/busybox"
BUSYBOX_IMAGE = "busybox:latest"


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def docker(host, *args, timeout=120, check=False, input=None):
    """Run the docker CLI against host; CompletedProcess with text output."""
    return subprocess.run(["docker", "-H", host, *args], capture_output=True, text=True,
                          timeout=timeout, check=check, input=input)


def docker_answers(host):
    try:
        return docker(host, "version", "--format", "{{.Server.Version}}",
                      timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def registered_nodes(control_url, token):
    request = urllib.request.Request(control_url + "/v1/state/nodes",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return {entry["host"] for entry in json.load(response)}
    except (OSError, ValueError, urllib.error.URLError):
        return set()


def missing_requirements(hosts="loopback"):
    """Why a local cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (dockerd, mounts)"
    tools = ("dockerd", "docker", "containerd", "runc", "tar", "unshare")
    if hosts == "netns":
        tools += ("ip", "tc", "nsenter", "sysctl")
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(BUSYBOX, os.X_OK):
        return f"{BUSYBOX} is not installed (Debian package busybox-static)"
    return None


def import_busybox_image(docker_host, image=BUSYBOX_IMAGE):
    """Make image from Debian's static busybox with `docker import`, offline; idempotent."""
    if docker(docker_host, "image", "inspect", image, timeout=30).returncode == 0:
        return image
    with tempfile.TemporaryDirectory(prefix="busybox-rootfs-") as rootfs:
        bin_dir = os.path.join(rootfs, "bin")
        os.makedirs(bin_dir)
        shutil.copy2(BUSYBOX, os.path.join(bin_dir, "busybox"))
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                os.symlink("busybox", os.path.join(bin_dir, applet))
        for directory in ("tmp", "etc", "root", "proc", "sys", "dev", "var", "data"):
            os.makedirs(os.path.join(rootfs, directory), exist_ok=True)
        os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
        with open(os.path.join(rootfs, "etc", "passwd"), "w") as passwd:
            passwd.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        with open(os.path.join(rootfs, "etc", "group"), "w") as group:
            group.write("root:x:0:\nnogroup:x:65534:\n")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "-H", docker_host, "import", "--change", 'CMD ["sh"]', "-", image],
            stdin=tar.stdout, capture_output=True, text=True, timeout=300,
        )
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0:
            raise ClusterError(f"docker import of {image} failed: {imported.stderr.strip()}")
    return image


def mounts_under(root):
    root = os.path.realpath(root)
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            target = line.split()[1].replace("\\040", " ")
            if target == root or target.startswith(root + "/"):
                found.append(target)
    return found


def unmount_under(root):
    """Unmount everything at or below root, deepest first."""
    for _ in range(5):
        targets = sorted(mounts_under(root), key=len, reverse=True)
        if not targets:
            return
        for target in targets:
            subprocess.run(["umount", target], capture_output=True)
    for target in sorted(mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def processes_mentioning(paths):
    """Pids of processes whose command line names one of paths (our leftovers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                text = cmdline.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if any(path in text for path in paths):
            found.append(int(entry))
    return found


def descendants(roots):
    """roots and every process below them (a container's processes sit below its shim)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def processes_in_network_namespace(inode):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def read_pid(path):
    try:
        with open(path) as pid_file:
            return int(pid_file.read().strip())
    except (OSError, ValueError):
        return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
