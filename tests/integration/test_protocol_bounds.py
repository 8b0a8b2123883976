"""SMTP protocol bounds found by outside tools (issue 6, section 7): a transaction with more
recipients than max_recipients, clients that trickle a command line or a DATA phase one octet at
a time, and BDAT corner cases (no RCPT, malformed size)."""

import socket
import time

import harness as h
from harness import SluiceTestCase


def trickle(sock, data, interval):
    """Sends `data` one octet every `interval` s; returns how many octets went out before the
    server closed or answered (whatever it sent is returned too)."""
    sock.setblocking(False)
    received = b""
    sent = 0
    for i in range(len(data)):
        try:
            sock.send(data[i:i + 1])
            sent += 1
        except (BrokenPipeError, ConnectionResetError):
            break
        deadline = time.monotonic() + interval
        closed = False
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
            except BlockingIOError:
                time.sleep(0.05)
            except ConnectionResetError:
                closed = True
                break
        if closed or received:
            break
    sock.setblocking(True)
    return sent, received


class RecipientLimit(SluiceTestCase):
    def test_recipients_over_the_limit_get_452_and_the_transaction_goes_on(self):
        # Before: every 452 4.5.3 counted toward max_errors (20), so the 1,020th RCPT closed the
        # session with 421 and the transaction was lost.
        server = self.start_sluice()
        with server.connect(timeout=30) as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            batch = [b"MAIL FROM:<bulk@example.org>\r\n"]
            batch += [b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(1500)]
            batch.append(b"DATA\r\n")
            c.send(b"".join(batch))
            replies = c.read_replies(1 + 1500 + 1, timeout=30)
            self.assertReply(replies[0], 250)
            codes = [r.code for r in replies[1:1501]]
            self.assertEqual(codes.count(250), 1000, codes[995:1005])
            self.assertEqual(codes[1000:], [452] * 500)
            self.assertEqual(replies[1001].enhanced, "4.5.3")
            self.assertReply(replies[-1], 354)
            r = c.cmd(b"Subject: many\r\n\r\nhello\r\n.")
            self.assertReply(r, 250, "2.0.0")
        stored = server.queued_message(r.queue_id)
        recipients = stored.get("recipients") or stored.get("envelope", {}).get("recipients")
        self.assertEqual(len(recipients), 1000)
        self.assertEqual(recipients[0], "r0@example.com")
        self.assertEqual(recipients[-1], "r999@example.com")
        # The refusal is logged once for the transaction, not 500 times.
        logged = server.wait_for_event("rejected", reason="too_many_recipients")
        self.assertIsNotNone(logged, server.log_tail())
        self.assertEqual(logged["address"], "r1000@example.com")
        self.assertEqual(len(server.events("rejected", reason="too_many_recipients")), 1)
        # ... and counted for each refused RCPT.
        self.assertIn('sluice_rejections_total{reason="too_many_recipients"} 500\n', server.metrics())


