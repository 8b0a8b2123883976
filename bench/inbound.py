#!/usr/bin/python3
"""Inbound SMTP benchmark: smtp-source into smtp-sink, Sluice and a private Postfix, in one run.

What it is for: the ratios of DESIGN.md section 1 / issue 3 section 9 (Sluice msg/s against the
no-relay limit and against Postfix, Sluice CPU per message against smtp-sink's), measured in ONE
run on ONE machine, because absolute figures on these boxes move 2-4x from day to day.

What it owns: everything it starts (servers, temp dirs). Everything is started on loopback with
explicit free ports, and stopped by PID in a finally block, even on error or Ctrl-C.

What it must never do: touch a system MTA or /etc/postfix, kill anything it did not start, or
put the spool on tmpfs (fsync there is free and the figure would be a lie).

Usage:
  /usr/bin/python3 bench/inbound.py --sluice build/sluice [--messages 20000] [--sessions 50]
      [--size 1024] [--json out.json]

Standard library only. Needs root for the Postfix part (postfix start) and smtp-sink -u nobody.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
# How long a server may take to come up or to stop before we give up on it.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
# smtp-sink's listen backlog, as in the command.
SINK_BACKLOG = 1000
# Targets: issue 7 section 3 (msg/s and CPU per message against smtp-sink), issue 3 section 9
# (against Postfix).
TARGET_VS_SINK_RATE = 0.8
TARGET_VS_SINK_RATE_NO_DATA = 0.7  # -d: one connection per message
TARGET_VS_POSTFIX_RATE = 8.0
TARGET_VS_SINK_CPU = 1.2


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# /proc readers


def proc_cpu(pid, include_children=False):
    """(utime, stime) in ticks of a whole process (all its threads, io_uring workers included).

    With include_children, the CPU of its exited and reaped children is added (cutime, cstime):
    Postfix's master reaps every smtpd/cleanup that exits (max_use), so their CPU lands there.
    """
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14 -> index 11.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    if include_children:
        return utime + cutime, stime + cstime
    return utime, stime


def proc_ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return int(data[data.rindex(")") + 2 :].split()[1])


def descendants(root):
    """PIDs of root and all of its descendants (by walking /proc)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            children.setdefault(proc_ppid(int(name)), []).append(int(name))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu(root):
    """(utime, stime) ticks of a process tree: live members plus what the root has reaped.

    A child alive at both samples is counted by its own stat; one that exits in between is
    reaped by the root and appears in the root's cutime/cstime. Children reaped by someone
    other than the root would be lost; for Postfix every service is a direct child of master.
    """
    user = system = 0
    for pid in descendants(root):
        try:
            u, s = proc_cpu(pid, include_children=(pid == root))
        except (FileNotFoundError, ProcessLookupError):
            continue
        user += u
        system += s
    return user, system


def thread_cpu(pid):
    """{thread name: ticks} for the live threads of pid, summed by name."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        name = data[data.index("(") + 1 : data.rindex(")")]
        # iou-wrk-1234: group the io_uring workers under one name.
        if name.startswith("iou-wrk"):
            name = "iou-wrk-*"
        fields = data[data.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def box_cpu():
    """(busy, total) ticks over all CPUs from /proc/stat. Busy excludes idle and iowait."""
    with open("/proc/stat") as f:
        first = f.readline().split()
    values = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------------------------------------
# helpers


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_pair(host="127.0.0.1"):
    """Two distinct free ports on host (a server's and its admin listener's)."""
    port, other = free_port(host), free_port(host)
    while other == port:
        other = free_port(host)
    return port, other


def wait_greeting(host, port, deadline):
    """Wait until host:port answers 220, then QUIT (a session, never a message, for smtp-sink)."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                # Read the greeting so that we know the server speaks, then leave politely.
                s.settimeout(5.0)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    try:
                        s.recv(512)
                    except OSError:
                        pass
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing greets on {host}:{port}")


