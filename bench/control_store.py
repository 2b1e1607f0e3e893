"""Hook latency with the control service on etcd against SQLite, and recovery from kills.

    python bench/control_store.py [--requests 200] [--kills 3]

Starts two control planes on loopback, each with one agent (directory backend) and one
adapter: (1) one control service on SQLite (`control --db PATH`); (2) a real three-member
etcd cluster (Debian's etcd, as tests/support/etcd.py starts it) and two control replicas
on it (`control --store etcd://M1,M2,M3/bench`), the agent and the adapter given both
(`--control-url R1,R2`). Volume `storelat` is made local through each adapter, then the
same Powerstrip create pre-hook is POSTed to both adapters over one keep-alive connection
each, in alternating blocks of 50 after 50 warm-ups: p50 and p90 of each.

Where the time goes (the same hooks, back to back, at most 300 on each plane): CPU per
hook of every process (/proc/PID/stat), etcd requests per hook (the members' own
grpc_server_handled_total), the claim the adapter sends POSTed straight to the control
service, and a range and a transaction on etcd's JSON gateway alone.

Then, on the etcd plane, hooks run back to back from a thread while the replica the
adapter is using is killed -9 (the first --control-url the first time; after a restart of
the one killed, the other, and so on), and then while the etcd leader is killed -9 (and
restarted before the next round). Each figure is the time from the kill to the end of the
first hook sent after it that answers 200; hooks that failed meanwhile are counted.

Target: etcd p50 <= 1.5x the SQLite p50.
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request

from common import (RESULTS, free_port, interleaved_latencies, median, percentile,
                    print_rows, row, write_result)
from hook_latency import Client, envelope
from tests.support.etcd import EtcdCluster, etcd_missing
from tests.support.processes import ManagedProcess

TARGET = 1.5
NAME = "storelat"
TOKEN = "bench-control-store-token"
PREFIX = "bench"
PROFILE_HOOKS = 300


def _raise_on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class Plane:
    """Control replicas (on one store), an agent and an adapter, as real processes."""

    def __init__(self, label, base, store_args, replicas):
        self.label = label
        self.base = base
        self.store_args = store_args
        os.makedirs(base, exist_ok=True)
        self.token_file = os.path.join(base, "cluster.token")
        with open(self.token_file, "w") as token:
            token.write(TOKEN + "\n")
        self.control_ports = [free_port() for _ in range(replicas)]
        self.controls = [None] * replicas
        self.agent = self.adapter = None
        self.adapter_port = free_port()

    @property
    def control_url(self):
        return ",".join(f"http://127.0.0.1:{port}" for port in self.control_ports)

    def _command(self, name, args):
        return ManagedProcess.command(args, os.path.join(self.base, f"{name}.log")).start()

    def start_control(self, index):
        port = self.control_ports[index]
        process = self._command(f"control{index + 1}", [
            "control", "--listen", f"tcp:{port}:interface=127.0.0.1", *self.store_args,
            "--cluster-token-file", self.token_file])
        process.wait_for_http(f"http://127.0.0.1:{port}/v1/version")
        self.controls[index] = process
        return process

    def start(self):
        for index in range(len(self.control_ports)):
            self.start_control(index)
        agent_port = free_port()
        self.agent = self._command("agent", [
            "agent", "--control-url", self.control_url, "--backend", "directory",
            "--data-root", os.path.join(self.base, "agent"),
            "--listen", f"tcp:{agent_port}:interface=127.0.0.1",
            "--cluster-token-file", self.token_file])
        self.agent.wait_for_http(f"http://127.0.0.1:{agent_port}/agent/v1/health")
        self.adapter = self._command("adapter", [
            "adapter", "--control-url", self.control_url,
            "--listen", f"tcp:{self.adapter_port}:interface=127.0.0.1",
            "--cluster-token-file", self.token_file])
        self.adapter.wait_for_http(f"http://127.0.0.1:{self.adapter_port}/healthz")
        return self

    def client(self):
        return Client("127.0.0.1", self.adapter_port)

    def stop(self):
        for process in (self.adapter, self.agent, *self.controls):
            if process is not None:
                process.stop()


def first_hook(plane, body, timeout=120):
    """The first hook (it creates the volume): retried until the agent has reported
    this node, so that the adapter can find its UUID."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return plane.client().post(body)
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class BackToBack:
    """Hooks sent one after another from a thread, each recorded as (sent, ended, status),
    on a fresh connection after a failure (the adapter may have closed it)."""

    def __init__(self, plane, body):
        self.plane = plane
        self.body = body
        self.hooks = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(timeout=180)

    def _run(self):
        client = self.plane.client()
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                client.post(self.body)
                status = "200"
            except RuntimeError as error:
                status = str(error)[:120]
                client = self.plane.client()
            except OSError as error:
                status = f"{type(error).__name__}: {error}"[:120]
                client = self.plane.client()
            self.hooks.append((sent, time.monotonic(), status))

    def recovery_after(self, killed_at, timeout=120):
        """Seconds from killed_at to the end of the first hook sent after it that
        answered 200; the failures among the hooks that ended after killed_at."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sent, ended, status in list(self.hooks):
                if sent >= killed_at and status == "200":
                    failures = [s for _, e, s in self.hooks
                                if killed_at <= e <= ended and s != "200"]
                    in_flight = [e - killed_at for s_, e, _ in self.hooks
                                 if s_ < killed_at <= e]
                    return {"seconds": ended - killed_at, "failed_hooks": failures,
                            "in_flight_hook_ended_after_s": in_flight[0] if in_flight else None}
            time.sleep(0.01)
        raise RuntimeError(f"no successful hook within {timeout}s of the kill: "
                           f"{self.hooks[-3:]}")


def cpu_seconds(pid):
    """utime + stime of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def etcd_requests(etcd):
    """{grpc method: requests handled} summed over the running members (their /metrics)."""
    counts = {}
    for member in etcd.members:
        if not member.running:
            continue
        with urllib.request.urlopen(member.client_url + "/metrics", timeout=10) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith("grpc_server_handled_total{"):
                    method = line.split('grpc_method="', 1)[1].split('"', 1)[0]
                    counts[method] = counts.get(method, 0) + float(line.rsplit(" ", 1)[1])
    return counts


