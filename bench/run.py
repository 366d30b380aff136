"""The benchmark: `make bench`, or `.venv/bin/python bench/run.py SCENARIO [flags]`.

Scenarios (default: all four, each beside the naive design of bench/naive.py):

  fanout    --watchers 5000 --rate 1000 --seconds 20 --servers 2 --placers 1000
            (PostgreSQL+Redis)
  ingest    --players 1500 --seconds 15 --databases sqlite,postgres
  snapshot  --sizes 1000,2000
  idle      --connections 10000 --seconds 120   (two keepalive-ping periods)
  connect   --connections 2000 --inflight 250   (a storm of handshakes, then
            all dropped at once; PostgreSQL+Redis; not in `all`)

--seconds defaults to each scenario's window above.

Everything runs against 127.0.0.1 on fresh databases (PostgreSQL databases are
created and dropped; Redis DB 8 is flushed), stops by itself, prints its figures
and appends them to bench/RESULTS.md under the scenario's heading.

The load generator's sockets are driven by bench/wsload.c, a single-threaded
epoll WebSocket client in C compiled once into bench/.build/ (`--engine c`, the
default when a C compiler is there): it takes about half the CPU of the asyncio
client, most of what is left being the kernel's TCP work. `--engine python` runs
the asyncio client of bench/loadgen.py instead, the reference with the same
semantics. Every report gives the load generator's own CPU (`loadgen_cpu_cores`).
The load processes run under SCHED_BATCH (`--loadgen-sched batch`, the
default): their wake-ups on loopback do not preempt the servers mid-frame, as
remote browsers' cannot; `--loadgen-sched normal` measures without it.
"""

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PLACE_TEST_REDIS_DB", "8")

from bench import loadgen  # noqa: E402
from tests import live  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
HEADINGS = {
    "fanout": "## fan-out",
    "ingest": "## ingest",
    "snapshot": "## snapshot",
    "idle": "## idle",
    "connect": "## connection storm",
}
# The flags docs/deploy.md recommends for production daphne processes: a keepalive
# ping a minute, not every 20 s (each ping and its pong cost the process about
# 0.2 ms; at 20 s that alone was ~12 % of a core for 10,000 idle sockets).
DAPHNE_FLAGS = ["--ping-interval", "60", "--ping-timeout", "30"]
# Idle covers two keepalive-ping periods, so each socket's pings are inside it.
DEFAULT_SECONDS = {"fanout": 20, "ingest": 15, "idle": 120}
DEFAULT_CONNECTIONS = {"idle": 10000, "connect": 2000}
# `layers` is a fan-out detail: it records under the fan-out heading.
APPS = {"hub": "placeproject.asgi:application", "naive": "bench.naive:application"}
SERVER_ENV = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "bench-only-secret-key-bench-only-secret-key",
    "DJANGO_SECURE_SSL_REDIRECT": "false",
    "PLACE_MESSAGE_RATE": "0",
    "PLACE_MAX_CONNECTIONS_PER_IP": "0",
    "PLACE_IP_LIMIT": "0",
    "PLACE_LOG_LEVEL": "WARNING",
}


# ---------------------------------------------------------------- the machine


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{os.cpu_count()} cores, {model}, {mem_kb / 1024 / 1024:.1f} GiB RAM, "
        f"Python {platform.python_version()}"
    )


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