def wait_port(port, deadline):
    wait_greeting("127.0.0.1", port, deadline)


def check_not_tmpfs(path):
    """Refuse a spool on tmpfs/ramfs: fsync there costs nothing."""
    best, fstype = "", ""
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, parts[2]
    if fstype in ("tmpfs", "ramfs"):
        raise SystemExit(f"{path} is on {fstype}; give --tmpdir on a real disk")
    return best, fstype


def terminate(proc, name, sig=signal.SIGTERM):
    """Stop one process we started, by PID: signal, wait, then SIGKILL if it hangs."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) did not stop within {STOP_TIMEOUT_S}s: SIGKILL")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def prom_values(text, names):
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        if key in names:
            out[key] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# servers: each has start() -> port, cpu() -> (user, sys) ticks, accepted() -> count, stop()


class SingleProcessServer:
    """A server that is one process (smtp-sink, sluice): its CPU is that process's, threads included."""
    proc = None

    def pids(self):
        return [self.proc.pid]

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def stop(self):
        terminate(self.proc, self.name)


class Sink(SingleProcessServer):
    name = "smtp-sink"

    def __init__(self, workdir):
        self.workdir = workdir
        self.proc = None
        self.command = None

    def start(self):
        port = free_port()
        self.command = [SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{port}", str(SINK_BACKLOG)]
        # -c prints counters continuously: to /dev/null, a terminal would slow it down.
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(port, time.monotonic() + START_TIMEOUT_S)
        return port

    def threads(self):
        return {}

    def accepted(self):
        return None  # smtp-sink keeps no count we can read; smtp-source's exit status says it all

    def extra(self):
        return {}


class Sluice(SingleProcessServer):
    name = "sluice"

    def __init__(self, workdir, binary, threads, commit_interval_us=None):
        self.workdir = workdir
        self.commit_interval_us = commit_interval_us
        self.binary = os.path.abspath(binary)
        self.threads_n = threads
        self.proc = None
        self.command = None
        self.admin = None
        self.metrics_before = {}
        self.metrics_after = {}
        self.config_text = None

    METRICS = ("sluice_messages_accepted_total", "sluice_spool_fsyncs_total",
               "sluice_spool_messages_fsynced_total", "sluice_spool_bytes_written_total",
               "sluice_transactions_total", "sluice_connections_total", "sluice_spool_fsync_seconds_sum",
               "sluice_spool_fsync_seconds_count")

    def start(self):
        port, admin_port = free_port_pair()
        self.config_text = self.base_config("127.0.0.1", port)
        if self.commit_interval_us is not None:
            self.config_text += f"commit_interval_us = {self.commit_interval_us}\n"
        self.config_text += f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
        self.launch("127.0.0.1", admin_port)
        return port

    def base_config(self, host, port):
        """Make the spool dir; the [server] and [spool] config every benchmark's Sluice runs with."""
        spool = os.path.join(self.workdir, "spool")
        os.makedirs(spool)
        return (
            "[server]\n"
            'hostname = "sluice-bench.invalid"\n'
            f'listen = ["{host}:{port}"]\n'
            + (f"threads = {self.threads_n}\n" if self.threads_n is not None else "")
            + "[spool]\n"
            f'dir = "{spool}"\n'
            "min_free_bytes = 0\n"
        )

    def launch(self, admin_host, admin_port):
        """Write self.config_text, start `sluice serve` on it, wait for event=ready and take the
        metrics the case's figures are counted from."""
        config = os.path.join(self.workdir, "sluice.toml")
        with open(config, "w") as f:
            f.write(self.config_text)
        self.command = [self.binary, "serve", "--config", config]
        self.stderr_path = os.path.join(self.workdir, "sluice.stderr")
        # stderr to a file, not a pipe: the per-transaction log lines must never block the server.
        with open(self.stderr_path, "wb") as err, open(os.path.join(self.workdir, "sluice.stdout"), "wb") as out:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with open(self.stderr_path, "rb") as f:
                if b"event=ready" in f.read():
                    break
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluice exited {self.proc.returncode} before ready: "
                                   + open(self.stderr_path, errors="replace").read()[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError("sluice: no event=ready within %ss" % START_TIMEOUT_S)
            time.sleep(0.02)
        self.admin = f"http://{admin_host}:{admin_port}"
        self.metrics_before = self.metrics()

    def metrics(self):
        return prom_values(fetch(self.admin + "/metrics"), self.METRICS)

    def threads(self):
        return thread_cpu(self.proc.pid)

    def accepted(self):
        self.metrics_after = self.metrics()
        return int(self.metrics_after.get("sluice_messages_accepted_total", 0)
                   - self.metrics_before.get("sluice_messages_accepted_total", 0))

    def extra(self):
        def delta(name):
            return self.metrics_after.get(name, 0) - self.metrics_before.get(name, 0)
        fsyncs = delta("sluice_spool_fsyncs_total")
        synced = delta("sluice_spool_messages_fsynced_total")
        return {
            "spool_fsyncs": int(fsyncs),
            "spool_messages_fsynced": int(synced),
            "messages_per_fsync": round(synced / fsyncs, 2) if fsyncs else None,
            "spool_bytes_written": int(delta("sluice_spool_bytes_written_total")),
            "fsync_mean_ms": round(1e3 * delta("sluice_spool_fsync_seconds_sum") / fsyncs, 3) if fsyncs else None,
        }

    def stop(self):
        super().stop()
        if self.proc is not None and self.proc.returncode not in (0, None):
            log(f"sluice exited {self.proc.returncode} after SIGTERM")


# What every benchmark's private Postfix has in main.cf: its own queue and data directory, smtpd
# on {listen} only, nothing local. Followed by each benchmark's own settings.
MAIN_CF_COMMON = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = {listen}
inet_protocols = ipv4
myhostname = postfix-bench.invalid
mydestination =
mynetworks = 127.0.0.0/8
"""

MAIN_CF = """\
# Private, inbound-only Postfix for bench/inbound.py. No qmgr: accepted mail stays in incoming/.
""" + MAIN_CF_COMMON + """\
alias_maps =
alias_database =
maillog_file = {maillog}
# Flow control tokens come from qmgr; with no qmgr every message would wait in_flow_delay (1s).
in_flow_delay = 0
"""

# The "qmgr" fifo is served by a pickup process that finds nothing to pick up: cleanup's
# "new mail" trigger then has a reader (no per-message warning in the log) and no mail moves.
MASTER_CF = """\
127.0.0.1:{port} inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      fifo  n       -       n       300     1       pickup
rewrite   unix  -       -       n       -       -       trivial-rewrite
proxymap  unix  -       -       n       -       -       proxymap
anvil     unix  -       -       n       -       1       anvil
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    name = "postfix"

    def __init__(self, workdir):
        self.workdir = workdir
        self.conf = os.path.join(workdir, "conf")
        self.queue = os.path.join(workdir, "queue")
        self.data = os.path.join(workdir, "data")
        self.maillog = os.path.join(workdir, "maillog")
        self.master = None
        self.started = False
        self.command = None

    def start(self):
        port = free_port()
        self.launch(MAIN_CF.format(queue=self.queue, data=self.data, maillog=self.maillog, listen="127.0.0.1"),
                    MASTER_CF.format(port=port), "127.0.0.1", port)
        return port

    def launch(self, main_cf, master_cf, host, port):
        """Lay out the private instance (conf, queue, data dirs) with these main.cf and master.cf,
        start it and wait for its smtpd on host:port to greet."""
        for d in (self.conf, self.queue, self.data):
            os.makedirs(d)
        shutil.chown(self.data, "postfix")  # master.lock is created there as mail_owner
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(main_cf)
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(master_cf)
        self.command = [POSTFIX, "-c", self.conf, "start"]
        subprocess.run([POSTFIX, "-c", self.conf, "check"], check=True)
        self.started = True  # from here on, stop() must run "postfix stop"
        subprocess.run(self.command, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(self.queue, "pid", "master.pid")) as f:
            self.master = int(f.read().strip())
        wait_greeting(host, port, time.monotonic() + START_TIMEOUT_S)

    def pids(self):
        return descendants(self.master)

    def cpu(self):
        return tree_cpu(self.master)

    def threads(self):
        out = {}
        for pid in descendants(self.master):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
                u, s = proc_cpu(pid)
                if pid == self.master:
                    # Services that exited (max_use, idle) were reaped by master: their CPU is
                    # master's cutime+cstime. Reported apart so that master's own share shows.
                    cu, cs = proc_cpu(pid, include_children=True)
                    out["exited children (smtpd, cleanup, ...)"] = cu + cs - u - s
            except (FileNotFoundError, ProcessLookupError):
                continue
            out[name] = out.get(name, 0) + u + s
        return out

    def accepted(self):
        count = 0
        for _, _, files in os.walk(os.path.join(self.queue, "incoming")):
            count += len(files)
        return count

    def extra(self):
        return {}

    def stop(self):
        if not self.started:
            return
        subprocess.run([POSTFIX, "-c", self.conf, "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        # postfix stop signals master and returns; wait for the tree to go, by PID.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        pids = descendants(self.master) if self.master else []
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if os.path.exists(f"/proc/{pid}"):
                log(f"postfix process {pid} still alive after stop: SIGKILL")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.started = False


# ---------------------------------------------------------------------------------------------
# one measurement


def run_case(label, server, messages, sessions, size, per_session):
    port = server.start()
    source_cmd = [SMTP_SOURCE]
    if per_session:
        source_cmd.append("-d")
    source_cmd += ["-s", str(sessions), "-m", str(messages), "-l", str(size), f"127.0.0.1:{port}"]
    out_path = os.path.join(server.workdir, "smtp-source.out")
    load_before = loadavg()
    threads_before = server.threads()
    cpu_before = server.cpu()
    box_before = box_cpu()
    t0 = time.monotonic()
    with open(out_path, "wb") as out:
        source = subprocess.Popen(source_cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            _, status, rusage = os.wait4(source.pid, 0)
        except BaseException:
            source.kill()  # by PID; then let the caller stop the server
            source.wait()
            raise
        source.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    box_after = box_cpu()
    cpu_after = server.cpu()
    threads_after = server.threads()
    load_after = loadavg()
    accepted = server.accepted()
    extra = server.extra()
    with open(out_path, errors="replace") as f:
        source_output = f.read()
    server.stop()

    user = (cpu_after[0] - cpu_before[0]) / CLK_TCK
    system = (cpu_after[1] - cpu_before[1]) / CLK_TCK
    busy = (box_after[0] - box_before[0]) / CLK_TCK
    ncpu = os.cpu_count()
    threads = tick_deltas(threads_after, threads_before)
    ok = source.returncode == 0 and (accepted is None or accepted == messages)
    result = {
        "case": label,
        "server": server.name,
        "server_command": server.command,
        "source_command": source_cmd,
        "messages": messages,
        "sessions": sessions,
        "size": size,
        "per_session": per_session,
        "ok": ok,
        "source_exit": source.returncode,
        "source_output": source_output[-2000:],
        "accepted": accepted,
        **rate_figures("server", wall, messages, user, system),
        "source_cpu_s": round(rusage.ru_utime + rusage.ru_stime, 2),
        "source_cpu_us_per_msg": round((rusage.ru_utime + rusage.ru_stime) * 1e6 / messages, 1),
        "box_busy_cores": round(busy / wall, 2),
        "box_busy_pct": round(100 * busy / wall / ncpu, 1),
        "box_cpu_us_per_msg": round(busy * 1e6 / messages, 1),
        "server_cpu_by_thread_s": threads,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    result.update(extra)
    if isinstance(server, Sluice):
        result["server_config"] = server.config_text
    if not ok and isinstance(server, Sluice):
        with open(server.stderr_path, errors="replace") as f:
            result["server_log_tail"] = f.read()[-2000:]
    if not ok:
        log(f"{label}: FAILED: smtp-source exit {source.returncode}, accepted {accepted} of {messages}; "
            f"smtp-source said: {source_output[-500:]!r}")
    return result


# ---------------------------------------------------------------------------------------------
# run plumbing and report output, shared with bench/relay.py


def add_output_options(parser, what):
    """--tmpdir (where `what` goes), --keep, --json, --markdown: the last options of both benchmarks."""
    parser.add_argument("--tmpdir", default="/var/tmp",
                        help=f"where {what} go: a real disk, never tmpfs (default /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, spools)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the table and ratios as Markdown here")


def unwind_on_signals():
    """SIGTERM (and SIGINT even when started in the background) raise KeyboardInterrupt, so that
    they unwind through the callers' finally blocks, which stop what was started."""
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)


def select_cases(plan, only):
    """The plan's entries (label first) named in --only (comma-separated); all without it."""
    if not only:
        return plan
    wanted = [x.strip() for x in only.split(",")]
    unknown = set(wanted) - {p[0] for p in plan}
    if unknown:
        raise SystemExit(f"--only: unknown case(s) {sorted(unknown)}; known: {[p[0] for p in plan]}")
    return [p for p in plan if p[0] in wanted]


def case_workdir(root, i, label):
    workdir = os.path.join(root, f"{i}-{label.replace(' ', '_')}")
    os.makedirs(workdir)
    os.chmod(workdir, 0o755)
    return workdir


def rate_figures(who, wall, messages, user, system):
    """A case's rate and its server's (or relay's) CPU, as the results name them."""
    return {
        "wall_s": round(wall, 3),
        "msg_per_s": round(messages / wall, 1),
        f"{who}_cpu_user_s": round(user, 2),
        f"{who}_cpu_sys_s": round(system, 2),
        f"{who}_cpu_us_per_msg": round((user + system) * 1e6 / messages, 1),
        f"{who}_cores": round((user + system) / wall, 2),
    }


def tick_deltas(after, before):
    """{name: seconds} of after - before (both {name: ticks}), largest first, zeros dropped."""
    out = {k: round((v - before.get(k, 0)) / CLK_TCK, 2) for k, v in after.items()}
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def ratio_row(name, value, op, target):
    met = None if target is None else (value >= target if op == ">=" else value <= target)
    return {"ratio": name, "value": value, "target": f"{op} {target}" if target is not None else None, "met": met}


def print_table(head, rows, ratio_rows, name_width):
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print()
    for r in ratio_rows:
        verdict = "" if r["met"] is None else ("met" if r["met"] else "NOT met")
        print(f"{r['ratio']:{name_width}s} {r['value']:8.3f}  {r['target'] or '':8s} {verdict}")
    print()


def print_commands(commands, configs):
    """The harness's command line, then (case, role, argv) and (case, title, config text) of each."""
    print("commands:")
    print("  " + " ".join([sys.executable] + sys.argv))
    for case, role, argv in commands:
        print(f"  [{case}] {role}: {' '.join(argv)}")
    for case, title, text in configs:
        print(f"  [{case}] {title}:\n    " + text.rstrip().replace("\n", "\n    "))


def write_markdown(path, when, load_before, head, rows, ratio_rows, notes):
    with open(path, "w") as f:
        f.write(f"Run of {when}, load average before {load_before}, after {loadavg()}.\n\n")
        write_markdown_tables(f, head, rows, ratio_rows)
        for n in notes:
            f.write(f"- {n}\n")


def write_markdown_tables(f, head, rows, ratio_rows):
    f.write("| " + " | ".join(head) + " |\n")
    f.write("|" + "---|" * len(head) + "\n")
    for row in rows:
        f.write("| " + " | ".join(row) + " |\n")
    f.write("\n| ratio | value | target | verdict |\n|---|---|---|---|\n")
    for r in ratio_rows:
        verdict = "(no target)" if r["met"] is None else ("met" if r["met"] else "**not met**")
        f.write(f"| {r['ratio']} | {r['value']:.3f} | {r['target'] or ''} | {verdict} |\n")
    f.write("\n")


def write_json(path, started, results, ratio_rows):
    with open(path, "w") as f:
        json.dump({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                   "cpus": os.cpu_count(), "harness_command": [sys.executable] + sys.argv,
                   "results": results, "ratios": ratio_rows}, f, indent=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sluice", required=True, help="path to the sluice binary")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None,
                        help="sluice [server] threads (default: not set, Sluice's own default)")
    parser.add_argument("--large-messages", type=int, default=3000,
                        help="messages for the 100 KiB case (sluice vs sink); 0 skips it")
    parser.add_argument("--large-size", type=int, default=102400)
    parser.add_argument("--no-postfix", action="store_true", help="skip the Postfix case")
    parser.add_argument("--only", help="comma-separated case labels to run, e.g. 'sink -d,sluice -d'")
    parser.add_argument("--commit-interval-us", type=int,
                        help="set sluice [spool] commit_interval_us (default: Sluice's own default)")
    add_output_options(parser, "the spools")
    args = parser.parse_args()

    if not os.access(args.sluice, os.X_OK):
        raise SystemExit(f"{args.sluice}: not executable")
    mount, fstype = check_not_tmpfs(args.tmpdir)
    root = tempfile.mkdtemp(prefix="sluice-inbound-", dir=args.tmpdir)
    os.chmod(root, 0o755)  # postfix (mail_owner) must be able to reach its queue below it
    log(f"work dir {root} on {mount} ({fstype}); load average {loadavg()}")

    plan = [
        ("sink", lambda d: Sink(d), args.messages, args.size, False),
        ("sluice", lambda d: Sluice(d, args.sluice, args.threads, args.commit_interval_us), args.messages, args.size, False),
    ]
    if not args.no_postfix:
        plan.append(("postfix", lambda d: Postfix(d), args.messages, args.size, False))
    plan += [
        ("sink -d", lambda d: Sink(d), args.messages, args.size, True),
        ("sluice -d", lambda d: Sluice(d, args.sluice, args.threads, args.commit_interval_us), args.messages, args.size, True),
    ]
    if args.large_messages > 0:
        plan += [
            ("sink 100K", lambda d: Sink(d), args.large_messages, args.large_size, False),
            ("sluice 100K", lambda d: Sluice(d, args.sluice, args.threads, args.commit_interval_us), args.large_messages,
             args.large_size, False),
        ]

    unwind_on_signals()
    plan = select_cases(plan, args.only)

    results = []
    current = None
    started = time.time()
    try:
        for i, (label, make, messages, size, per_session) in enumerate(plan):
            current = make(case_workdir(root, i, label))
            log(f"[{label}] {messages} x {size} B, {args.sessions} sessions{' (-d)' if per_session else ''} ...")
            results.append(run_case(label, current, messages, args.sessions, size, per_session))
            current = None
            r = results[-1]
            log(f"[{label}] {r['msg_per_s']} msg/s, server {r['server_cpu_us_per_msg']} us/msg, "
                f"box {r['box_busy_pct']}% busy, load {r['loadavg_after']}")
    finally:
        if current is not None:
            current.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    by = {r["case"]: r for r in results}

    def rate(case):
        return by[case]["msg_per_s"] if case in by else None

    def cpu(case):
        return by[case]["server_cpu_us_per_msg"] if case in by else None

    ratios = [
        ("sluice/sink msg/s", ratio(rate("sluice"), rate("sink")), ">=", TARGET_VS_SINK_RATE),
        ("sluice/postfix msg/s", ratio(rate("sluice"), rate("postfix")), ">=", TARGET_VS_POSTFIX_RATE),
        ("sluice/sink CPU per msg", ratio(cpu("sluice"), cpu("sink")), "<=", TARGET_VS_SINK_CPU),
        ("sluice/sink msg/s (-d)", ratio(rate("sluice -d"), rate("sink -d")), ">=", TARGET_VS_SINK_RATE_NO_DATA),
        ("sluice/sink CPU per msg (-d)", ratio(cpu("sluice -d"), cpu("sink -d")), "<=", TARGET_VS_SINK_CPU),
        ("sluice/sink msg/s (100K)", ratio(rate("sluice 100K"), rate("sink 100K")), None, None),
        ("sluice/sink CPU per msg (100K)", ratio(cpu("sluice 100K"), cpu("sink 100K")), None, None),
    ]
    ratio_rows = [ratio_row(*r) for r in ratios if r[1] is not None]

    # The table.
    head = ("case", "msg/s", "wall s", "srv us/msg", "usr/sys s", "srv cores", "src us/msg", "box busy", "box us/msg",
            "msg/fsync", "ok")
    rows = []
    for r in results:
        rows.append((r["case"], f"{r['msg_per_s']:.0f}", f"{r['wall_s']:.2f}", f"{r['server_cpu_us_per_msg']:.0f}",
                     f"{r['server_cpu_user_s']:.2f}/{r['server_cpu_sys_s']:.2f}", f"{r['server_cores']:.2f}",
                     f"{r['source_cpu_us_per_msg']:.0f}", f"{r['box_busy_pct']:.0f}%",
                     f"{r['box_cpu_us_per_msg']:.0f}",
                     str(r.get("messages_per_fsync", "")) if r["server"] == "sluice" else "",
                     "yes" if r["ok"] else "NO"))
    print(f"inbound benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(started))}, "
          f"{os.cpu_count()} CPUs, load average at end {loadavg()}")
    print_table(head, rows, ratio_rows, 32)
    for r in results:
        if r["server"] == "sluice":
            print(f"{r['case']}: fsyncs {r['spool_fsyncs']}, messages fsynced {r['spool_messages_fsynced']}, "
                  f"per fsync {r['messages_per_fsync']}, mean fdatasync {r['fsync_mean_ms']} ms; "
                  f"CPU by thread (s): {r['server_cpu_by_thread_s']}")
        if r["server"] == "postfix":
            print(f"{r['case']}: CPU by process name (s): {r['server_cpu_by_thread_s']}")
    print()
    print_commands([(r["case"], role, r[f"{role}_command"]) for r in results for role in ("server", "source")],
                   [(r["case"], "sluice.toml", r["server_config"]) for r in results if r.get("server_config")][:1])

    if args.markdown:
        notes = []
        for r in results:
            if r["server"] == "sluice":
                notes.append(f"{r['case']}: {r['spool_fsyncs']} fdatasyncs for {r['spool_messages_fsynced']} "
                             f"messages = {r['messages_per_fsync']} messages per fsync, mean fdatasync "
                             f"{r['fsync_mean_ms']} ms; CPU by thread (s): {r['server_cpu_by_thread_s']}")
            if r["server"] == "postfix":
                notes.append(f"{r['case']}: CPU by process name (s): {r['server_cpu_by_thread_s']}")
        write_markdown(args.markdown, time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(started)),
                       results[0]['loadavg_before'] if results else '?', head, rows, ratio_rows, notes)
    if args.json:
        write_json(args.json, started, results, ratio_rows)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