class Gateway:
    """etcd's JSON gateway of one member over one keep-alive connection: the store's
    own round trips, without the control service."""

    def __init__(self, member):
        self.connection = http.client.HTTPConnection("127.0.0.1", member.client_port,
                                                     timeout=30)

    def call(self, path, body):
        self.connection.request("POST", path, json.dumps(body),
                                {"Content-Type": "application/json"})
        answer = self.connection.getresponse()
        data = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"etcd {path}: {answer.status} {data[:200]!r}")
        return data


def etcd_round_trips(etcd, count):
    """p50 of a linearizable range of one key and of a transaction like a claim's (three
    compares, two puts) on the first member of the store's list, as the replicas use."""
    def key(name):
        return base64.b64encode(f"/bench-raw/{name}".encode()).decode()
    gateway = Gateway(etcd.members[0])
    compares = [{"key": key(k), "target": "MOD", "result": "GREATER", "mod_revision": "-1"}
                for k in ("a", "b", "c")]
    puts = [{"request_put": {"key": key(k), "value": key("v")}} for k in ("a", "guard")]
    operations = {"range": ("/v3/kv/range", {"key": key("a")}),
                  "txn": ("/v3/kv/txn", {"compare": compares, "success": puts})}
    figures = {}
    for name, (path, body) in operations.items():
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            gateway.call(path, body)
            samples.append(time.perf_counter() - start)
        figures[f"{name}_p50_us"] = percentile(samples, 0.5) * 1e6
    return figures


def claim_latency(plane, count):
    """p50 of the claim the adapter sends for a local volume, POSTed straight to the
    (first) control replica: the control service and its store without the adapter."""
    with open(os.path.join(plane.base, "agent", "node-uuid")) as node_file:
        node_uuid = node_file.read().strip()
    body = json.dumps({"name": NAME, "node_uuid": node_uuid, "expires": 30.0,
                       "create": True})
    connection = http.client.HTTPConnection("127.0.0.1", plane.control_ports[0], timeout=30)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        connection.request("POST", "/v1/configuration/claims", body,
                           {"Content-Type": "application/json",
                            "Authorization": f"Bearer {TOKEN}"})
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"claim: {answer.status}")
        samples.append(time.perf_counter() - start)
    return percentile(samples, 0.5) * 1e6