class Meter:
    """CPU of the servers and of the whole machine over a window."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.cpu = [proc_cpu(p) for p in pids]
        self.busy = machine_busy()
        self.wall = time.monotonic()

    def read(self) -> dict:
        wall = time.monotonic() - self.wall
        busy, total = machine_busy()
        server = sum(proc_cpu(p) - c for p, c in zip(self.pids, self.cpu, strict=True))
        return {
            "wall": wall,
            "server_cores": server / wall,
            "machine_busy": (busy - self.busy[0]) / max(1, total - self.busy[1]),
            "server_rss_mb": [round(proc_rss_mb(p), 1) for p in self.pids],
        }


# ------------------------------------------------------------------- stacks


def stack_up(database: str, redis: bool, servers: int, app: str, extra=None):
    tmp = Path(tempfile.mkdtemp(prefix="placebench-"))
    stack = live.make_stack(
        tmp,
        database=database,
        redis=redis,
        servers=0,
        env={**SERVER_ENV, **(extra or {})},
    )
    stack.manage("createcanvas", "bench", "--width", "1000", "--height", "1000")
    stack.manage("createcanvas", "bench", "--cooldown", "0")
    for _ in range(servers):
        start_server(stack, APPS[app])
    return stack


def start_server(stack, app: str):
    port = live.free_port()
    log = stack.tmp / f"daphne-{port}.log"
    script = (
        "import resource,sys;"
        "h=resource.getrlimit(resource.RLIMIT_NOFILE)[1];"
        "resource.setrlimit(resource.RLIMIT_NOFILE,(h,h));"
        "from placeproject.server import PlaceCommandLine as C;"
        f"C().run(['-b','127.0.0.1','-p','{port}',"
        "'--websocket_connect_timeout','120',"
        + "".join(f"'{flag}'," for flag in DAPHNE_FLAGS)
        + f"'{app}'])"
    )
    if os.environ.get("BENCH_PROFILE"):  # a directory: cProfile each server there
        out = Path(os.environ["BENCH_PROFILE"]) / f"daphne-{port}.prof"
        script = f"import cProfile;cProfile.run({script!r},{str(out)!r})"
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=stack.env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = live.Server(port=port, process=process, log=log)
    stack.servers.append(server)
    live.wait_ready(server)
    return server


def sessions(stack, count: int) -> list[str]:
    """`count` anonymous sessions, made in the database directly (fast)."""
    if not count:
        return []
    script = (
        "import secrets,datetime\n"
        "from django.utils import timezone\n"
        "from django.contrib.sessions.models import Session\n"
        "from django.contrib.sessions.backends.db import SessionStore\n"
        "data=SessionStore().encode({'bench':True})\n"
        f"keys=[secrets.token_hex(16) for _ in range({count})]\n"
        "later=timezone.now()+datetime.timedelta(days=1)\n"
        "Session.objects.bulk_create([Session(session_key=k,session_data=data,"
        "expire_date=later) for k in keys])\n"
        "print('\\n'.join(keys))\n"
    )
    out = stack.manage("shell", "-c", script).stdout.split()
    return [k for k in out if len(k) == 32]


def run_workers(jobs: list[dict], settle: float = 1.0, meter_pids=()):
    """Start the workers, wait until every socket is open, go, gather reports."""
    ctx = multiprocessing.get_context("fork")
    ready, go, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=loadgen.run_worker, args=(job, ready, go, results))
        for job in jobs
    ]
    opening = Meter(list(meter_pids))
    for proc in procs:
        proc.start()
    opened = [ready.get(timeout=900) for _ in procs]
    opening = opening.read()
    time.sleep(settle)
    meter = Meter(list(meter_pids))
    t0 = time.time() + 0.5
    for _ in procs:
        go.put(t0)
    reports = [results.get(timeout=900) for _ in procs]
    usage = meter.read()
    usage["opening"] = opening  # the same figures, from start until all opened
    for proc in procs:
        proc.join(timeout=30)
    return opened, reports, usage


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


# ------------------------------------------------------------------ scenarios


def fanout(args, design: str) -> dict:
    stack = stack_up("postgres", True, args.servers, design)
    try:
        cookies = sessions(stack, args.placers)
        ports = [s.port for s in stack.servers]
        path = "/ws/canvases/bench/"
        jobs = []
        for i, count in enumerate(split(args.watchers, args.procs)):
            jobs.append(
                {
                    "role": "watch",
                    "host": "127.0.0.1",
                    "port": ports[i % len(ports)],
                    "path": path,
                    "count": count,
                    "sample": args.sample,
                    "rate": args.rate,
                    "width": 1000,
                    "seconds": args.seconds,
                    "drain": 3.0,
                    "engine": args.engine,
                }
            )
        for i, chunk in enumerate(split(len(cookies), len(ports))):
            start = sum(split(len(cookies), len(ports))[:i])
            jobs.append(
                {
                    "role": "place",
                    "host": "127.0.0.1",
                    "port": ports[i],
                    "path": path,
                    "cookies": cookies[start : start + chunk],
                    "rate": args.rate,
                    "width": 1000,
                    "height": 1000,
                    "seconds": args.seconds,
                    "stride": len(ports),
                    "offset": i,
                    "engine": args.engine,
                }
            )
        pids = [s.process.pid for s in stack.servers]
        opened, reports, usage = run_workers(jobs, meter_pids=pids)
        inside = hub_figures(stack) if design == "hub" else {}
    finally:
        stack.stop()
    watch = [r for r in reports if r["role"] == "watch"]
    place = [r for r in reports if r["role"] == "place"]
    final = max(r["max_seq"] for r in place)
    expected = received = 0
    for r in watch:
        for got, hello in zip(r["received"], r["hello"], strict=True):
            expected += max(0, final - hello)
            received += got
    latencies = [x for r in watch for x in r["latencies"]]
    accepted = sum(r["accepted"] for r in place)
    sockets = sum(r["sockets"] for r in watch)
    return {
        "design": design,
        "watchers_open": sockets,
        "watchers_failed": sum(r["failures"] for r in watch),
        "placements_accepted": accepted,
        "placements_per_s": round(accepted / args.seconds, 1),
        "rejected": _merge([r["codes"] for r in place]),
        "placer_max_late_s": round(max(r["late"] for r in place), 3),
        "placements_not_sent": sum(r["unsent"] for r in place),
        "delivered_pct": round(100 * received / expected, 2) if expected else 0.0,
        "latency_ms": {
            "p50": round(pct(latencies, 0.5) * 1000, 1),
            "p99": round(pct(latencies, 0.99) * 1000, 1),
            "max": round(max(latencies, default=float("nan")) * 1000, 1),
            "samples": len(latencies),
        },
        "frames_per_s_per_client": round(
            sum(r["frames"] for r in watch) / max(1, sockets) / args.seconds, 2
        ),
        "seq_gaps": sum(r["gaps"] for r in watch),
        "seq_repeats": sum(r["repeats"] for r in watch),
        "closed_by_server": sum(r["closed_by_server"] for r in watch),
        **inside,
        **_usage(usage, reports),
    }


def _merge(dicts) -> dict:
    return loadgen._merge(dicts)


def _usage(usage: dict, reports: list[dict]) -> dict:
    return {
        "server_cpu_cores": round(usage["server_cores"], 2),
        "server_rss_mb": usage["server_rss_mb"],
        "loadgen_cpu_cores": round(sum(r["cpu"] for r in reports) / usage["wall"], 2),
        "loadgen_procs": len(reports),
        "loadgen_sched": ",".join(sorted({r.get("sched", "unknown") for r in reports})),
        "machine_busy_pct": round(usage["machine_busy"] * 100, 1),
    }


def ingest(args, design: str, database: str) -> dict:
    stack = stack_up(database, True, args.servers, design)
    try:
        cookies = sessions(stack, args.players)
        ports = [s.port for s in stack.servers]
        jobs = []
        parts = split(len(cookies), args.ingest_procs)
        for i, count in enumerate(parts):
            start = sum(parts[:i])
            jobs.append(
                {
                    "role": "ingest",
                    "host": "127.0.0.1",
                    "port": ports[i % len(ports)],
                    "path": "/ws/canvases/bench/",
                    "cookies": cookies[start : start + count],
                    "width": 1000,
                    "height": 1000,
                    "seconds": args.seconds,
                    "engine": args.engine,
                }
            )
        pids = [s.process.pid for s in stack.servers]
        _, reports, usage = run_workers(jobs, meter_pids=pids)
        batches = batch_figures(stack) if design == "hub" else {}
        committed = stack.manage(
            "shell",
            "-c",
            "from canvas.models import Placement;print(Placement.objects.count())",
        ).stdout.split()[-1]
    finally:
        stack.stop()
    accepted = sum(r["accepted"] for r in reports)
    return {
        "design": design,
        "database": database,
        "players": sum(r["sockets"] for r in reports),
        "players_failed": sum(r["failures"] for r in reports),
        "accepted": accepted,
        "committed_rows": int(committed),
        "accepted_per_s": round(accepted / args.seconds, 1),
        # Per server: how evenly the servers' players were served (one
        # server's writer could starve the other's).
        "accepted_by_server": _by_server(reports),
        "rejected": _merge([r["codes"] for r in reports]),
        **batches,
        **_usage(usage, reports),
    }


def _by_server(reports: list[dict]) -> list[int]:
    """Accepted placements per server, in the servers' port order."""
    totals: dict[int, int] = {}
    for report in reports:
        totals[report["port"]] = totals.get(report["port"], 0) + report["accepted"]
    return [totals[port] for port in sorted(totals)]


