"""Who may relay: [relay] networks may send anywhere, [relay] domains receive from anyone,
everything else is 554 5.7.1; the HELO name grants nothing."""

import harness as h
from harness import SluiceTestCase


class RelayFromLoopbackByDefault(SluiceTestCase):
    def test_default_networks_relay_anywhere(self):
        # No [relay] section at all: the embedded default (127.0.0.0/8, ::1) applies.
        server = self.start_sluice()
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
            for rcpt in ("x@other.example", "y@anywhere.test", "z@EXAMPLE.COM"):
                self.assertReply(c.cmd("RCPT TO:<%s>" % rcpt), 250, "2.1.5", rcpt)
            self.assertReply(c.cmd("DATA"), 354)
            c.send(b"Subject: relay\r\n\r\nok\r\n.\r\n")
            self.assertReply(c.read_reply(), 250, "2.0.0")

    def test_ipv6_loopback_default(self):
        server = self.start_sluice(lambda s: {"server": {
            "listen": ["127.0.0.1:%d" % s.port, "[::1]:%d" % s.port6]}})
        with h.SmtpClient(server.port6, host="::1") as c:
            self.assertReply(c.greeting, 220)
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
            self.assertReply(c.cmd("RCPT TO:<x@other.example>"), 250, "2.1.5",
                             "::1 is in the default relay networks")
            self.assertReply(c.cmd("DATA"), 354)
            c.send(b"Subject: v6\r\n\r\nok\r\n.\r\n")
            r = c.read_reply()
            self.assertReply(r, 250, "2.0.0")
        self.assertIn("([IPv6:::1])", server.queued_message(r.queue_id)["message"])


class RelayDenied(SluiceTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.start_sluice(lambda s: {
            "server": {"listen": ["127.0.0.1:%d" % s.port, "[::1]:%d" % s.port6]},
            "relay": {"networks": ["10.0.0.0/8"], "domains": ["mydomain.test", ".example.test"]}})

    def session(self, helo="client.example.org", **kwargs):
        c = self.server.connect(**kwargs) if "host" not in kwargs else h.SmtpClient(self.server.port6, **kwargs)
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO " + helo), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        return c

    def test_other_domain_denied(self):
        c = self.session()
        for rcpt in ("x@other.example", "x@notexample.test", "x@mydomain.test.evil",
                     "x@example.test.other", "x@sub.mydomain.test.example"):
            self.assertReply(c.cmd("RCPT TO:<%s>" % rcpt), 554, "5.7.1", rcpt)
        r = c.cmd("DATA")
        self.assertIn(r.code, (503, 554), "DATA with no accepted recipient: %r" % r)
        self.assertEqual(self.server.queue_count(), 0)

    def test_relay_domains_accepted(self):
        c = self.session()
        for rcpt in ("x@mydomain.test", "x@MyDomain.TEST", "x@a.example.test", "x@A.B.EXAMPLE.TEST",
                     "postmaster"):
            self.assertReply(c.cmd("RCPT TO:<%s>" % rcpt), 250, "2.1.5", rcpt)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: inbound\r\n\r\nfor us\r\n.\r\n")
        r = c.read_reply()
        self.assertReply(r, 250, "2.0.0")
        info = self.server.queued_message(r.queue_id)
        self.assertEqual(len(info["recipients"]), 5, info["recipients"])
        # Not from a relay network: no Message-ID/Date are invented for it.
        headers = info["message"].split("\r\n\r\n", 1)[0]
        self.assertNotRegex(headers, r"(?mi)^Message-ID:")

    def test_mixed_recipients(self):
        c = self.session()
        self.assertReply(c.cmd("RCPT TO:<x@other.example>"), 554, "5.7.1")
        self.assertReply(c.cmd("RCPT TO:<y@mydomain.test>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: mixed\r\n\r\nx\r\n.\r\n")
        r = c.read_reply()
        self.assertReply(r, 250, "2.0.0")
        self.assertEqual(self.server.queued_message(r.queue_id)["recipients"], ["y@mydomain.test"])

    def test_helo_name_grants_nothing(self):
        for helo in ("localhost", "[127.0.0.1]", "mydomain.test", "relay.example.test", "[10.0.0.1]"):
            c = self.session(helo=helo)
            self.assertReply(c.cmd("RCPT TO:<x@other.example>"), 554, "5.7.1", "HELO %s" % helo)

    def test_ipv6_loopback_not_in_networks(self):
        c = self.session(host="::1")
        self.assertReply(c.cmd("RCPT TO:<x@other.example>"), 554, "5.7.1")
        self.assertReply(c.cmd("RCPT TO:<x@mydomain.test>"), 250)


if __name__ == "__main__":
    h.main()