def breakdown(plane, body, count, etcd=None):
    """Where a hook's time goes: CPU per hook of each process and etcd requests per hook
    over count hooks back to back, then the claim straight to the control service."""
    processes = {"adapter": plane.adapter, "agent": plane.agent,
                 **{f"control{i + 1}": c for i, c in enumerate(plane.controls)}}
    pids = {name: process.process.pid for name, process in processes.items()}
    if etcd is not None:
        pids.update({m.name: m.process.pid for m in etcd.members})
        requests_before = etcd_requests(etcd)
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client = plane.client()
    started = time.perf_counter()
    for _ in range(count):
        client.post(body)
    seconds = time.perf_counter() - started
    result = {"wall_ms_per_hook": seconds / count * 1000,
              "cpu_ms_per_hook": {name: (cpu_seconds(pid) - cpu_before[name]) / count * 1000
                                  for name, pid in pids.items()}}
    if etcd is not None:
        after = etcd_requests(etcd)
        result["etcd_requests_per_hook"] = {
            method: (after[method] - requests_before.get(method, 0)) / count
            for method in sorted(after) if after[method] > requests_before.get(method, 0)}
    result["claim_p50_us"] = claim_latency(plane, count)
    return result


def kill_replicas(plane, body, kills, progress):
    """Kill -9 the replica the adapter uses (first the first of its list), measure, and
    start it again; the adapter then uses the other one, which is the next to go."""
    results = []
    victim = 0
    for _ in range(kills):
        with BackToBack(plane, body) as hooks:
            time.sleep(1.0)
            killed_at = time.monotonic()
            plane.controls[victim].kill()
            result = hooks.recovery_after(killed_at)
            time.sleep(0.5)
        result["replica"] = f"control{victim + 1}"
        progress(f"  killed {result['replica']}: next successful hook after "
                 f"{result['seconds'] * 1000:.0f} ms, {len(result['failed_hooks'])} failed")
        results.append(result)
        plane.start_control(victim)
        victim = 1 - victim
    return results


def kill_leaders(plane, etcd, body, kills, progress):
    results = []
    for _ in range(kills):
        leader = etcd.leader()
        with BackToBack(plane, body) as hooks:
            time.sleep(1.0)
            killed_at = time.monotonic()
            etcd.kill(leader)
            result = hooks.recovery_after(killed_at)
            time.sleep(0.5)
        result["member"] = leader.name
        progress(f"  killed etcd leader {leader.name}: next successful hook after "
                 f"{result['seconds'] * 1000:.0f} ms, {len(result['failed_hooks'])} failed")
        results.append(result)
        etcd.restart(leader)
    return results


def recovery_rows(what, results):
    if not results:
        return []
    seconds = [r["seconds"] * 1000 for r in results]
    failed = sum(len(r["failed_hooks"]) for r in results)
    return [row(f"{what} -> next good hook, median of {len(seconds)}", median(seconds),
                None, None, None, None, "ms"),
            row(f"  max ({failed} hooks failed meanwhile)", max(seconds), None, None, None,
                None, "ms")]


def profile_rows(profile):
    """What a hook costs on each store: the figures behind the ratio."""
    etcd, sqlite, gateway = profile["etcd"], profile["sqlite"], profile["etcd_gateway"]

    def ratio_row(figure, value, baseline, unit):
        return row(figure, value, baseline, value / baseline if baseline else None, None,
                   None, unit)

    control_cpu = sum(v for k, v in etcd["cpu_ms_per_hook"].items() if k.startswith("control"))
    members_cpu = sum(v for k, v in etcd["cpu_ms_per_hook"].items() if k.startswith("member"))
    requests = etcd["etcd_requests_per_hook"]
    return [
        ratio_row("claim POSTed straight to control, p50", etcd["claim_p50_us"],
                  sqlite["claim_p50_us"], "us"),
        ratio_row("control replicas' CPU per hook", control_cpu,
                  sqlite["cpu_ms_per_hook"]["control1"], "ms"),
        ratio_row("adapter + agent CPU per hook",
                  etcd["cpu_ms_per_hook"]["adapter"] + etcd["cpu_ms_per_hook"]["agent"],
                  sqlite["cpu_ms_per_hook"]["adapter"] + sqlite["cpu_ms_per_hook"]["agent"],
                  "ms"),
        row("etcd members' CPU per hook", members_cpu, None, None, None, None, "ms"),
        row(f"etcd requests per hook ({', '.join(f'{k} {v:.2f}' for k, v in requests.items())})",
            sum(requests.values()), None, None, None, None, ""),
        row("etcd gateway alone: range p50", gateway["range_p50_us"], None, None, None, None,
            "us"),
        row("etcd gateway alone: txn p50 (3 compares, 2 puts)", gateway["txn_p50_us"], None,
            None, None, None, "us"),
    ]