def metric_sums(stack) -> dict[str, float]:
    """Every histogram's _sum and _count, added up over the servers' /metrics."""
    import urllib.request

    sums: dict[str, float] = {}
    for server in stack.servers:
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name.startswith("place_") and name.endswith(("_sum", "_count")):
                    sums[name] = sums.get(name, 0.0) + float(value)
    return sums


def hub_figures(stack) -> dict:
    """The servers' own view of a fan-out run: where a change's time goes."""
    sums = metric_sums(stack)

    def mean_ms(name: str) -> float:
        count = sums.get(f"{name}_count", 0) or 1
        return round(sums.get(f"{name}_sum", 0) / count * 1000, 1)

    return {
        "commit_ms_mean": mean_ms("place_ingest_batch_seconds"),
        "hub_lag_ms_mean": mean_ms("place_broadcast_lag_seconds"),
        "tick_write_ms_mean": mean_ms("place_broadcast_tick_seconds"),
    }


def batch_figures(stack) -> dict:
    """Mean group-commit batch size and time, from every server's /metrics."""
    sums = metric_sums(stack)
    count = sums.get("place_ingest_batch_size_count", 0) or 1
    return {
        "batches": int(sums.get("place_ingest_batch_size_count", 0)),
        "mean_batch": round(sums.get("place_ingest_batch_size_sum", 0) / count, 1),
        "mean_batch_ms": round(
            sums.get("place_ingest_batch_seconds_sum", 0) / count * 1000, 1
        ),
    }


