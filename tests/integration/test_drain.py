"""SIGTERM drains: a transaction in flight may finish, new connections get 421 4.3.2, and the
process exits 0 within the drain timeout."""

import signal
import time

import harness as h
from harness import SluiceTestCase

DRAIN_S = 5
EXIT_MARGIN_S = 15  # ASan builds are slow to stop; this bounds a hang, it is not a timing test


class Drain(SluiceTestCase):
    def test_sigterm_mid_transaction(self):
        server = self.start_sluice({"server": {"drain_timeout": "%ds" % DRAIN_S}})
        a = server.connect()
        self.addCleanup(a.close)
        self.assertReply(a.cmd("EHLO inflight.example"), 250)
        self.assertReply(a.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(a.cmd("RCPT TO:<r@example.com>"), 250)
        self.assertReply(a.cmd("DATA"), 354)
        a.send(b"Subject: in flight\r\n\r\nfirst half\r\n")

        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertTrue(server.running(), "exited while a transaction was in flight")

        # A new connection during the drain: 421 4.3.2, then closed.
        with h.SmtpClient(server.port, greeting=False) as b:
            r = b.read_reply(timeout=10)
            self.assertReply(r, 421, "4.3.2")
            self.assertTrue(b.wait_closed(10), "a connection refused during the drain must be closed")

        a.send(b"second half\r\n.\r\n")
        r = a.read_reply(timeout=10)
        self.assertReply(r, 250, "2.0.0", "the transaction in flight must be allowed to finish")
        queue_id = r.queue_id
        # After its transaction the session may be ended at once (421) or on QUIT (221).
        try:
            r = a.cmd("QUIT")
            self.assertIn(r.code, (221, 421), r)
        except h.ConnectionClosed:
            pass

        code = server.wait(DRAIN_S + EXIT_MARGIN_S)
        elapsed = time.monotonic() - t0
        print("\n    exit code %s, %.1f s after SIGTERM (drain_timeout %ds)" % (code, elapsed, DRAIN_S))
        self.assertEqual(code, 0)
        self.assertTrue(any("event=draining" in l for l in server.log_lines()))

        # The message accepted during the drain is durable.
        server.start()
        self.assertIn(queue_id, server.queue_ids())
        self.assertIn("second half", server.queued_message(queue_id)["message"])

    def test_idle_session_does_not_block_exit(self):
        server = self.start_sluice({"server": {"drain_timeout": "%ds" % DRAIN_S}})
        idle = server.connect()
        self.addCleanup(idle.close)
        self.assertReply(idle.cmd("EHLO idle.example"), 250)
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait(DRAIN_S + EXIT_MARGIN_S)
        elapsed = time.monotonic() - t0
        print("\n    exit code %s, %.1f s after SIGTERM with an idle session open" % (code, elapsed))
        self.assertEqual(code, 0, "must exit 0 by the drain deadline")
        self.assertTrue(idle.wait_closed(5), "the idle session must be closed at exit")

    def test_sigint_drains_too(self):
        server = self.start_sluice({"server": {"drain_timeout": "%ds" % DRAIN_S}})
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO x.example"), 250)
            self.assertReply(c.transaction(), 250, "2.0.0")
            self.assertReply(c.cmd("QUIT"), 221)
        server.signal(signal.SIGINT)
        self.assertEqual(server.wait(DRAIN_S + EXIT_MARGIN_S), 0)

    def test_readyz_false_while_draining(self):
        server = self.start_sluice({"server": {"drain_timeout": "%ds" % DRAIN_S}})
        hold = server.connect()
        self.addCleanup(hold.close)
        self.assertReply(hold.cmd("EHLO x.example"), 250)
        self.assertReply(hold.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertEqual(server.admin("/readyz", timeout=10)[0], 200, "ready before the drain")
        server.signal(signal.SIGTERM)
        self.assertIsNotNone(server.wait_for_event("draining"), server.log_tail())
        # The endpoint must answer, and answer "not ready": an endpoint that is down would also
        # keep a load balancer away, but it is not what this checks (before, a test that
        # accepted "unreachable" passed whatever the endpoint did).
        status, body = server.admin("/readyz", timeout=10)
        print("\n    /readyz during drain: %s %r" % (status, body.strip()))
        self.assertEqual(status, 503, "a draining server must answer 503 to a load balancer")
        self.assertTrue(server.running(), "the drain must still be waiting for the open transaction")


if __name__ == "__main__":
    h.main()
