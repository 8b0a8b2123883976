#!/usr/bin/python3
"""End-to-end relay benchmark (issue 8 section 7): smtp-source -> relay -> smtp-sink, in one run.

What it is for: the relay ratios of DESIGN.md section 1, measured in ONE run on ONE machine
(absolute figures on these boxes move 2-4x from day to day). For each scenario (1 KiB x 1
recipient, 100 KiB, 10 recipients per message) it runs three cases back to back:

  limit    smtp-source straight into smtp-sink (no relay: the ceiling);
  sluice   smtp-source -> `sluice serve` (fsync on, default threads) -> [[route]] -> smtp-sink;
  postfix  smtp-source -> a private Postfix (relayhost = the sink) -> smtp-sink.

A case's time runs from the start of smtp-source until smtp-sink has received every message
(its -c counter, read from a pipe); the relay's CPU is taken from /proc over the same interval.

What it owns: everything it starts (sink, relays, smtp-source, perf, temp dirs), on loopback only
(source -> 127.0.0.1, Sluice or Postfix -> 127.0.0.3, the sink), each on a free port, and all of
it stopped by PID (Postfix by `postfix -c DIR stop`, then by PID) in a finally block.

What it must never do: touch the system Postfix or /etc/postfix, kill anything it did not start,
or put a spool on tmpfs (fsync there is free and the figure would be a lie).

Usage:
  /usr/bin/python3 bench/relay.py [--sluice build/sluice] [--messages 20000] [--sessions 50]
      [--size 1024] [--large-messages 3000] [--large-size 102400] [--recipients 10]
      [--recipient-messages 20000] [--quick] [--only CASES] [--no-postfix]
      [--perf DIR [--perf-case 'sluice 1K'] [--perf-seconds 5]] [--json FILE] [--markdown FILE]

Standard library only; reuses bench/inbound.py's /proc readers and its Postfix life cycle. Needs
root for the Postfix part (postfix start), smtp-sink -u nobody and perf.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inbound  # noqa: E402  (same directory: /proc readers, Sluice and Postfix life cycle, report output)
from inbound import (CLK_TCK, POSTFIX, SMTP_SINK, SMTP_SOURCE, SINK_BACKLOG, START_TIMEOUT_S,  # noqa: E402
                     add_output_options, box_cpu, case_workdir, check_not_tmpfs, free_port, free_port_pair,
                     loadavg, log, print_commands, print_table, proc_cpu, rate_figures, ratio, ratio_row,
                     select_cases, terminate, tick_deltas, unwind_on_signals, wait_greeting, write_json,
                     write_markdown)

SLUICE_HOST = "127.0.0.1"
# Postfix refuses an inet_interfaces address that no interface has as its own (127.0.0.2 is
# routed to lo, but only 127.0.0.1 is lo's address): it listens on 127.0.0.1, on its own port.
POSTFIX_HOST = "127.0.0.1"
SINK_HOST = "127.0.0.3"
# A relay that moves no message to the sink for this long has failed (not merely slow).
STALL_TIMEOUT_S = 60.0
# After the sink has every message: how long the relay may take to empty its queue.
SETTLE_TIMEOUT_S = 60.0
PERF = shutil.which("perf") or "/usr/bin/perf"
# Targets: issue 8 section 7 / DESIGN.md section 1.
TARGET_VS_LIMIT_RATE = 0.5
TARGET_VS_LIMIT_RATE_LARGE = 0.55
TARGET_VS_POSTFIX_RATE = 6.0
TARGET_VS_POSTFIX_CPU = 0.1


# ---------------------------------------------------------------------------------------------
# the sink: Postfix's smtp-sink, whose -c counters are read from a pipe

COUNTER = re.compile(rb"mesg=(\d+)")


class CountingSink:
    """smtp-sink -c on SINK_HOST. With -c it writes "sess=N quit=N mesg=N\\r" after every session
    end, QUIT and end of DATA, flushed each time; a thread reads the pipe (so that the sink never
    blocks on it) and keeps the last mesg count. When the count reaches the target it calls
    on_target at once, in that thread, so that the CPU figures are taken at the moment the last
    message arrived, not when the main thread next looks."""

    name = "smtp-sink"

    def __init__(self, workdir):
        self.workdir = workdir
        self.proc = None
        self.command = None
        self.port = None
        self.count = 0
        self.last_change = time.monotonic()
        self.target = None
        self.on_target = None
        self.reached = threading.Event()
        self.reached_at = None
        self._reader = None

    def start(self):
        self.port = free_port(SINK_HOST)
        self.command = [SMTP_SINK, "-u", "nobody", "-c", f"{SINK_HOST}:{self.port}", str(SINK_BACKLOG)]
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name="sink-counter", daemon=True)
        self._reader.start()
        wait_greeting(SINK_HOST, self.port, time.monotonic() + START_TIMEOUT_S)
        return self.port

    def expect(self, target, on_target):
        """Arm the target: on_target() runs once when mesg reaches target (counted from now)."""
        self.base = self.count
        self.on_target = on_target
        self.target = target  # last: the reader thread looks at target first

    def received(self):
        return self.count - getattr(self, "base", 0)

    def _read(self):
        fd = self.proc.stdout.fileno()
        tail = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            data = tail + chunk
            # Only complete records (ended by \r) count; the rest waits for the next read.
            end = data.rfind(b"\r")
            if end < 0:
                tail = data
                continue
            tail = data[end + 1:]
            found = COUNTER.findall(data[:end])
            if not found:
                continue
            count = int(found[-1])
            if count != self.count:
                self.count = count
                self.last_change = time.monotonic()
            if self.target is not None and not self.reached.is_set() and self.received() >= self.target:
                self.reached_at = time.monotonic()
                if self.on_target:
                    self.on_target()
                self.reached.set()

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def stop(self):
        terminate(self.proc, self.name)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------------------------------------
# relays: start(sink_port) -> (host, port); cpu() -> (user, sys) ticks; settled() -> bool;
# check(expected_messages, expected_recipients) -> (ok, details); stop()


class NoRelay:
    """The limit: smtp-source talks to the sink directly."""

    name = "none"
    command = None

    def __init__(self, workdir):
        self.workdir = workdir
        self.sink_port = None

    def start(self, sink_port):
        self.sink_port = sink_port
        return SINK_HOST, sink_port

    def pid(self):
        return None

    def cpu(self):
        return 0, 0

    def parts(self):
        return {}

    def settled(self):
        return True

    def check(self, messages, recipients):
        return True, {}

    def stop(self):
        pass


class SluiceRelay(inbound.Sluice):
    """`sluice serve` with a [[route]] domain = "*" to the sink; reuses inbound.Sluice's stop(),
    cpu(), threads() and spool figures."""

    METRICS = inbound.Sluice.METRICS + (
        'sluice_delivery_recipients_total{outcome="delivered"}',
        'sluice_delivery_recipients_total{outcome="deferred"}',
        'sluice_delivery_recipients_total{outcome="bounced"}',
        "sluice_messages_finished_total", "sluice_queue_messages", "sluice_outbound_connections")

    def start(self, sink_port):
        port, admin_port = free_port_pair(SLUICE_HOST)
        # fsync is always on; threads is left to Sluice unless --threads; [delivery] is the default.
        self.config_text = self.base_config(SLUICE_HOST, port) + (
            "[dns]\n"
            # Never the machine's resolver; the route below means no lookup is made anyway.
            'servers = ["127.0.0.1:9"]\n'
            "[[route]]\n"
            'domain = "*"\n'
            f'next_hop = "{SINK_HOST}:{sink_port}"\n'
            f'[admin]\nlisten = "{SLUICE_HOST}:{admin_port}"\n'
        )
        self.launch(SLUICE_HOST, admin_port)
        return SLUICE_HOST, port

    def pid(self):
        return self.proc.pid

    def parts(self):
        return self.threads()

    def settled(self):
        return self.metrics().get("sluice_queue_messages", 1) == 0

    def check(self, messages, recipients):
        self.metrics_after = self.metrics()

        def delta(name):
            return int(self.metrics_after.get(name, 0) - self.metrics_before.get(name, 0))
        details = {
            "accepted": delta("sluice_messages_accepted_total"),
            "recipients_delivered": delta('sluice_delivery_recipients_total{outcome="delivered"}'),
            "recipients_deferred": delta('sluice_delivery_recipients_total{outcome="deferred"}'),
            "recipients_bounced": delta('sluice_delivery_recipients_total{outcome="bounced"}'),
            "messages_finished": delta("sluice_messages_finished_total"),
            "queue_after": int(self.metrics_after.get("sluice_queue_messages", -1)),
        }
        details.update(self.extra())
        ok = (details["accepted"] == messages and details["recipients_delivered"] == messages * recipients
              and details["recipients_deferred"] == 0 and details["recipients_bounced"] == 0
              and details["messages_finished"] == messages and details["queue_after"] == 0)
        return ok, details


MAIN_CF = """\
# Private relay Postfix for bench/relay.py: smtpd on {listen}, everything to relayhost (the sink).
""" + inbound.MAIN_CF_COMMON + """\
relayhost = [{sink_host}]:{sink_port}
# No local delivery: nothing is local (mydestination is empty), and if it were, it would fail.
local_transport = error:5.1.1 no local delivery in this benchmark
local_recipient_maps =
alias_maps =
alias_database =
biff = no
maillog_file = {maillog}
"""

# The Debian master.cf.dist services a relay uses, not chrooted (the queue is in a temp dir),
# without local, virtual, lmtp, tlsmgr, showq and the pipe transports.
MASTER_CF = """\
{listen}:{port} inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