def commit_path(database: str) -> dict:
    """bench/commitpath.py on a fresh database: the batch function alone."""
    tmp = Path(tempfile.mkdtemp(prefix="placebench-"))
    stack = live.make_stack(tmp, database=database, servers=0, env=SERVER_ENV)
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "commitpath.py")],
            cwd=ROOT,
            env=stack.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
    finally:
        stack.stop()
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "database": database,
        **{
            f"batch {k}": f"{v['per_s']}/s ({v['ms_per_batch']} ms)"
            for k, v in figures.items()
        },
    }


def idle(args, design: str) -> dict:
    stack = stack_up("postgres", True, args.servers, design)
    try:
        pids = [s.process.pid for s in stack.servers]
        ports = [s.port for s in stack.servers]
        time.sleep(2)
        rss_before = sum(proc_rss_mb(p) for p in pids)
        jobs = idle_watchers(args, ports, seconds=args.seconds)
        opened, reports, usage = run_workers(jobs, settle=5.0, meter_pids=pids)
    finally:
        stack.stop()
    sockets = sum(r["sockets"] for r in reports)
    rss_after = sum(usage["server_rss_mb"])
    return {
        "design": design,
        "connections_open": sockets,
        "connections_failed": sum(r["failures"] for r in reports),
        "server_rss_mb_before": round(rss_before, 1),
        "server_rss_mb_after": round(rss_after, 1),
        "kb_per_connection": round(
            (rss_after - rss_before) * 1024 / max(1, sockets), 1
        ),
        "idle_cpu_pct_of_a_core": round(usage["server_cores"] * 100, 2),
        "idle_window_s": round(usage["wall"], 1),
        "closed_by_server": sum(r["closed_by_server"] for r in reports),
        **_usage(usage, reports),
    }


def idle_watchers(args, ports: list[int], seconds: float, inflight=None) -> list:
    """`--connections` watchers that only listen, spread over the load processes."""
    jobs = [
        {
            "role": "watch",
            "host": "127.0.0.1",
            "port": ports[i % len(ports)],
            "path": "/ws/canvases/bench/",
            "count": count,
            "seconds": seconds,
            "drain": 0.0,
            "engine": args.engine,
        }
        for i, count in enumerate(split(args.connections, args.procs))
    ]
    if inflight is not None:
        for job in jobs:
            job["inflight"] = inflight
    return jobs


