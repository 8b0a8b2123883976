"""`sluice-bench sink` (the receiving server of the load tools) at a tiny size on loopback: counts
per listener, the id and checksum check of every message (intact, corrupt, duplicate, no id),
--verify against a sender's accepted ids, and the faults it injects.

The binary is build/sluice-bench (`sluice-bench sink`), next to the `sluice` that ctest
passes as --sluice. Messages are sent with smtplib and the harness's raw client (the send tool
is tested on its own). No timing asserts.
"""

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def sink_command():
    return [os.path.join(os.path.dirname(h.SLUICE), "sluice-bench"), "sink"]


def _crc32c_table():
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def bench_message(message_id, body=b"hello\r\nworld\r\n", summed=None):
    """A message as sluice-bench send writes it (the sum of `summed` when given: a corrupt one)."""
    total = crc32c(body if summed is None else summed)
    return (b"Subject: bench\r\nX-Sluice-Bench-Id: " + message_id.encode() +
            b"\r\nX-Sluice-Bench-Sum: crc32c:%08x\r\n\r\n" % total + body)


class Sink:
    """One sluice-bench sink process; stop() sends a signal and returns its JSON."""

    def __init__(self, tmp, args, listeners=1, name="sink"):
        self.json_path = os.path.join(tmp, name + ".json")
        self.err_path = os.path.join(tmp, name + ".stderr")
        command = sink_command()
        for _ in range(listeners):
            command += ["--listen", "127.0.0.1:0"]
        command += ["--json", self.json_path] + list(args)
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.err)
        line = h.wait_until(self._ready_line, h.READY_TIMEOUT_S)
        if not line:
            self.stop()
            raise AssertionError("the sink did not start: %s" % self.stderr())
        self.ports = [int(a.rsplit(":", 1)[1]) for a in line.split(" listening on ", 1)[1].split()]
        self.port = self.ports[0]

    def _ready_line(self):
        if self.proc.poll() is not None:
            return "exited"
        for line in self.stderr().splitlines():
            if " listening on " in line:
                return line
        return None

    def stderr(self):
        with open(self.err_path) as f:
            return f.read()

    def stop(self, signum=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(h.STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.err.close()
        self.exit_code = code
        if not os.path.exists(self.json_path):
            return None
        with open(self.json_path) as f:
            return json.load(f)


def send(port, message, recipients=("rcpt@example.com",), sender="sender@example.org"):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        return s.sendmail(sender, list(recipients), message)


class BenchSinkTest(h.SluiceTestCase):
    def start_sink(self, *args, listeners=1, name="sink"):
        sink = Sink(self.tmp, args, listeners=listeners, name=name)
        self.addCleanup(lambda: sink.proc.poll() is None and sink.stop())
        return sink

    def stop_sink(self, sink, signum=signal.SIGTERM):
        result = sink.stop(signum)
        self.assertEqual(sink.exit_code, 0, sink.stderr())
        self.assertIsNotNone(result, "no JSON written")
        return result

    def verify(self, sender_doc, sink):
        sender_path = os.path.join(self.tmp, "sender.json")
        with open(sender_path, "w") as f:
            json.dump(sender_doc, f)
        proc = subprocess.run(sink_command() + ["--verify", sender_path, "--json", sink.json_path],
                              capture_output=True, text=True, timeout=60)
        counts = {}
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
        return proc, counts

    def test_counts_per_listener_and_checks(self):
        sink = self.start_sink(listeners=2)
        stuffed = b"a line\r\n.starts with a dot\r\n..two\r\n"  # smtplib stuffs it; the sum is of the unstuffed
        messages = [bench_message("r1-%d" % n, body=stuffed if n == 2 else b"hello\r\n") for n in (1, 2, 3)]
        for message in messages:
            self.assertEqual(send(sink.ports[0], message, recipients=("a@x.example", "b@x.example")), {})
        duplicate = bench_message("r1-2", body=stuffed)
        corrupt = bench_message("r1-4", body=b"what arrived\r\n", summed=b"what was sent\r\n")
        foreign = b"Subject: not from sluice-bench\r\n\r\nhi\r\n"
        for message in (duplicate, corrupt, foreign):
            self.assertEqual(send(sink.ports[1], message), {})
        # A sum without its "crc32c:" prefix is read too; BDAT bodies are checked the same way.
        body = b"chunked\r\n.dot\r\n"
        bdat = (b"Subject: b\r\nX-Sluice-Bench-Id: r1-5\r\nX-Sluice-Bench-Sum: %08x\r\n\r\n" % crc32c(body) + body)
        with h.SmtpClient(sink.ports[1]) as c:
            self.assertReply(c.cmd("EHLO client.example"), 250)
            c.send(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.com>\r\nBDAT %d LAST\r\n" % len(bdat) + bdat)
            replies = c.read_replies(3)
            self.assertEqual([r.code for r in replies], [250, 250, 250], replies)
        result = self.stop_sink(sink)
        self.assertEqual(result["messages"], 7)
        self.assertEqual(result["recipients"], 3 * 2 + 4)
        self.assertEqual(result["octets"], sum(map(len, messages + [duplicate, corrupt, foreign, bdat])))
        first, second = result["listeners"]
        self.assertEqual((first["connections"], first["messages"], first["recipients"]), (3, 3, 6))
        self.assertEqual((second["connections"], second["messages"], second["recipients"]), (4, 4, 4))
        self.assertEqual(first["address"], "127.0.0.1:%d" % sink.ports[0])
        self.assertEqual(result["check"], {"intact": 4, "corrupt": 1, "duplicate": 1, "no_id": 1})
        self.assertEqual(result["received_ids"], {"ranges": {"r1": [[1, 5]]}, "other": []})
        self.assertEqual(result["duplicate_ids"], ["r1-2"])
        self.assertEqual(result["corrupt_ids"], ["r1-4"])

    def test_sigint_stops_cleanly_with_the_json(self):
        sink = self.start_sink()
        send(sink.port, bench_message("run-x-1"))
        result = self.stop_sink(sink, signal.SIGINT)
        self.assertEqual((result["connections"], result["messages"]), (1, 1))
        self.assertEqual(result["received_ids"]["ranges"], {"run-x": [[1, 1]]})

    def test_verify_finds_missing_and_duplicated(self):
        sink = self.start_sink()
        for n in (1, 2, 3, 3, 5, 6):  # 3 twice; 4 never arrives; 6 was not accepted by the sender
            send(sink.port, bench_message("v-%d" % n))
        send(sink.port, bench_message("odd"))  # an id of another form
        self.stop_sink(sink)
        proc, counts = self.verify({"accepted_ids": ["v-1", "v-2", "v-3", "v-4", "v-5", "odd"]}, sink)
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertEqual(counts, {"accepted": 6, "received": 6, "intact": 4, "missing": 1, "duplicated": 1,
                                  "corrupt": 0, "unexpected": 1}, proc.stdout)
        self.assertIn("missing     1  (v-4)", proc.stdout)
        self.assertIn("duplicated  1  (v-3)", proc.stdout)
        self.assertIn("unexpected  1  (v-6)", proc.stdout)
        self.assertIn("FAILED", proc.stdout)
        # The same arrivals against what a clean run's sender says, in ranges: all intact.
        proc, counts = self.verify({"accepted_id_ranges": {"v": [[1, 2], [5, 6]]}, "accepted_ids": ["odd"]}, sink)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertEqual((counts["intact"], counts["missing"], counts["duplicated"], counts["unexpected"]),
                         (5, 0, 0, 1))
        proc, _ = self.verify({"something": []}, sink)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("accepted_ids", proc.stderr)

    def run_send(self, name, *args):
        """sluice-bench send with args; returns the path of its --json."""
        path = os.path.join(self.tmp, name + ".json")
        proc = subprocess.run([os.path.join(os.path.dirname(h.SLUICE), "sluice-bench"), "send", *args,
                               "--json", path], capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return path

    def verify_file(self, sender_path, sink):
        with open(sender_path) as f:
            return self.verify(json.load(f), sink)

    def test_verify_catches_a_message_lost_or_duplicated_between_send_and_sink(self):
        """End to end with the real sender: its --json (accepted_id_ranges) against what arrived."""
        sink, elsewhere = self.start_sink(name="a"), self.start_sink(name="b")
        clean = self.run_send("clean", "--target", "127.0.0.1:%d" % sink.port, "--messages", "20",
                              "--sessions", "3", "--run-id", "e2e")
        with open(clean) as f:
            self.assertEqual(json.load(f)["accepted_id_ranges"], {"e2e": [[0, 19]]})
        # Lost: a run whose sessions alternate between the sink and another server, checked
        # against the sink alone: every message the other one took is missing here.
        split = self.run_send("split", "--target", "127.0.0.1:%d" % sink.port, "--target",
                              "127.0.0.1:%d" % elsewhere.port, "--messages", "10", "--sessions", "2",
                              "--run-id", "split")
        # Duplicated: message e2e-0 sent again (same run id) after the clean run.
        self.run_send("again", "--target", "127.0.0.1:%d" % sink.port, "--messages", "1", "--run-id", "e2e")
        self.stop_sink(sink)
        took_elsewhere = self.stop_sink(elsewhere)["messages"]
        self.assertGreater(took_elsewhere, 0)
        self.assertLess(took_elsewhere, 10)

        proc, counts = self.verify_file(clean, sink)
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertEqual((counts["accepted"], counts["intact"], counts["missing"], counts["duplicated"]),
                         (20, 19, 0, 1), proc.stdout)
        self.assertIn("duplicated  1  (e2e-0)", proc.stdout)
        proc, counts = self.verify_file(split, sink)
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertEqual((counts["accepted"], counts["missing"], counts["intact"]),
                         (10, took_elsewhere, 10 - took_elsewhere), proc.stdout)
        # The other server's JSON against the split run: what it took is intact, the rest missing.
        proc, counts = self.verify_file(split, elsewhere)
        self.assertEqual((counts["intact"], counts["missing"]), (took_elsewhere, 10 - took_elsewhere), proc.stdout)

    def test_send_chunking_sends_bdat_and_every_message_arrives_intact(self):
        sink = self.start_sink()
        sizes = "100:1,5000:1,70000:1"
        path = self.run_send("bdat", "--target", "127.0.0.1:%d" % sink.port, "--messages", "30", "--sessions", "3",
                             "--size", sizes, "--rcpts", "2", "--run-id", "bdat", "--chunking")
        with open(path) as f:
            sent = json.load(f)
        self.assertTrue(sent["options"]["chunking"])
        self.assertEqual(sent["messages"]["accepted"], 30)
        # No DATA command was sent (no 354 step), every message had a final reply (BDAT LAST).
        self.assertEqual(sent["latency_us"]["data"]["count"], 0)
        self.assertEqual(sent["latency_us"]["data_end"]["count"], 30)
        received = self.stop_sink(sink)
        self.assertEqual(received["check"], {"intact": 30, "corrupt": 0, "duplicate": 0, "no_id": 0})
        self.assertEqual(received["recipients"], 60)
        proc, counts = self.verify_file(path, sink)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertEqual(counts["intact"], 30)
        # Against a server without CHUNKING the same run uses DATA.
        plain = self.start_sink("--no-chunking", "--max-size", "3000", name="plain")
        path = self.run_send("data", "--target", "127.0.0.1:%d" % plain.port, "--messages", "5", "--chunking")
        with open(path) as f:
            self.assertEqual(json.load(f)["latency_us"]["data"]["count"], 5)
        # --max-size: SIZE says 3000, and the sender refuses a larger message before MAIL (5.3.4).
        path = self.run_send("big", "--target", "127.0.0.1:%d" % plain.port, "--messages", "2", "--size", "4000")
        with open(path) as f:
            self.assertEqual(json.load(f)["recipients"]["rejected_by_code"], {"message_too_big": 2})
        self.assertEqual(self.stop_sink(plain)["check"]["intact"], 5)

    def test_rcpt_5xx_refuses_every_recipient(self):
        sink = self.start_sink("--rcpt-5xx", "1.0")
        with h.SmtpClient(sink.port) as c:
            self.assertReply(c.cmd("EHLO client.example"), 250)
            self.assertReply(c.cmd("MAIL FROM:<s@example.org>"), 250)
            for n in range(5):
                self.assertReply(c.cmd("RCPT TO:<user%d@example.com>" % n), 550, "5.1.1")
            self.assertReply(c.cmd("DATA"), 554)
            self.assertReply(c.cmd("QUIT"), 221)
        result = self.stop_sink(sink)
        self.assertEqual((result["messages"], result["faults"]["rcpt_5xx"]), (0, 5))

    def test_rcpt_4xx_is_the_same_for_the_same_address(self):
        sink = self.start_sink("--rcpt-4xx", "0.5")
        addresses = ["user%d@example.com" % n for n in range(40)]
        answers = []
        for _ in range(2):
            with h.SmtpClient(sink.port) as c:
                c.cmd("EHLO client.example")
                c.cmd("MAIL FROM:<s@example.org>")
                answers.append([c.cmd("RCPT TO:<%s>" % a).code for a in addresses])
        self.assertEqual(answers[0], answers[1])
        self.assertEqual(set(answers[0]), {250, 451})  # 40 addresses at one half: both, surely
        result = self.stop_sink(sink)
        self.assertEqual(result["faults"]["rcpt_4xx"], 2 * answers[0].count(451))

    def test_hidden_extensions(self):
        sink = self.start_sink("--no-pipelining", "--no-size")
        with h.SmtpClient(sink.port) as c:
            ehlo = c.cmd("EHLO client.example")
            self.assertReply(ehlo, 250)
            self.assertNotIn("PIPELINING", ehlo.lines)
            self.assertFalse(any(line.startswith("SIZE") for line in ehlo.lines), ehlo)
            self.assertIn("8BITMIME", ehlo.lines)
        self.stop_sink(sink)

    def test_faults_file_helo_only_and_defer_after_per_connection(self):
        faults = os.path.join(self.tmp, "faults.toml")
        with open(faults, "w") as f:
            f.write("helo_only = true\ndefer-after-per-connection = 2\n")
        sink = self.start_sink("--faults", faults)
        with h.SmtpClient(sink.port) as c:
            self.assertReply(c.cmd("EHLO client.example"), 502)
            self.assertReply(c.cmd("HELO client.example"), 250)
            for n in range(2):
                self.assertReply(c.transaction(body=bench_message("d-%d" % n)), 250)
            self.assertReply(c.cmd("MAIL FROM:<s@example.org>"), 421, "4.7.0")
            self.assertTrue(c.wait_closed())
        result = self.stop_sink(sink)
        self.assertEqual((result["messages"], result["faults"]["deferred_mail"]), (2, 1))

    def test_recipient_patterns_and_defer_after_per_minute(self):
        # Not in the last seconds of a minute: the window must not turn over during the test.
        while time.time() % 60 > 50:
            time.sleep(1)
        sink = self.start_sink("--rcpt-5xx-pattern", "*@gone.example", "--rcpt-4xx-pattern", "full*@*",
                               "--defer-after-per-minute", "3")
        with h.SmtpClient(sink.port) as c:
            self.assertReply(c.cmd("EHLO client.example"), 250)
            self.assertReply(c.cmd("MAIL FROM:<s@example.org>"), 250)
            self.assertReply(c.cmd("RCPT TO:<x@Gone.Example>"), 550, "5.1.1")
            self.assertReply(c.cmd("RCPT TO:<full-box@example.com>"), 451, "4.3.0")
            self.assertReply(c.cmd("RCPT TO:<fine@example.com>"), 250)
            self.assertReply(c.cmd("RSET"), 250)
        # Two more MAILs fill the minute (3 in all, over several connections); the next is deferred.
        for n in range(2):
            send(sink.port, bench_message("m-%d" % n))
        with h.SmtpClient(sink.port) as c:
            self.assertReply(c.cmd("EHLO client.example"), 250)
            self.assertReply(c.cmd("MAIL FROM:<s@example.org>"), 421, "4.7.0")
            self.assertTrue(c.wait_closed())
        result = self.stop_sink(sink)
        self.assertEqual(result["messages"], 2)
        self.assertEqual((result["faults"]["rcpt_5xx"], result["faults"]["rcpt_4xx"]), (1, 1))
        self.assertEqual(result["faults"]["deferred_mail_per_minute"], 1)

    def test_greeting_421_hits_the_fraction_of_connections(self):
        sink = self.start_sink("--greeting-421", "0.5")
        greetings = []
        for _ in range(4):
            with h.SmtpClient(sink.port) as c:
                greetings.append(c.greeting.code)
        self.assertEqual(greetings, [220, 421, 220, 421])
        result = self.stop_sink(sink)
        self.assertEqual((result["connections"], result["faults"]["greeting_421"]), (4, 2))

    def test_drop_mid_data_never_answers_the_message(self):
        sink = self.start_sink("--drop-mid-data", "1")
        with h.SmtpClient(sink.port) as c:
            c.cmd("EHLO client.example")
            c.cmd("MAIL FROM:<s@example.org>")
            c.cmd("RCPT TO:<r@example.com>")
            self.assertReply(c.cmd("DATA"), 354)
            c.send(bench_message("m-1"))
            self.assertTrue(c.wait_closed())
            self.assertEqual(c.buffer, b"")  # no reply to the message
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            send(sink.port, bench_message("m-2"))
        result = self.stop_sink(sink)
        self.assertEqual((result["messages"], result["faults"]["dropped_mid_data"]), (0, 2))
        self.assertEqual(result["received_ids"]["ranges"], {})

    def test_delay_keeps_pipelined_replies_in_order(self):
        sink = self.start_sink("--delay-ms", "20")
        with h.SmtpClient(sink.port) as c:
            self.assertEqual(c.greeting.code, 220)
            c.send(b"EHLO client.example\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<r@example.com>\r\n"
                   b"RCPT TO:<t@example.com>\r\nDATA\r\n")
            self.assertEqual([r.code for r in c.read_replies(5)], [250, 250, 250, 250, 354])
            c.send(bench_message("slow-1") + b".\r\nNOOP\r\nQUIT\r\n")
            self.assertEqual([r.code for r in c.read_replies(3)], [250, 250, 221])
        # A client that sends its last commands and half-closes still gets every answer.
        with h.SmtpClient(sink.port) as c:
            c.send(b"EHLO client.example\r\nNOOP\r\nQUIT\r\n")
            c.sock.shutdown(socket.SHUT_WR)
            self.assertEqual([r.code for r in c.read_replies(3)], [250, 250, 221])
            self.assertTrue(c.wait_closed())
        result = self.stop_sink(sink)
        self.assertEqual((result["messages"], result["recipients"], result["check"]["intact"]), (1, 2, 1))


if __name__ == "__main__":
    h.main()
