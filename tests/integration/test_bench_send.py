"""`sluice-bench send` (the load generator) at a tiny size against a real receiver on loopback
(tests/fixtures/smtp_receiver.py, aiosmtpd): what its JSON counts is what the receiver got,
every X-Sluice-Bench-Id is unique and every X-Sluice-Bench-Sum verifies against the body as
received, refusals show up by reply code, and --pipelining off / --messages-per-connection 1,
--rate, --duration, --threads, --size distributions and --source work. No timing asserts: the
figures are only checked for being there and consistent.

The binary is build/sluice-bench, next to the `sluice` that ctest passes as --sluice.
"""

import json
import os
import re
import subprocess
import tempfile
import unittest

import harness as h

RUN_TIMEOUT_S = 120  # generous: the suite also runs under ASan


def crc32c(data):
    """CRC32C (Castagnoli), bitwise: the oracle for X-Sluice-Bench-Sum (sizes here are tiny)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def bench_path():
    return os.path.join(os.path.dirname(h.SLUICE), "sluice-bench")


class BenchSendTest(unittest.TestCase):
    def setUp(self):
        _, self.rx_module = h.import_fixtures()
        self.tmp = tempfile.TemporaryDirectory(prefix="sluice-bench-test-")
        self.addCleanup(self.tmp.cleanup)

    def receiver(self, host="127.0.0.1", **faults):
        rx = self.rx_module.SmtpReceiver(host, 0, **faults).start()
        self.addCleanup(rx.stop)
        return rx

    def send(self, *args, expect_rc=0):
        """Runs sluice-bench send with args and --json; returns (json document, stdout)."""
        path = os.path.join(self.tmp.name, "result.json")
        if os.path.exists(path):
            os.unlink(path)
        proc = subprocess.run([bench_path(), "send", *args, "--json", path], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
        self.assertEqual(proc.returncode, expect_rc, "stdout:\n%s\nstderr:\n%s" % (proc.stdout, proc.stderr))
        with open(path) as f:
            return json.load(f), proc.stdout

    def check_integrity(self, messages, run_id, expected_count, body_sizes):
        """Every message once, ids RUN-0 .. RUN-(n-1), each body's checksum and size right."""
        ids = [m.header("X-Sluice-Bench-Id") for m in messages]
        self.assertEqual(len(ids), len(set(ids)), "duplicate ids")
        self.assertEqual(sorted(ids, key=lambda i: int(i.rsplit("-", 1)[1])),
                         ["%s-%d" % (run_id, n) for n in range(expected_count)])
        for m in messages:
            self.assertEqual(m.header("Message-ID"), "<%s@sluice-bench.invalid>" % m.header("X-Sluice-Bench-Id"))
            self.assertEqual(m.header("X-Sluice-Bench-Sum"), "crc32c:%08x" % crc32c(m.body), m)
            self.assertIn(len(m.body), body_sizes, m)
            self.assertTrue(m.body.endswith(b"\r\n"))

    def test_counts_ids_and_checksums_match_the_receiver(self):
        rx = self.receiver()
        result, stdout = self.send("--target", rx.address, "--sessions", "3", "--messages", "30", "--rcpts", "2",
                                   "--size", "3000", "--from", "s{n}@bench.test", "--to", "u{n}@d{n}.example.test")
        self.assertEqual(result["messages"], {"sent": 30, "accepted": 30, "deferred": 0, "rejected": 0})
        self.assertEqual(result["recipients"]["accepted"], 60)
        messages = rx.messages
        self.assertEqual(len(messages), 30)
        self.check_integrity(messages, result["run_id"], 30, {3000})
        self.assertEqual(result["octets_accepted"], sum(len(m.data) for m in messages))
        # {n}: the message number in MAIL FROM, the recipient number of the run in RCPT TO.
        for m in messages:
            n = int(m.header("X-Sluice-Bench-Id").rsplit("-", 1)[1])
            self.assertEqual(m.sender, "s%d@bench.test" % n)
            self.assertEqual(m.recipients, ["u%d@d%d.example.test" % (i, i) for i in (2 * n, 2 * n + 1)])
        # Three sessions, no per-connection limit: three connections, and PIPELINING was used.
        self.assertEqual(result["connections"]["connected"], 3)
        self.assertEqual(rx.connection_count, 3)
        self.assertTrue(any(c.startswith("RCPT") for conn in rx.connections for c in conn.pipelined))
        latency = result["latency_us"]
        for step in ("connect", "greeting", "ehlo", "mail", "rcpt", "data", "data_end", "message"):
            self.assertGreater(latency[step]["count"], 0, step)
            self.assertLessEqual(latency[step]["p50"], latency[step]["p99"], step)
            self.assertLessEqual(latency[step]["p99_9"], latency[step]["max"], step)
        self.assertEqual(latency["mail"]["count"], 30)
        self.assertEqual(latency["rcpt"]["count"], 60)
        self.assertIn("msg/s", stdout)
        self.assertNotIn("\r", stdout)  # no progress line when stdout is not a terminal
        self.assertRegex(stdout, r"(?m)^data_end +30 ")

    def test_refusals_are_counted_by_reply_code(self):
        rejected = {"rcpt1@example.test", "rcpt2@example.test", "rcpt5@example.test"}
        deferred = {"rcpt3@example.test"}
        rx = self.receiver(rcpt_550=rejected, rcpt_451_once=deferred)
        result, _ = self.send("--target", rx.address, "--sessions", "2", "--messages", "8")
        # One recipient per message: rcpt0 .. rcpt7.
        self.assertEqual(result["messages"], {"sent": 8, "accepted": 4, "deferred": 1, "rejected": 3})
        self.assertEqual(result["recipients"]["rejected_by_code"], {"550": 3})
        self.assertEqual(result["recipients"]["deferred_by_code"], {"451": 1})
        got = sorted(r for m in rx.messages for r in m.recipients)
        self.assertEqual(got, ["rcpt0@example.test", "rcpt4@example.test", "rcpt6@example.test", "rcpt7@example.test"])
        # Two recipients each, the second of message 0 refused: accepted, one recipient rejected.
        rx2 = self.receiver(host="127.0.0.2", rcpt_550={"rcpt1@example.test"})
        result, _ = self.send("--target", rx2.address, "--messages", "2", "--rcpts", "2", "--pipelining", "off")
        self.assertEqual(result["messages"], {"sent": 2, "accepted": 2, "deferred": 0, "rejected": 0})
        self.assertEqual(result["recipients"]["accepted"], 3)
        self.assertEqual(result["recipients"]["rejected_by_code"], {"550": 1})

    def test_a_receiver_that_drops_the_connection_mid_data_is_a_deferral(self):
        rx = self.receiver(drop_mid_data=100, drop_mid_data_times=1)
        result, _ = self.send("--target", rx.address, "--messages", "5", "--size", "2k")
        self.assertEqual(result["messages"]["sent"], 5)
        self.assertEqual(result["messages"]["accepted"], 4)
        self.assertEqual(result["messages"]["deferred"], 1)
        self.assertEqual(result["recipients"]["deferred_by_code"], {"connection_lost": 1})
        self.assertEqual(len(rx.messages), 4)

    def test_pipelining_off_and_a_connection_per_message(self):
        rx = self.receiver()
        result, _ = self.send("--target", rx.address, "--sessions", "2", "--messages", "6", "--rcpts", "3",
                              "--messages-per-connection", "1", "--pipelining", "off")
        self.assertEqual(result["messages"]["accepted"], 6)
        h.wait_until(lambda: all(c.closed for c in rx.connections), 30)
        connections = rx.connections
        self.assertEqual(len(connections), 6)
        self.assertEqual(result["connections"]["connected"], 6)
        for conn in connections:
            self.assertEqual(conn.messages, 1, conn)
            self.assertEqual(conn.pipelined, [], conn)  # one command at a time
            self.assertEqual(conn.commands[-1], "QUIT")
        self.check_integrity(rx.messages, result["run_id"], 6, {1024})

    def test_several_targets_threads_and_a_size_distribution(self):
        rx_a = self.receiver(host="127.0.0.2")
        rx_b = self.receiver(host="127.0.0.3")
        result, _ = self.send("--target", rx_a.address, "--target", rx_b.address, "--threads", "2", "--sessions", "4",
                              "--messages", "40", "--size", "200:3,5k:1", "--messages-per-connection", "5")
        self.assertEqual(result["messages"]["accepted"], 40)
        messages = rx_a.messages + rx_b.messages
        self.assertEqual(len(messages), 40)
        self.assertGreater(len(rx_a.messages), 0)
        self.assertGreater(len(rx_b.messages), 0)
        self.check_integrity(messages, result["run_id"], 40, {200, 5120})
        self.assertEqual({len(m.body) for m in messages}, {200, 5120})

    def test_open_loop_rate_and_duration(self):
        rx = self.receiver()
        result, _ = self.send("--target", rx.address, "--sessions", "2", "--rate", "50/s", "--messages", "10")
        self.assertEqual(result["messages"]["accepted"], 10)
        self.assertEqual(result["latency_us"]["queue_delay"]["count"], 10)
        self.assertEqual(result["latency_us"]["message"]["count"], 10)
        self.check_integrity(rx.messages, result["run_id"], 10, {1024})
        # --duration alone: it stops by itself, and what it counts is what arrived.
        rx2 = self.receiver(host="127.0.0.2")
        result, _ = self.send("--target", rx2.address, "--rate", "20", "--duration", "500ms")
        self.assertGreater(result["messages"]["sent"], 0)
        self.assertEqual(result["messages"]["accepted"], result["messages"]["sent"])
        self.assertEqual(len(rx2.messages), result["messages"]["accepted"])

    def test_source_addresses(self):
        rx = self.receiver()
        result, _ = self.send("--target", rx.address, "--sessions", "3", "--messages", "6",
                              "--messages-per-connection", "1", "--source", "127.0.0.5-127.0.0.7")
        self.assertEqual(result["messages"]["accepted"], 6)
        self.assertEqual({m.peer[0] for m in rx.messages}, {"127.0.0.5", "127.0.0.6", "127.0.0.7"})

    def test_a_target_that_refuses_connections_ends_the_run_with_an_error(self):
        port = h.free_port()
        result, _ = self.send("--target", "127.0.0.1:%d" % port, "--sessions", "2", "--messages", "5", expect_rc=1)
        self.assertEqual(result["messages"]["sent"], 0)
        self.assertGreater(result["connections"]["connect_failures"], 0)
        self.assertIn("connect: Connection refused", result["connections"]["errors"])

    def test_usage_errors(self):
        for args in (["--messages", "5"], ["--target", "nowhere"], ["--target", "127.0.0.1:25", "--size", "1"],
                     ["--target", "127.0.0.1:25", "--pipelining", "maybe"], ["--target", "127.0.0.1:25", "--bogus", "1"]):
            proc = subprocess.run([bench_path(), "send", *args], capture_output=True, text=True, timeout=30)
            self.assertEqual(proc.returncode, 2, args)
            self.assertIn("sluice-bench send:", proc.stderr)


if __name__ == "__main__":
    h.main()