def connect(args, design: str) -> dict:
    """A storm: `--connections` sockets opened at once (`--inflight` handshakes
    in flight per load process), as when every client of a restarted process
    comes back. How fast they get in, what it costs, and how soon their rows
    are gone once they all drop."""
    stack = stack_up("postgres", True, args.servers, design)
    try:
        pids = [s.process.pid for s in stack.servers]
        ports = [s.port for s in stack.servers]
        jobs = idle_watchers(args, ports, seconds=1.0, inflight=args.inflight)
        opened, reports, usage = run_workers(jobs, settle=0.0, meter_pids=pids)
        closed_at = time.monotonic()
        rows = stack_rows(stack)
        while rows and time.monotonic() - closed_at < 60:
            time.sleep(0.5)
            rows = stack_rows(stack)
        rows_gone_s = time.monotonic() - closed_at
    finally:
        stack.stop()
    opening = usage["opening"]
    sockets = sum(count for _, count, _ in opened)
    return {
        "design": design,
        "connections_open": sockets,
        "connections_failed": sum(failed for _, _, failed in opened),
        "inflight": args.inflight * len(jobs),
        "open_s": round(opening["wall"], 2),
        "handshakes_per_s": round(sockets / opening["wall"], 1),
        "server_cpu_cores": round(opening["server_cores"], 2),
        "loadgen_cpu_cores": round(
            sum(r.get("cpu_connect", 0.0) for r in reports) / opening["wall"], 2
        ),
        "machine_busy_pct": round(opening["machine_busy"] * 100, 1),
        "rows_left": rows,
        "rows_gone_s": round(rows_gone_s, 1) if not rows else None,
        "server_rss_mb": usage["server_rss_mb"],
    }


def stack_rows(stack) -> int:
    """Connection rows in the stack's database (PostgreSQL)."""
    import psycopg

    with psycopg.connect(stack.env["DATABASE_URL"]) as conn:
        return conn.execute("SELECT count(*) FROM canvas_connection").fetchone()[0]


def snapshot(args) -> list[dict]:
    out = []
    for database in ("postgres", "sqlite"):
        tmp = Path(tempfile.mkdtemp(prefix="placebench-"))
        stack = live.make_stack(tmp, database=database, servers=0, env=SERVER_ENV)
        try:
            sizes = [s.strip() for s in args.sizes.split(",")]
            result = subprocess.run(
                [sys.executable, str(ROOT / "bench" / "snapshot.py"), *sizes],
                cwd=ROOT,
                env=stack.env,
                capture_output=True,
                text=True,
                check=True,
                timeout=900,
            )
        finally:
            stack.stop()
        out.append({"database": database, **json.loads(result.stdout)})
    return out


def layers() -> list[dict]:
    """channels-redis core vs pub/sub for the hubs' traffic (bench/layers.py)."""
    url = live.svc.REDIS_URL
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "layers.py"), url, "3000", "200"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": url},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ reporting


def record(scenario: str, command: str, body: str) -> None:
    block = (
        f"\n### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        f"- machine: {machine()}\n- load average before: {LOAD_BEFORE}, "
        f"after: {loadavg()}\n- command: `{command}`\n\n{body}\n"
    )
    print(block)
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    heading = HEADINGS[scenario]
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == heading)
    except StopIteration:
        RESULTS.write_text(text.rstrip("\n") + f"\n\n{heading}\n{block}")
        return
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
        len(lines),
    )
    lines.insert(end, block + ("\n" if end < len(lines) else ""))
    RESULTS.write_text("".join(lines))


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    return head + "".join(
        "| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |\n" for row in rows
    )