def run(options, base, progress=print):
    body = envelope(NAME)
    planes = {}
    etcd = None
    try:
        planes["sqlite"] = Plane("sqlite", os.path.join(base, "sqlite"),
                                 ["--db", os.path.join(base, "sqlite", "control.db")], 1)
        os.makedirs(os.path.join(base, "etcd"))
        etcd = EtcdCluster(os.path.join(base, "etcd")).start()
        planes["etcd"] = Plane("etcd", os.path.join(base, "etcd-plane"),
                               ["--store", f"{etcd.endpoint}/{PREFIX}"], 2)
        for label, plane in planes.items():
            plane.start()
            first_hook(plane, body)
            progress(f"  {label}: control {plane.control_url}, volume {NAME} local")
        progress(f"{options.requests} hooks each, etcd vs SQLite ...")
        figures = interleaved_latencies(
            {label: plane.client() for label, plane in planes.items()}, body,
            options.requests)
        count = min(options.requests, PROFILE_HOOKS)
        progress(f"where the time goes: {count} hooks back to back on each ...")
        profile = {"sqlite": breakdown(planes["sqlite"], body, count),
                   "etcd": breakdown(planes["etcd"], body, count, etcd),
                   "etcd_gateway": etcd_round_trips(etcd, count)}
        progress(f"killing the adapter's control replica {options.kills} times ...")
        replica_kills = kill_replicas(planes["etcd"], body, options.kills, progress)
        progress(f"killing the etcd leader {options.kills} times ...")
        leader_kills = kill_leaders(planes["etcd"], etcd, body, options.kills, progress)
    finally:
        for plane in planes.values():
            plane.stop()
        if etcd is not None:
            etcd.stop()
    return figures, profile, replica_kills, leader_kills


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--kills", type=int, default=3,
                        help="kills of each kind (0: measure latency only)")
    parser.add_argument("--output")
    options = parser.parse_args(argv)
    reason = etcd_missing()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_on_term)
    base = tempfile.mkdtemp(prefix="psf-bench-store-")
    logs = os.path.join(RESULTS, "logs", "control_store")
    try:
        figures, profile, replica_kills, leader_kills = run(options, base)
    finally:
        shutil.rmtree(logs, ignore_errors=True)
        shutil.copytree(base, logs, ignore=shutil.ignore_patterns("agent", "member[0-9]",
                                                                 "*.db*"))
        shutil.rmtree(base, ignore_errors=True)
    e, s = figures["etcd"], figures["sqlite"]
    ratio = e["p50_us"] / s["p50_us"]
    rows = [row("hook p50, etcd (2 replicas) / SQLite", e["p50_us"], s["p50_us"], ratio,
                f"<= {TARGET:g}", ratio <= TARGET, "us"),
            row("hook p90, etcd / SQLite", e["p90_us"], s["p90_us"],
                e["p90_us"] / s["p90_us"], None, None, "us"),
            *recovery_rows("control replica kill -9", replica_kills),
            *recovery_rows("etcd leader kill -9", leader_kills),
            *profile_rows(profile)]
    print_rows(rows)
    write_result("control_store", {"benchmark": "control_store", "figures": figures,
                                   "profile": profile,
                                   "replica_kills": replica_kills,
                                   "leader_kills": leader_kills, "rows": rows},
                 options.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