QUEUE_DIRS = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")


class PostfixRelay(inbound.Postfix):
    """A private Postfix instance (own config, queue and data directory under the temp dir),
    relaying everything to the sink; reuses inbound.Postfix's stop() (postfix -c DIR stop, then
    by PID) and its CPU accounting: master and every live descendant, plus master's cutime/cstime
    (services that exited during the run: master reaps every one)."""

    def start(self, sink_port):
        port = free_port(POSTFIX_HOST)
        self.launch(MAIN_CF.format(queue=self.queue, data=self.data, maillog=self.maillog, listen=POSTFIX_HOST,
                                   sink_host=SINK_HOST, sink_port=sink_port),
                    MASTER_CF.format(listen=POSTFIX_HOST, port=port), POSTFIX_HOST, port)
        return POSTFIX_HOST, port

    def pid(self):
        return self.master

    def parts(self):
        return self.threads()

    def queued(self):
        count = 0
        for name in QUEUE_DIRS:
            for _, _, files in os.walk(os.path.join(self.queue, name)):
                count += len(files)
        return count

    def settled(self):
        return self.queued() == 0

    def log_counts(self):
        counts = {"sent": 0, "deferred": 0, "bounced": 0}
        try:
            with open(self.maillog, "rb") as f:
                for line in f:
                    for status in counts:
                        if b" status=" + status.encode() in line:
                            counts[status] += 1
        except FileNotFoundError:
            pass
        return counts

    def check(self, messages, recipients):
        # postlogd writes behind the services: give it a moment to catch up with the queue.
        deadline = time.monotonic() + 10
        while True:
            counts = self.log_counts()
            if counts["sent"] >= messages * recipients or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        details = {"recipients_sent_logged": counts["sent"], "recipients_deferred_logged": counts["deferred"],
                   "recipients_bounced_logged": counts["bounced"], "queue_after": self.queued()}
        ok = (counts["sent"] == messages * recipients and counts["deferred"] == 0 and counts["bounced"] == 0
              and details["queue_after"] == 0)
        return ok, details


