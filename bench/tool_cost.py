#!/usr/bin/python3
"""What the load tools cost (issue 9 section 5): CPU per message of `sluice-bench send` against
Postfix's smtp-source driving the same sink, and of `sluice-bench sink` against smtp-sink taking
the same load. Targets: each at most half of the Postfix tool's CPU per message.

How: each figure is the tool's own rusage (user + system, from wait4 of the process when it
exits: every thread included), divided by the messages it handled. Sender cases: the sink is
smtp-sink, and the driver (smtp-source or sluice-bench send) is measured. Sink cases: the driver
is the same for both sinks, and the sink is measured (stopped with SIGTERM after the driver is
done). Cases run back to back, `--runs` times each, alternating, and the median is reported, so
the ratios are measured in one run on one machine.

Modes: "reuse" (one connection for many messages: smtp-source -d, send with no per-connection
limit) and "per-message" (a new connection for each message: smtp-source without -d, send
--messages-per-connection 1). sluice-bench send pipelines (its default) where the server offers it;
smtp-source never does; --pipelining off is given for the like-for-like row.

Everything runs on loopback, each server on a free port, every process stopped by PID.

Usage:
  /usr/bin/python3 bench/tool_cost.py [--bench build/sluice-bench] [--messages 20000]
      [--sessions 20] [--size 1024] [--runs 3] [--json FILE]

Standard library only; reuses bench/inbound.py's helpers. Needs root for smtp-sink -u nobody.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inbound import (SINK_BACKLOG, SMTP_SINK, SMTP_SOURCE, START_TIMEOUT_S, STOP_TIMEOUT_S,  # noqa: E402
                     free_port, log, wait_greeting)

HOST = "127.0.0.1"
TARGET_RATIO = 0.5


def run_measured(command):
    """Runs a command to its end; returns (exit status, CPU seconds from wait4)."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {proc.returncode}: {stderr[-2000:]}")
    return usage.ru_utime + usage.ru_stime


class Server:
    """A sink process on a free port; stop() returns its CPU seconds (wait4 rusage)."""

    def __init__(self, command_for_port):
        self.port = free_port(HOST)
        self.proc = subprocess.Popen(command_for_port(self.port), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_greeting(HOST, self.port, time.monotonic() + START_TIMEOUT_S)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid == self.proc.pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return usage.ru_utime + usage.ru_stime
            time.sleep(0.02)
        self.proc.kill()
        _, _, usage = os.wait4(self.proc.pid, 0)
        raise RuntimeError(f"sink pid {self.proc.pid} did not stop on SIGTERM")

    def kill(self):
        if self.proc.returncode is None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def smtp_sink(port):
    return [SMTP_SINK, "-u", "nobody", "-c", f"{HOST}:{port}", str(SINK_BACKLOG)]


def bench_sink(bench):
    return lambda port: [bench, "sink", "--listen", f"{HOST}:{port}"]


def smtp_source(args, mode, port):
    command = [SMTP_SOURCE, "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size)]
    if mode == "reuse":
        command.append("-d")
    return command + [f"{HOST}:{port}"]


def bench_send(args, mode, port, pipelining="on"):
    per_connection = "1" if mode == "per-message" else "0"
    return [args.bench, "send", "--target", f"{HOST}:{port}", "--sessions", str(args.sessions),
            "--messages", str(args.messages), "--size", str(args.size), "--messages-per-connection",
            per_connection, "--pipelining", pipelining]


def sender_case(args, name, command_for_port):
    """The driver's CPU per message, into smtp-sink."""
    sink = Server(smtp_sink)
    try:
        return run_measured(command_for_port(sink.port)) / args.messages
    finally:
        sink.stop()


def sink_case(args, sink_command, driver_for_port):
    """The sink's CPU per message, driven by the same driver."""
    sink = Server(sink_command)
    try:
        run_measured(driver_for_port(sink.port))
    except BaseException:
        sink.kill()
        raise
    return sink.stop() / args.messages


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--bench", default=os.path.join(root, "build", "sluice-bench"))
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()

    cases = {}
    for mode in ("reuse", "per-message"):
        cases[f"send {mode}"] = lambda mode=mode: sender_case(args, "send", lambda p: bench_send(args, mode, p))
        cases[f"send {mode} no-pipelining"] = lambda mode=mode: sender_case(
            args, "send", lambda p: bench_send(args, mode, p, "off"))
        cases[f"smtp-source {mode}"] = lambda mode=mode: sender_case(
            args, "smtp-source", lambda p: smtp_source(args, mode, p))
        # Sinks: driven by sluice-bench send (the cheaper driver leaves the sink more of the box).
        cases[f"sink {mode}"] = lambda mode=mode: sink_case(args, bench_sink(args.bench),
                                                            lambda p: bench_send(args, mode, p))
        cases[f"smtp-sink {mode}"] = lambda mode=mode: sink_case(args, smtp_sink, lambda p: bench_send(args, mode, p))
    samples = {name: [] for name in cases}
    for run in range(args.runs):
        for name, case in cases.items():
            samples[name].append(case())
            log(f"run {run + 1}/{args.runs} {name}: {samples[name][-1] * 1e6:.1f} us/msg")
    median_us = {name: statistics.median(values) * 1e6 for name, values in samples.items()}

    rows = []
    for mode in ("reuse", "per-message"):
        for tool, baseline in ((f"send {mode}", f"smtp-source {mode}"),
                               (f"send {mode} no-pipelining", f"smtp-source {mode}"),
                               (f"sink {mode}", f"smtp-sink {mode}")):
            ratio = median_us[tool] / median_us[baseline]
            rows.append({"tool": tool, "us_per_msg": round(median_us[tool], 2), "baseline": baseline,
                         "baseline_us_per_msg": round(median_us[baseline], 2), "ratio": round(ratio, 3),
                         "target": f"<= {TARGET_RATIO}", "met": ratio <= TARGET_RATIO})
    width = max(len(r["tool"]) for r in rows) + 2
    print(f"{'tool':{width}s} {'us/msg':>8s}  {'baseline':26s} {'us/msg':>8s}  ratio  target")
    for r in rows:
        print(f"{r['tool']:{width}s} {r['us_per_msg']:8.2f}  {r['baseline']:26s} {r['baseline_us_per_msg']:8.2f}  "
              f"{r['ratio']:.3f}  {'met' if r['met'] else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": [sys.executable] + sys.argv, "messages": args.messages, "sessions": args.sessions,
                       "size": args.size, "runs": args.runs, "samples_us": {k: [v * 1e6 for v in vs]
                                                                            for k, vs in samples.items()},
                       "rows": rows, "loadavg": open("/proc/loadavg").read().split()[:3]}, f, indent=1)


if __name__ == "__main__":
    main()