class TricklingClients(SluiceTestCase):
    """command_timeout and data_timeout are idle timeouts: they restart on every read. A whole
    command line must still end within command_timeout of its first octet, and a whole DATA phase
    within data_phase_timeout; a client that sends one octet a second is cut off with 421 4.4.2."""

    def test_command_line_trickled_one_octet_at_a_time_is_cut_off(self):
        server = self.start_sluice({"server": {"command_timeout": "3s"}})
        c = server.connect()
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO client.example.org"), 250)
        line = b"NOOP " + b"x" * 40 + b"\r\n"  # 47 octets at 1 per second: far over 3 s
        sent, received = trickle(c.sock, line, 1.0)
        print("\n    %d of %d octets sent before the answer %r" % (sent, len(line), received))
        self.assertTrue(received.startswith(b"421 4.4.2 "), received)
        self.assertLess(sent, len(line), "the line must be cut off before it is complete")
        self.assertTrue(c.wait_closed(10))
        logged = server.wait_for_event("rejected", reason="timeout")
        self.assertIsNotNone(logged, server.log_tail())
        self.assertEqual(logged["timeout"], "command_line")
        self.assertTrue(logged["reply"].startswith("421 4.4.2"), logged)

    def test_data_phase_trickled_one_octet_at_a_time_is_cut_off(self):
        server = self.start_sluice({"server": {"data_timeout": "10s", "data_phase_timeout": "3s"}})
        c = server.connect()
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO client.example.org"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.com>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        body = b"Subject: slow\r\n\r\n" + b"y" * 40 + b"\r\n.\r\n"
        sent, received = trickle(c.sock, body, 1.0)
        print("\n    %d of %d body octets sent before the answer %r" % (sent, len(body), received))
        self.assertTrue(received.startswith(b"421 4.4.2 "), received)
        self.assertLess(sent, len(body))
        self.assertTrue(c.wait_closed(10))
        logged = server.wait_for_event("rejected", reason="timeout", timeout="data_phase")
        self.assertIsNotNone(logged, server.log_tail())
        self.assertEqual(server.queue_count(), 0)

    def test_bdat_chunks_trickled_one_a_second_are_cut_off(self):
        # Each chunk is quick; the body as a whole (first chunk to LAST) is bounded.
        server = self.start_sluice({"server": {"data_timeout": "10s", "data_phase_timeout": "3s",
                                               "command_timeout": "10s"}})
        c = server.connect()
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO client.example.org"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.com>"), 250)
        answers = []
        for i in range(20):
            try:
                c.send(b"BDAT 1\r\nx")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the 421 is already waiting to be read
            r = c.read_reply()
            answers.append(r.code)
            if r.code != 250:
                break
            time.sleep(1.0)
        print("\n    chunk answers: %s" % answers)
        self.assertEqual(answers[-1], 421, answers)
        self.assertLess(len(answers), 20)
        self.assertTrue(c.wait_closed(10))
        self.assertIsNotNone(server.wait_for_event("rejected", reason="timeout", timeout="data_phase"),
                             server.log_tail())

    def test_pipelined_client_is_not_cut_off_by_the_line_bound(self):
        # Lines split across reads, quickly: each line ends long before command_timeout.
        server = self.start_sluice({"server": {"command_timeout": "2s"}})
        c = server.connect()
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO client.example.org"), 250)
        for i in range(30):
            c.send(b"NO")
            time.sleep(0.05)
            c.send(b"OP\r\nNO")
            time.sleep(0.05)
            c.send(b"OP\r\n")
            self.assertEqual([r.code for r in c.read_replies(2)], [250, 250], i)
        # 30 * 0.1 s = 3 s of partial lines in all, more than command_timeout, none alone.
        self.assertReply(c.cmd("QUIT"), 221)


class BdatCornerCases(SluiceTestCase):
    def test_bdat_last_without_rcpt_needs_rcpt(self):
        server = self.start_sluice()
        c = server.connect()
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO client.example.org"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        c.send(b"BDAT 5 LAST\r\nhello")
        r = c.read_reply()
        self.assertReply(r, 503, "5.5.1")
        self.assertIn("RCPT", r.text)
        self.assertReply(c.cmd("NOOP"), 250)

    def test_malformed_bdat_size_is_answered_then_closed(self):
        server = self.start_sluice()
        for bad in (b"BDAT x", b"BDAT 99999999999999999999999 LAST", b"BDAT", b"BDAT 4 MORE"):
            c = server.connect()
            self.addCleanup(c.close)
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
            self.assertReply(c.cmd("RCPT TO:<b@example.com>"), 250)
            c.send(bad + b"\r\nNOOP\r\n")
            r = c.read_reply()
            self.assertReply(r, 521, "5.5.4", bad)
            self.assertTrue(c.wait_closed(10), bad)
            self.assertNotIn(b"250", c.buffer, "nothing after the chunk size may run: %r" % c.buffer)

    def test_bdat_over_the_size_limit_is_logged(self):
        server = self.start_sluice({"server": {"max_message_size": 1000}})
        c = server.connect()
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO client.example.org"), 250)
        self.assertReply(c.cmd("MAIL FROM:<big@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.com>"), 250)
        chunk = b"z" * 1500
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        self.assertReply(c.read_reply(), 552, "5.3.4")
        logged = server.wait_for_event("rejected", reason="message_too_big")
        self.assertIsNotNone(logged, server.log_tail())
        self.assertEqual(logged["from"], "<big@example.org>")
        self.assertEqual(logged["to"], "<b@example.com>")
        self.assertTrue(logged["reply"].startswith("552 5.3.4"), logged)


if __name__ == "__main__":
    h.main()
