"""SMTP smuggling (CVE-2023-51764/5/6): a bare CR or LF anywhere in DATA or in a command gets
521 5.5.2 and the connection is closed; the smuggled second message is never queued."""

import time

import harness as h
from harness import SharedServerTestCase

# What follows the fake end-of-data: a whole second transaction, then a proper end.
SMUGGLED = (b"MAIL FROM:<spoof@victim.example>\r\nRCPT TO:<target@example.com>\r\nDATA\r\n"
            b"From: ceo@victim.example\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\n")

VARIANTS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CR": b"\r.\r",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "bare CR": b"\rbare CR inside a line\r\n",
    "bare LF": b"\nbare LF inside a line\r\n",
}


class Smuggling(SharedServerTestCase):

    def open_data(self):
        c = self.server.connect()
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO client.example.org"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@example.com>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        return c

    def read_until_closed(self, c):
        replies = []
        try:
            while True:
                replies.append(c.read_reply(timeout=10))
        except h.ConnectionClosed:
            pass
        return replies

    def check_refused(self, c, before, label):
        replies = self.read_until_closed(c)
        self.assertTrue(c.closed_by_peer, "%s: connection must be closed" % label)
        self.assertEqual(len(replies), 1, "%s: exactly one reply (521) expected, got %r" % (label, replies))
        self.assertReply(replies[0], 521, "5.5.2", label)
        after = self.server.queue()
        self.assertEqual(after["count"], before, "%s: something was queued: %r" % (label, after))
        for m in after["messages"]:
            self.assertNotEqual(m["from"], "spoof@victim.example", label)

    def test_variants_in_data(self):
        for name, variant in VARIANTS.items():
            with self.subTest(variant=name):
                before = self.server.queue_count()
                c = self.open_data()
                c.send(b"Subject: innocent\r\n\r\nfirst part" + variant + SMUGGLED + b"tail\r\n.\r\n")
                self.check_refused(c, before, name)

    def test_variants_split_across_writes(self):
        for name, variant in VARIANTS.items():
            with self.subTest(variant=name):
                before = self.server.queue_count()
                c = self.open_data()
                c.send(b"Subject: innocent\r\n\r\nfirst part")
                pieces = [variant[i:i + 1] for i in range(len(variant))] + [SMUGGLED + b"tail\r\n.\r\n"]
                for piece in pieces:
                    time.sleep(0.02)
                    try:
                        c.send(piece)
                    except OSError:
                        break  # the server already closed: what we expect, checked below
                self.check_refused(c, before, name + " (split)")

    def test_variants_pipelined_with_envelope(self):
        for name, variant in VARIANTS.items():
            with self.subTest(variant=name):
                before = self.server.queue_count()
                c = self.server.connect()
                self.addCleanup(c.close)
                c.send(b"EHLO client.example.org\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<r@example.com>\r\n"
                       b"DATA\r\nSubject: innocent\r\n\r\nfirst" + variant + SMUGGLED + b"end\r\n.\r\n")
                replies = self.read_until_closed(c)
                self.assertEqual([r.code for r in replies], [250, 250, 250, 354, 521], replies)
                self.assertEqual(replies[-1].enhanced, "5.5.2")
                self.assertEqual(self.server.queue_count(), before)

    def test_bare_newline_in_bdat(self):
        for name, chunk in (("bare LF", b"Subject: x\r\n\r\nab\ncd\r\n"),
                            ("bare CR", b"Subject: x\r\n\r\nab\rcd\r\n"),
                            ("LF.LF", b"Subject: x\r\n\r\nab\n.\n" + SMUGGLED)):
            with self.subTest(variant=name):
                before = self.server.queue_count()
                c = self.server.connect()
                self.addCleanup(c.close)
                self.assertReply(c.cmd("EHLO client.example.org"), 250)
                self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
                self.assertReply(c.cmd("RCPT TO:<r@example.com>"), 250)
                c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
                replies = self.read_until_closed(c)
                self.assertEqual([r.code for r in replies], [521], replies)
                self.assertEqual(self.server.queue_count(), before)

    def test_bare_lf_in_command(self):
        for line in (b"EHLO client.example.org\n", b"NOOP\n", b"NOOP\rNOOP\r\n",
                     b"MAIL FROM:<a@example.org>\nRCPT TO:<r@example.com>\r\n"):
            with self.subTest(line=line):
                c = self.server.connect()
                self.addCleanup(c.close)
                c.send(line)
                replies = self.read_until_closed(c)
                self.assertEqual([r.code for r in replies], [521], replies)
                self.assertEqual(replies[0].enhanced, "5.5.2")

    def test_legal_dots_are_fine(self):
        """Control: the same bytes with proper CRLF and dot-stuffing give one message."""
        before = self.server.queue_count()
        c = self.open_data()
        c.send(b"Subject: fine\r\n\r\nfirst part\r\n..\r\n..x\r\n.\r\n")
        r = c.read_reply()
        self.assertReply(r, 250, "2.0.0")
        self.assertEqual(self.server.queue_count(), before + 1)
        self.assertReply(c.cmd("NOOP"), 250)


if __name__ == "__main__":
    h.main()
