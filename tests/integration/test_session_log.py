"""The log answers "what happened to mail for X" (issue 6, section 6): one line per transaction
and per rejection, each with a session id, client, HELO, sender, recipients, size, queue id,
reply and duration; a connect and a disconnect line per session. And the signals an operator
sends to a running relay: SIGHUP reopens the log (logrotate), SIGUSR1/2 are ignored; none of them
stops it."""

import os
import signal

import harness as h
from harness import SluiceTestCase


class TransactionLog(SluiceTestCase):
    def test_transaction_line_has_the_envelope_and_the_outcome(self):
        server = self.start_sluice()
        recipients = ["r%d@example.com" % i for i in range(12)]
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            r = c.transaction(sender="alice@example.org", recipients=recipients,
                              body=b"Subject: log\r\n\r\nhello\r\n")
            self.assertReply(r, 250, "2.0.0")
            self.assertReply(c.cmd("QUIT"), 221)
        line = server.wait_for_event("transaction", id=r.queue_id)
        self.assertIsNotNone(line, server.log_tail())
        self.assertEqual(line["status"], "250")
        self.assertRegex(line["session"], r"^S\d+-\d+$")
        self.assertEqual(line["client"], "127.0.0.1")
        self.assertEqual(line["helo"], "client.example.org")
        self.assertEqual(line["from"], "<alice@example.org>")
        self.assertEqual(line["rcpts"], "12")
        # Bounded: the first ten, then how many more.
        self.assertEqual(line["to"], ",".join("<%s>" % a for a in recipients[:10]) + " +2 more")
        self.assertEqual(line["size"], str(len(b"Subject: log\r\n\r\nhello\r\n")))
        self.assertEqual(line["reply"], "250 2.0.0 Ok: queued as %s" % r.queue_id)
        self.assertGreaterEqual(int(line["duration_ms"]), 0)
        # The session's connect and disconnect lines carry the same id.
        connect = server.wait_for_event("connect", session=line["session"])
        self.assertIsNotNone(connect, server.log_tail())
        self.assertEqual(connect["client"], "127.0.0.1")
        disconnect = server.wait_for_event("disconnect", session=line["session"])
        self.assertIsNotNone(disconnect, server.log_tail())
        self.assertEqual(disconnect["messages"], "1")
        self.assertEqual(disconnect["commands"], "16")  # EHLO, MAIL, 12 RCPT, DATA, QUIT
        self.assertGreaterEqual(int(disconnect["duration_ms"]), 0)

    def test_rejections_carry_address_and_reply(self):
        server = self.start_sluice({"relay": {"networks": [], "domains": ["example.com"]},
                                    "server": {"max_message_size": 1000}})
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            self.assertReply(c.cmd("MAIL FROM:<bob@example.org>"), 250)
            self.assertReply(c.cmd("RCPT TO:<x@elsewhere.example>"), 554, "5.7.1")
            self.assertReply(c.cmd("RCPT TO:bad-syntax"), 501)
            self.assertReply(c.cmd("RCPT TO:<ok@example.com>"), 250)
            self.assertReply(c.cmd("DATA"), 354)
            c.send(b"Subject: big\r\n\r\n" + b"a" * 990 + b"\r\n" + b"b" * 100 + b"\r\n.\r\n")
            self.assertReply(c.read_reply(), 552, "5.3.4")
            self.assertReply(c.cmd("RSET"), 250)
            self.assertReply(c.cmd("MAIL FROM:<j\u00f6rg@example.org>"), 553, "5.6.7")
        session = server.wait_for_event("connect")["session"]
        relay = server.wait_for_event("rejected", reason="relay_denied")
        self.assertIsNotNone(relay, server.log_tail())
        self.assertEqual(relay["session"], session)
        self.assertEqual(relay["address"], "x@elsewhere.example")
        self.assertEqual(relay["from"], "<bob@example.org>")
        self.assertEqual(relay["helo"], "client.example.org")
        self.assertEqual(relay["reply"], "554 5.7.1 Relay access denied")
        syntax = server.wait_for_event("rejected", reason="syntax")
        self.assertIsNotNone(syntax, server.log_tail())
        self.assertEqual(syntax["address"], "TO:bad-syntax")
        self.assertTrue(syntax["reply"].startswith("501 5."), syntax)
        big = server.wait_for_event("rejected", reason="message_too_big")
        self.assertIsNotNone(big, server.log_tail())
        self.assertEqual(big["to"], "<ok@example.com>")
        self.assertEqual(big["rcpts"], "1")
        non_ascii = server.wait_for_event("rejected", reason="non_ascii_address")
        self.assertIsNotNone(non_ascii, server.log_tail())
        self.assertEqual(non_ascii["address"], "FROM:<j\u00f6rg@example.org>")
        self.assertTrue(non_ascii["reply"].startswith("553 5.6.7"), non_ascii)
        disconnect = server.wait_for_event("disconnect", session=session)
        self.assertIsNotNone(disconnect, server.log_tail())
        self.assertEqual(disconnect["rejections"], "4")
        self.assertEqual(disconnect["messages"], "0")

    def test_a_helo_cannot_forge_log_fields(self):
        server = self.start_sluice({"relay": {"networks": [], "domains": ["example.com"]}})
        with server.connect() as c:
            self.assertReply(c.cmd('EHLO x"reason=spoof\x01'), 250)
            self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
            self.assertReply(c.cmd("RCPT TO:<x@elsewhere.example>"), 554)
        relay = server.wait_for_event("rejected", reason="relay_denied")
        self.assertIsNotNone(relay, server.log_tail())
        self.assertEqual(relay["helo"], 'x"reason=spoof\x01')


class Signals(SluiceTestCase):
    def test_sighup_reopens_the_log_and_keeps_serving(self):
        # Before: SIGHUP (logrotate, systemctl reload) killed the relay at once.
        server = self.start_sluice()
        rotated = server.log_path + ".1"
        os.rename(server.log_path, rotated)  # what logrotate does before it sends SIGHUP
        server.signal(signal.SIGHUP)
        self.assertTrue(h.wait_until(lambda: os.path.exists(server.log_path), 10),
                        "SIGHUP must reopen the log at its path")
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            r = c.transaction()
            self.assertReply(r, 250, "2.0.0")
        self.assertTrue(server.running())
        with open(rotated, errors="replace") as f:
            self.assertIn("event=ready", f.read(), "the old lines stay in the rotated file")
        server._log_offset = 0  # the reopened file is a new one
        hup = server.wait_for_event("sighup", action="reopen_log")
        self.assertIsNotNone(hup, server.log_tail())
        self.assertEqual(hup["result"], "reopened %s" % server.log_path)
        line = server.wait_for_event("transaction", id=r.queue_id)
        self.assertIsNotNone(line, "the transaction must be logged in the reopened file")
        for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
            server.signal(signum)
        self.assertIsNotNone(server.wait_for_event("signal", signal="USR1", action="ignored"))
        self.assertIsNotNone(server.wait_for_event("signal", signal="USR2", action="ignored"))
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
        self.assertTrue(server.running())
        self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    h.main()