# ---------------------------------------------------------------------------------------------
# perf


class PerfRecorder:
    """perf record -g -p PID for a fixed time; the reports are written when it is done."""

    def __init__(self, outdir, label, seconds, call_graph, event=None):
        self.outdir = outdir
        self.call_graph = call_graph
        self.event = event
        self.label = label.replace(" ", "_")
        self.seconds = seconds
        self.proc = None
        self.data = os.path.join(outdir, f"perf-{self.label}.data")

    def start(self, pid):
        os.makedirs(self.outdir, exist_ok=True)
        self.command = ([PERF, "record"] + (["-e", self.event] if self.event else [])
                        + (["--call-graph", self.call_graph] if self.call_graph != "none" else [])
                        + ["-p", str(pid), "-o", self.data, "--", "sleep", str(self.seconds)])
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.outdir, f"perf-{self.label}.record.log"), "wb"))

    def finish(self):
        """Wait for perf record (it ends with its sleep), then write three reports next to the data."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            terminate(self.proc, "perf", signal.SIGINT)
        reports = {
            "flat": ["--no-children", "-g", "none", "--percent-limit", "0.5"],
            "dso": ["--no-children", "--sort", "dso", "-g", "none"],
            "comm": ["--no-children", "--sort", "comm", "-g", "none"],
            "dso_sym": ["--no-children", "--sort", "dso,sym", "-g", "none", "--percent-limit", "0.1"],
            "callgraph": ["--no-children"],
        }
        out = {}
        for name, extra in reports.items():
            path = os.path.join(self.outdir, f"perf-{self.label}.{name}.txt")
            with open(path, "wb") as f:
                subprocess.run([PERF, "report", "--stdio", "-i", self.data] + extra, stdout=f,
                               stderr=subprocess.DEVNULL)
            out[name] = path
        return out

    def stop(self):
        terminate(self.proc, "perf", signal.SIGINT)


# ---------------------------------------------------------------------------------------------
# one measurement


def run_case(label, relay, workdir, messages, sessions, size, recipients, perf=None):
    # Write back what earlier cases left dirty (100 KiB spools, Postfix queues), so that its
    # writeback does not slow this case's fdatasyncs.
    os.sync()
    sink = CountingSink(workdir)
    source = None
    try:
        sink_port = sink.start()
        host, port = relay.start(sink_port)
        source_cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size)]
        if recipients > 1:
            source_cmd += ["-r", str(recipients)]
        source_cmd.append(f"{host}:{port}")
        out_path = os.path.join(workdir, "smtp-source.out")

        at_target = {}

        def on_target():  # in the sink's reader thread, the moment the last message arrived
            at_target["relay"] = relay.cpu()
            at_target["sink"] = sink.cpu()
            at_target["box"] = box_cpu()
            at_target["parts"] = relay.parts()

        sink.expect(messages, on_target)
        load_before = loadavg()
        parts_before = relay.parts()
        relay_before, sink_before, box_before = relay.cpu(), sink.cpu(), box_cpu()
        t0 = time.monotonic()
        with open(out_path, "wb") as out:
            source = subprocess.Popen(source_cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if perf is not None:
            perf.start(relay.pid())
        # Wait for the sink to have every message; a count that stops moving is a failure.
        failure = None
        while not sink.reached.wait(0.5):
            if time.monotonic() - max(sink.last_change, t0) > STALL_TIMEOUT_S:
                failure = (f"the sink's count stayed at {sink.received()} of {messages} for "
                           f"{STALL_TIMEOUT_S:.0f}s (smtp-source {'running' if source.poll() is None else 'exited %d' % source.returncode})")
                break
        t_end = sink.reached_at if failure is None else time.monotonic()
        # smtp-source has normally exited already; it ends within a few round trips.
        _, status, rusage = os.wait4(source.pid, 0) if failure is None else (None, None, None)
        if failure is None:
            source.returncode = os.waitstatus_to_exitcode(status)
        # The relay finishes each message (journal, removal) after the sink's "250": let it.
        settle_deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while failure is None and not relay.settled():
            if time.monotonic() > settle_deadline:
                failure = f"the relay's queue was not empty {SETTLE_TIMEOUT_S:.0f}s after the sink had every message"
                break
            time.sleep(0.05)
        t_settled = time.monotonic()
        relay_settled = relay.cpu()
        perf_reports = perf.finish() if perf is not None else None
        relay_ok, details = relay.check(messages, recipients) if failure is None else (False, {})
        # Anything beyond the target is a duplicate (a relay that retried a delivered message).
        received = sink.received()
        with open(out_path, errors="replace") as f:
            source_output = f.read()
    finally:
        if source is not None and source.poll() is None:
            source.kill()  # by PID
            source.wait()
        relay.stop()
        sink.stop()

    ok = (failure is None and source.returncode == 0 and received == messages and relay_ok)
    if failure is not None:
        return {"case": label, "ok": False, "failure": failure, "received": received, "messages": messages,
                "source_output": source_output[-2000:]}
    wall = t_end - t0
    ticks = lambda a, b: (a[0] - b[0] + a[1] - b[1]) / CLK_TCK  # noqa: E731
    user = (at_target["relay"][0] - relay_before[0]) / CLK_TCK
    system = (at_target["relay"][1] - relay_before[1]) / CLK_TCK
    busy = (at_target["box"][0] - box_before[0]) / CLK_TCK
    sink_cpu = ticks(at_target["sink"], sink_before)
    settled_cpu = ticks(relay_settled, relay_before)
    source_cpu = rusage.ru_utime + rusage.ru_stime
    parts = tick_deltas(at_target["parts"], parts_before)
    result = {
        "case": label,
        "relay": relay.name,
        "relay_command": relay.command,
        "sink_command": sink.command,
        "source_command": source_cmd,
        "messages": messages,
        "sessions": sessions,
        "size": size,
        "recipients": recipients,
        "ok": ok,
        "source_exit": source.returncode,
        "source_output": source_output[-2000:],
        "received": received,
        **rate_figures("relay", wall, messages, user, system),
        "relay_settle_s": round(t_settled - t_end, 3),
        "relay_cpu_us_per_msg_to_empty_queue": round(settled_cpu * 1e6 / messages, 1),
        "sink_cpu_us_per_msg": round(sink_cpu * 1e6 / messages, 1),
        "source_cpu_us_per_msg": round(source_cpu * 1e6 / messages, 1),
        "box_busy_pct": round(100 * busy / wall / os.cpu_count(), 1),
        "box_cpu_us_per_msg": round(busy * 1e6 / messages, 1),
        "relay_cpu_by_part_s": parts,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "perf": perf_reports,
    }
    result.update(details)
    if isinstance(relay, SluiceRelay):
        result["relay_config"] = relay.config_text
    if isinstance(relay, PostfixRelay):
        with open(os.path.join(relay.conf, "main.cf")) as f:
            result["relay_config"] = f.read()
    if not ok:
        result["failure"] = (f"smtp-source exit {source.returncode}, sink received {received} of {messages}, "
                             f"relay check {details}")
        if isinstance(relay, SluiceRelay):
            with open(relay.stderr_path, errors="replace") as f:
                result["relay_log_tail"] = f.read()[-2000:]
    return result


def size_label(size):
    return f"{size // 1024}K" if size % 1024 == 0 else f"{size}B"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sluice", default="build/sluice", help="path to the sluice binary (default build/sluice)")
    parser.add_argument("--messages", type=int, default=20000, help="messages per 1 KiB case")
    parser.add_argument("--sessions", type=int, default=50, help="smtp-source -s")
    parser.add_argument("--size", type=int, default=1024, help="smtp-source -l for the small cases")
    parser.add_argument("--large-messages", type=int, default=3000, help="messages per large case; 0 skips them")
    parser.add_argument("--large-size", type=int, default=102400)
    parser.add_argument("--recipients", type=int, default=10, help="recipients per message (smtp-source -r) in the "
                        "recipients cases; 0 or 1 skips them")
    parser.add_argument("--recipient-messages", type=int, default=20000, help="messages per recipients case")
    parser.add_argument("--threads", type=int, default=None,
                        help="sluice [server] threads (default: not set, Sluice's own default)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1,000 small, 200 large and 1,000 multi-recipient messages")
    parser.add_argument("--no-postfix", action="store_true", help="skip the Postfix cases")
    parser.add_argument("--only", help="comma-separated case labels, e.g. 'limit 1K,sluice 1K'")
    parser.add_argument("--perf", metavar="DIR", help="perf record -g the Sluice process in --perf-case into DIR "
                        "(perf's own cost then lands in that case's figures: use a separate run)")
    parser.add_argument("--perf-case", default=None, help="case to profile (default: the first sluice case)")
    parser.add_argument("--perf-seconds", type=float, default=5.0)
    parser.add_argument("--perf-call-graph", default="fp",
                        help="perf record --call-graph: fp (what -g records) or dwarf (user-space stacks "
                        "without frame pointers, larger data) or none")
    parser.add_argument("--perf-event", help="perf record -e EVENT (default: perf's, cpu-clock here), e.g. "
                        "io_uring:io_uring_submit_req to count the operations submitted")
    add_output_options(parser, "the spools and queues")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.large_messages, args.recipient_messages = 1000, 200, 1000

    if not os.access(args.sluice, os.X_OK):
        raise SystemExit(f"{args.sluice}: not executable")
    for tool in (SMTP_SOURCE, SMTP_SINK) + (() if args.no_postfix else (POSTFIX,)):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool}: not installed (deploy/install-deps.sh --test installs Postfix)")
    mount, fstype = check_not_tmpfs(args.tmpdir)

    # (suffix, messages, size, recipients, target vs limit, targets vs Postfix): the issue sets the
    # Postfix targets for the 1 KiB case, a limit target for 1 KiB and 100 KiB, none for 10 rcpt.
    scenarios = []
    if args.messages > 0:
        scenarios.append((size_label(args.size), args.messages, args.size, 1, TARGET_VS_LIMIT_RATE, True))
    if args.large_messages > 0:
        scenarios.append((size_label(args.large_size), args.large_messages, args.large_size, 1,
                          TARGET_VS_LIMIT_RATE_LARGE, False))
    if args.recipients > 1 and args.recipient_messages > 0:
        scenarios.append((f"{size_label(args.size)}x{args.recipients}", args.recipient_messages, args.size,
                          args.recipients, None, False))
    plan = []
    for suffix, messages, size, recipients, _, _ in scenarios:
        plan.append((f"limit {suffix}", NoRelay, messages, size, recipients))
        plan.append((f"sluice {suffix}", lambda d: SluiceRelay(d, args.sluice, args.threads), messages, size,
                     recipients))
        if not args.no_postfix:
            plan.append((f"postfix {suffix}", PostfixRelay, messages, size, recipients))
    plan = select_cases(plan, args.only)
    perf_case = None
    if args.perf:
        perf_case = args.perf_case or next((p[0] for p in plan if p[0].startswith("sluice")), None)
        if perf_case not in [p[0] for p in plan] or not perf_case.startswith("sluice"):
            raise SystemExit(f"--perf-case: {perf_case!r} is not a sluice case of this run")

    unwind_on_signals()

    root = tempfile.mkdtemp(prefix="sluice-relay-", dir=args.tmpdir)
    os.chmod(root, 0o755)  # postfix (mail_owner) must be able to reach its queue below it
    log(f"work dir {root} on {mount} ({fstype}); load average {loadavg()}")
    results = []
    started = time.time()
    try:
        for i, (label, make, messages, size, recipients) in enumerate(plan):
            workdir = case_workdir(root, i, label)
            relay = make(workdir)
            perf = PerfRecorder(os.path.abspath(args.perf), label, args.perf_seconds,
                                args.perf_call_graph, args.perf_event) if label == perf_case else None
            log(f"[{label}] {messages} x {size} B, {recipients} rcpt, {args.sessions} sessions ...")
            try:
                results.append(run_case(label, relay, workdir, messages, args.sessions, size, recipients, perf))
            finally:
                if perf is not None:
                    perf.stop()
            r = results[-1]
            if not r["ok"]:
                log(f"[{label}] FAILED: {r.get('failure')}")
            if "msg_per_s" in r:
                log(f"[{label}] {r['msg_per_s']} msg/s, relay {r['relay_cpu_us_per_msg']} us/msg, "
                    f"box {r['box_busy_pct']}% busy, load {r['loadavg_after']}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    by = {r["case"]: r for r in results if "msg_per_s" in r}

    def rate(case):
        return by[case]["msg_per_s"] if case in by else None

    def cpu(case):
        return by[case]["relay_cpu_us_per_msg"] if case in by else None

    ratio_rows = []
    for suffix, _, _, _, limit_target, postfix_targets in scenarios:
        rows = [
            (f"sluice/limit msg/s ({suffix})", ratio(rate(f"sluice {suffix}"), rate(f"limit {suffix}")), ">=",
             limit_target),
            (f"sluice/postfix msg/s ({suffix})", ratio(rate(f"sluice {suffix}"), rate(f"postfix {suffix}")), ">=",
             TARGET_VS_POSTFIX_RATE if postfix_targets else None),
            (f"sluice/postfix CPU per msg ({suffix})", ratio(cpu(f"sluice {suffix}"), cpu(f"postfix {suffix}")), "<=",
             TARGET_VS_POSTFIX_CPU if postfix_targets else None),
            (f"postfix/limit msg/s ({suffix})", ratio(rate(f"postfix {suffix}"), rate(f"limit {suffix}")), None, None),
        ]
        ratio_rows += [ratio_row(*r) for r in rows if r[1] is not None]

    head = ("case", "msg/s", "wall s", "relay us/msg", "usr/sys s", "relay cores", "us/msg to empty", "sink us/msg",
            "src us/msg", "box busy", "box us/msg", "ok")
    rows = []
    for r in results:
        if "msg_per_s" not in r:
            rows.append((r["case"],) + ("-",) * (len(head) - 2) + ("NO",))
            continue
        relayed = r["relay"] != "none"
        rows.append((r["case"], f"{r['msg_per_s']:.0f}", f"{r['wall_s']:.2f}",
                     f"{r['relay_cpu_us_per_msg']:.0f}" if relayed else "-",
                     f"{r['relay_cpu_user_s']:.2f}/{r['relay_cpu_sys_s']:.2f}" if relayed else "-",
                     f"{r['relay_cores']:.2f}" if relayed else "-",
                     f"{r['relay_cpu_us_per_msg_to_empty_queue']:.0f}" if relayed else "-",
                     f"{r['sink_cpu_us_per_msg']:.0f}", f"{r['source_cpu_us_per_msg']:.0f}",
                     f"{r['box_busy_pct']:.0f}%", f"{r['box_cpu_us_per_msg']:.0f}", "yes" if r["ok"] else "NO"))
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
    print(f"relay benchmark, {when}, {os.cpu_count()} CPUs, load average at end {loadavg()}"
          + (f"; perf attached to '{perf_case}'" if perf_case else ""))
    print_table(head, rows, ratio_rows, 40)
    notes = []
    for r in results:
        if r.get("relay") == "sluice":
            notes.append(f"{r['case']}: {r['spool_fsyncs']} fdatasyncs for {r['spool_messages_fsynced']} messages "
                         f"({r['messages_per_fsync']} per fsync, mean {r['fsync_mean_ms']} ms); delivered "
                         f"{r['recipients_delivered']} recipients; queue empty {r['relay_settle_s']} s after the "
                         f"sink had all; CPU by thread (s): {r['relay_cpu_by_part_s']}")
        if r.get("relay") == "postfix":
            notes.append(f"{r['case']}: {r['recipients_sent_logged']} recipients logged sent; queue empty "
                         f"{r['relay_settle_s']} s after the sink had all; CPU by process name (s): "
                         f"{r['relay_cpu_by_part_s']}")
        if r.get("perf"):
            notes.append(f"{r['case']}: perf reports {r['perf']}")
        if not r["ok"]:
            notes.append(f"{r['case']}: FAILED: {r.get('failure')}")
    for n in notes:
        print(n)
    print()
    commands = [(r["case"], role, r[f"{role}_command"]) for r in results if "source_command" in r
                for role in ("sink", "relay", "source") if role != "relay" or r["relay_command"]]
    configs = []
    for kind in ("sluice", "postfix"):
        configs += [(r["case"], "config", r["relay_config"]) for r in results
                    if r.get("relay") == kind and r.get("relay_config")][:1]
    print_commands(commands, configs)

    if args.markdown:
        write_markdown(args.markdown, when, results[0].get('loadavg_before', '?') if results else '?', head, rows,
                       ratio_rows, notes)
    if args.json:
        write_json(args.json, started, results, ratio_rows)
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
