"""Configured limits and their replies: sessions per client and in total (421 4.7.0), connection
rate per client, command and DATA timeouts (421 4.4.2), max_received_headers (554 5.4.6)."""

import socket
import time

import harness as h
from harness import SluiceTestCase


class Limits(SluiceTestCase):
    def refused_421(self, server, enhanced="4.7.0"):
        c = h.SmtpClient(server.port, greeting=False)
        self.addCleanup(c.close)
        r = c.read_reply(timeout=10)
        self.assertReply(r, 421, enhanced)
        self.assertTrue(c.wait_closed(10), "a refused connection must be closed")

    def hold(self, server, count):
        held = []
        for _ in range(count):
            c = server.connect()
            self.addCleanup(c.close)
            self.assertReply(c.greeting, 220)
            held.append(c)
        return held

    def test_sessions_per_client(self):
        # 127.0.0.1 must not be in relay networks: per-client limits do not apply to those.
        server = self.start_sluice({"server": {"max_sessions_per_client": 3},
                                    "relay": {"networks": ["10.0.0.0/8"]}})
        held = self.hold(server, 3)
        self.refused_421(server)
        held[0].cmd("QUIT")
        held[0].close()
        ok = h.wait_until(lambda: self._greeted(server), 10, 0.2)
        self.assertTrue(ok, "a slot freed by QUIT must be usable again")

    def _greeted(self, server):
        c = h.SmtpClient(server.port, greeting=False)
        try:
            return c.read_reply(timeout=5).code == 220
        except (h.ConnectionClosed, OSError):
            return False
        finally:
            c.close()

    def test_relay_networks_exempt_from_per_client_limit(self):
        server = self.start_sluice({"server": {"max_sessions_per_client": 3}})
        held = self.hold(server, 6)
        self.assertReply(held[-1].cmd("NOOP"), 250)

    def test_max_sessions(self):
        server = self.start_sluice({"server": {"max_sessions": 4, "threads": 1}})
        self.hold(server, 4)
        self.refused_421(server)

    def test_connection_rate_per_client(self):
        server = self.start_sluice({"server": {"max_connection_rate_per_client": 5},
                                    "relay": {"networks": ["10.0.0.0/8"]}})
        for _ in range(5):
            with server.connect() as c:
                self.assertReply(c.greeting, 220)
                c.cmd("QUIT")
        self.refused_421(server)

    def test_command_timeout(self):
        server = self.start_sluice({"server": {"command_timeout": "2s"}})
        c = server.connect(timeout=30)
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO slow.example"), 250)
        t0 = time.monotonic()
        r = c.read_reply(timeout=30)
        print("\n    idle session: %r after %.1f s (command_timeout 2s)" % (r, time.monotonic() - t0))
        self.assertReply(r, 421, "4.4.2")
        self.assertTrue(c.wait_closed(10))

    def test_data_timeout(self):
        server = self.start_sluice({"server": {"data_timeout": "2s", "command_timeout": "60s"}})
        c = server.connect(timeout=30)
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO slow.example"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@example.com>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: stalled\r\n\r\npart")
        r = c.read_reply(timeout=30)
        self.assertReply(r, 421, "4.4.2")
        self.assertTrue(c.wait_closed(10))
        self.assertEqual(server.queue_count(), 0, "a timed-out message must not be queued")

    def test_max_received_headers_configured(self):
        server = self.start_sluice({"server": {"max_received_headers": 3}})
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO x.example"), 250)
            hop = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            self.assertReply(c.transaction(body=hop * 3 + b"Subject: ok\r\n\r\nx\r\n"), 250, "2.0.0")
            self.assertReply(c.transaction(body=hop * 4 + b"Subject: loop\r\n\r\nx\r\n"), 554, "5.4.6")
            # Folded Received: continuation lines are one header, and body lines do not count.
            folded = b"Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            self.assertReply(c.transaction(body=folded * 3 + b"Subject: ok\r\n\r\n" + hop * 10), 250, "2.0.0")

    def test_per_client_limit_holds_after_more_addresses_than_the_table(self):
        """The per-client table holds 100,000 addresses (ClientLimits::kTrackedClientsMax, the
        real bound). Before issue 6 its entries were never removed: after that many distinct
        addresses, new clients were admitted uncounted and the limit was off. Now an entry
        without a live connection is reclaimed, so a new address is still counted."""
        table = 100_000
        server = self.start_sluice({"server": {"max_sessions_per_client": 50, "threads": 1},
                                    "relay": {"networks": ["127.255.255.254/32"]}})
        t0 = time.monotonic()
        for n in range(table + 500):
            source = "127.%d.%d.%d" % (1 + (n >> 16), (n >> 8) & 255, n & 255)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((source, 0))
                s.connect(("127.0.0.1", server.port))
            finally:
                s.close()  # no waiting: the next address at once
        print("\n    %d distinct client addresses connected in %.1f s" % (table + 500, time.monotonic() - t0))
        fresh = "127.200.0.1"
        held = []
        for i in range(50):
            c = h.SmtpClient(server.port, source=fresh, timeout=30)
            self.addCleanup(c.close)
            self.assertReply(c.greeting, 220, msg="session %d of the new address" % (i + 1))
            held.append(c)
        c = h.SmtpClient(server.port, source=fresh, greeting=False, timeout=30)
        self.addCleanup(c.close)
        self.assertReply(c.read_reply(timeout=30), 421, "4.7.0", msg="its 51st concurrent session")


if __name__ == "__main__":
    h.main()