def _cell(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "inf"


def main() -> None:
    global LOAD_BEFORE
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "scenario",
        nargs="?",
        default="all",
        choices=["all", "fanout", "ingest", "snapshot", "idle", "connect", "layers"],
    )
    parser.add_argument("--watchers", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="measured window (default: fanout 20, ingest 15, idle 120)",
    )
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--procs", type=int, default=4, help="load processes")
    parser.add_argument("--placers", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=50, help="time 1 in N")
    parser.add_argument("--players", type=int, default=1500)
    parser.add_argument("--ingest-procs", type=int, default=2)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--sizes", default="1000,2000")
    parser.add_argument(
        "--connections", type=int, default=None, help="idle 10000, connect 2000"
    )
    parser.add_argument(
        "--inflight",
        type=int,
        default=250,
        help="connect: handshakes in flight per load process",
    )
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument(
        "--engine",
        choices=["c", "python"],
        default=None,
        help="the load generator: bench/wsload.c (default with a C compiler) "
        "or the asyncio reference in bench/loadgen.py",
    )
    parser.add_argument(
        "--loadgen-sched",
        choices=["batch", "normal"],
        default="batch",
        help="the load processes' scheduling policy: SCHED_BATCH (default: their "
        "wake-ups do not preempt the servers, as remote browsers' cannot) or "
        "the default policy",
    )
    args = parser.parse_args()
    loadgen.raise_fd_limit()
    loadgen.SCHED = args.loadgen_sched
    argv = sys.argv[1:]
    if args.engine is None:
        args.engine = "c" if loadgen.compiler() else "python"
        if args.engine == "python":
            print("no C compiler (cc or $CC): the load generator runs in Python")
        argv.append(f"--engine {args.engine}")
    if "--loadgen-sched" not in " ".join(argv):
        argv.append(f"--loadgen-sched {args.loadgen_sched}")
    if args.engine == "c":
        loadgen.build_wsload()  # once, before the workers fork
    command = "bench/run.py " + " ".join(argv)
    scenarios = (
        ["snapshot", "ingest", "fanout", "idle"]
        if args.scenario == "all"
        else [args.scenario]
    )
    designs = ["hub"] if args.no_naive else ["hub", "naive"]
    given_seconds = args.seconds
    given_connections = args.connections
    for scenario in scenarios:
        LOAD_BEFORE = loadavg()
        args.seconds = given_seconds or DEFAULT_SECONDS.get(scenario, 20)
        args.connections = given_connections or DEFAULT_CONNECTIONS.get(scenario)
        if scenario == "layers":
            record("fanout", command, table(layers()) + "\n")
        elif scenario == "snapshot":
            rows = snapshot(args)
            flat = []
            for row in rows:
                for size, figures in row.items():
                    if size == "database":
                        continue
                    flat.append({"database": row["database"], "size": size, **figures})
            notes = "".join(
                f"- {r['database']} {r['size']}: warm board is "
                f"{ratio(r['board_cold']['p50_ms'], r['board_warm']['p50_ms'])} "
                "faster than the naive uncached read (= cold)\n"
                for r in flat
            )
            record(scenario, command, table(flat) + "\n" + notes)
        elif scenario == "ingest":
            rows = []
            for database in args.databases.split(","):
                for design in designs:
                    rows.append(ingest(args, design, database))
            paths = [commit_path(d) for d in args.databases.split(",")]
            notes = (
                "\nThe commit path alone (bench/commitpath.py: "
                "`ingest.placements_commit` in one process, no sockets), "
                "uniformly random pixels:\n\n" + table(paths) + "\n"
            )
            notes += "".join(
                f"- {d}: group commit / naive = "
                f"{ratio(_pick(rows, d, 'hub'), _pick(rows, d, 'naive'))}\n"
                for d in args.databases.split(",")
                if len(designs) == 2
            )
            record(scenario, command, table(rows) + "\n" + notes)
        elif scenario == "fanout":
            rows = [fanout(args, design) for design in designs]
            note = ""
            if len(rows) == 2:
                note = (
                    "- delivered changes, hub / naive: "
                    f"{ratio(rows[0]['delivered_pct'], rows[1]['delivered_pct'])}; "
                    "server CPU, naive / hub: "
                    f"{ratio(rows[1]['server_cpu_cores'], rows[0]['server_cpu_cores'])}"
                    "\n"
                )
            record(scenario, command, table(rows) + "\n" + note)
        elif scenario == "idle":
            rows = [idle(args, design) for design in designs]
            note = ""
            if len(rows) == 2:
                hub, naive = rows
                memory = ratio(naive["kb_per_connection"], hub["kb_per_connection"])
                cpu = ratio(
                    naive["idle_cpu_pct_of_a_core"], hub["idle_cpu_pct_of_a_core"]
                )
                note = (
                    f"- memory per connection, naive / hub: {memory}; "
                    f"idle CPU, naive / hub: {cpu}\n"
                )
            record(scenario, command, table(rows) + "\n" + note)
        elif scenario == "connect":
            rows = [connect(args, design) for design in designs]
            note = ""
            if len(rows) == 2:
                note = (
                    "- handshakes per second, hub / naive: "
                    f"{ratio(rows[0]['handshakes_per_s'], rows[1]['handshakes_per_s'])}"
                    "\n"
                )
            record(scenario, command, table(rows) + "\n" + note)


def _pick(rows, database, design) -> float:
    for row in rows:
        if row["database"] == database and row["design"] == design:
            return row["accepted_per_s"]
    return 0.0


LOAD_BEFORE = ""

if __name__ == "__main__":
    main()
