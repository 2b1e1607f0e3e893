"""Run every benchmark, then render bench/results/summary.md and summary.png.

    python bench/run_all.py            # the full set (about 10 minutes here)
    python bench/run_all.py --quick    # fewer iterations, 64 MiB moves; results in
                                       # bench/results/quick/
    python bench/run_all.py --only hook_latency,docker_run
    python bench/run_all.py --render   # only re-render from the JSON files

Each benchmark runs as its own process (its own cluster, torn down by itself), so one
failing does not stop the rest; the summary marks it as failed.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# name, script, full arguments, quick arguments
BENCHMARKS = [
    ("proxy_passthrough", "proxy_passthrough.py", [],
     ["--requests", "500", "--commands", "10", "--megabytes", "100", "--streams", "3"]),
    ("hook_latency", "hook_latency.py", ["--requests", "3000"], ["--requests", "500"]),
    ("docker_run", "docker_run.py", ["--runs", "30"], ["--runs", "8"]),
    ("move_large", "move_large.py", ["--megabytes", "1024"], ["--megabytes", "64"]),
    ("move_small", "move_small.py", ["--runs", "15"], ["--runs", "4"]),
    ("move_shaped", "move_shaped.py", ["--megabytes", "256"], ["--megabytes", "32"]),
    ("handoff", "handoff.py", ["--runs", "15"], ["--runs", "4"]),
    ("concurrency", "concurrency.py", [], []),
    ("concurrency_split", "concurrency.py", ["--mode", "split"], ["--mode", "split"]),
    ("control_store", "control_store.py", ["--requests", "1000", "--kills", "3"],
     ["--requests", "100", "--kills", "1"]),
]

TITLES = {
    "proxy_passthrough": "0. proxy pass-through",
    "hook_latency": "1. hook latency, volume local",
    "docker_run": "2. docker run, volume local",
    "move_large": "3. move a large dataset (tar baseline)",
    "move_small": "4. move a small volume",
    "move_shaped": "4b. move over a link shaped to 100 Mbit/s (tar | socat baseline)",
    "handoff": "6. refusal of a volume in use elsewhere; docker stop then docker run elsewhere",
    "concurrency": "5. 200 creates / 50 names, each from both nodes",
    "concurrency_split": "5b. same, each name from one node",
    "control_store": "7. hook with the control service on etcd (2 replicas) vs SQLite; kills",
}


def proxy_rows(result):
    """bench/proxy_passthrough.py writes its own format; the same rows from it."""
    k, r, t = result["keepalive"], result["ratios"], result["targets"]
    rows = [
        {"figure": "keep-alive GET p50", "value": k["proxy"]["p50_us"],
         "baseline": k["direct"]["p50_us"], "ratio": r["keepalive_p50_ratio"],
         "target": f"<= {t['keepalive_p50_ratio']:g}", "met": result["met"]["keepalive_p50"],
         "unit": "us"},
    ]
    for key in ("docker_ps", "docker_inspect"):
        rows.append({"figure": key.replace("_", " ") + " (median)",
                     "value": result[key]["proxy"]["median_ms"],
                     "baseline": result[key]["direct"]["median_ms"],
                     "ratio": r[key + "_ratio"], "target": f"<= {t['command_ratio']:g}",
                     "met": result["met"][key], "unit": "ms"})
    s = result["exec_stream"]
    rows.append({"figure": "docker exec stream (median)", "value": s["proxy"]["median_MBps"],
                 "baseline": s["direct"]["median_MBps"], "ratio": r["throughput_ratio"],
                 "target": f">= {t['throughput_ratio']:g}", "met": result["met"]["throughput"],
                 "unit": "MB/s"})
    return rows


def load_rows(directory, statuses, started=None):
    table = []
    for name, *_ in BENCHMARKS:
        path = os.path.join(directory, f"{name}.json")
        try:
            with open(path) as source:
                result = json.load(source)
        except (OSError, ValueError):
            table.append((name, None, None))
            continue
        rows = proxy_rows(result) if name == "proxy_passthrough" else result["rows"]
        if started is not None and os.path.getmtime(path) < started:
            statuses.setdefault(name, "not rerun")
            statuses[name] += "; figures from an earlier run"
        table.append((name, rows, result.get("machine")))
    return table


def fmt(value, unit):
    if value is None:
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()
                                  and abs(value) < 1e6 and not unit):
        return f"{int(value)}{(' ' + unit) if unit else ''}"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f} {unit}".strip()


def render_markdown(table, statuses, directory, quick):
    lines = [f"# Benchmark summary{' (quick run)' if quick else ''}", ""]
    machines = [m for _, _, m in table if m]
    if machines:
        m = machines[-1]
        lines += [f"Run {m.get('date', '?')}; {m.get('cpus')} cores, Python {m.get('python')}, "
                  f"kernel {m.get('kernel', '?')}, {m.get('dockerd', 'dockerd ?')}; "
                  f"load average at the last benchmark {m.get('load_1min', '?')}.", ""]
    lines += ["| benchmark | figure | value | baseline | ratio | target | met? |",
              "|---|---|---|---|---|---|---|"]
    for name, rows, _ in table:
        status = statuses.get(name)
        if rows is None:
            lines.append(f"| {TITLES[name]} | (no result{': ' + status if status else ''}) "
                         "| | | | | |")
            continue
        for index, r in enumerate(rows):
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
            lines.append(f"| {TITLES[name] if index == 0 else ''} | {r['figure'].strip()} | "
                         f"{fmt(r['value'], r['unit'])} | {fmt(r['baseline'], r['unit'])} | "
                         f"{ratio} | {r['target'] or ''} | {met} |")
        if status and status != "ok":
            lines.append(f"| | (this run: {status}; see its output) | | | | | |")
    lines += ["", "![ratios to baseline](summary.png)", ""]
    path = os.path.join(directory, "summary.md")
    with open(path, "w") as out:
        out.write("\n".join(lines))
    return path


def render_plot(table, directory):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -e .[bench]): no summary.png")
        return None
    labels, ratios, targets, colours = [], [], [], []
    for name, rows, _ in table:
        for r in rows or []:
            if r["ratio"] is None or not r["target"]:
                continue
            labels.append(f"{TITLES[name].split('. ', 1)[0]}. {r['figure'].strip()}")
            ratios.append(r["ratio"])
            targets.append(float(r["target"].split()[-1]))
            colours.append("tab:green" if r["met"] else "tab:red")
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, ratios, color=colours, height=0.6, label="measured ratio to baseline")
    ax.scatter(targets, y, marker="|", s=400, color="black", zorder=3, label="target")
    for yi, value in zip(y, ratios):
        ax.text(value, yi, f" {value:.2f}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("ratio to the baseline measured in the same run (log scale; green = "
                  "target met)")
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([0.5, 1, 1.5, 2, 3, 4, 6, 10])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8)
    fig.tight_layout()
    path = os.path.join(directory, "summary.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _raise_on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_child(argv, timeout):
    """Run one benchmark; on Ctrl-C, SIGTERM or its timeout, ask it to stop (SIGTERM)
    and wait for its own cleanup instead of killing it (subprocess.run would SIGKILL
    it and leave its cluster behind)."""
    child = subprocess.Popen(argv)
    try:
        return child.wait(timeout=timeout)
    except (KeyboardInterrupt, subprocess.TimeoutExpired) as reason:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child.terminate()
        try:
            child.wait(timeout=300)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if isinstance(reason, KeyboardInterrupt):
            raise
        return "timeout"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--render", action="store_true", help="only render the summary")
    options = parser.parse_args(argv)
    directory = os.path.join(RESULTS, "quick") if options.quick else RESULTS
    os.makedirs(directory, exist_ok=True)
    wanted = set(options.only.split(",")) if options.only else None
    signal.signal(signal.SIGTERM, _raise_on_term)
    statuses = {}
    started_all = time.time()
    if not options.render:
        for name, script, full, quick in BENCHMARKS:
            if wanted and name not in wanted:
                continue
            argv = [sys.executable, os.path.join(HERE, script), *(quick if options.quick
                                                                  else full),
                    "--output", os.path.join(directory, f"{name}.json")]
            print(f"=== {name}: {' '.join(argv[1:])}", flush=True)
            started = time.perf_counter()
            code = run_child(argv, timeout=3600)
            seconds = time.perf_counter() - started
            statuses[name] = "ok" if code == 0 else f"exit {code}"
            print(f"=== {name}: {statuses[name]} in {seconds:.0f}s", flush=True)
    table = load_rows(directory, statuses, None if options.render else started_all)
    print(f"wrote {render_markdown(table, statuses, directory, options.quick)}")
    plot = render_plot(table, directory)
    if plot:
        print(f"wrote {plot}")
    failed = [name for name, status in statuses.items() if status != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
