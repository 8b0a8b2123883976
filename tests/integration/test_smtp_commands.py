"""Every SMTP command and its reply (issue 3 section 3, DESIGN.md section 4), with raw sockets,
swaks and Python smtplib as clients."""

import email
import re
import smtplib
import subprocess

import harness as h
from harness import SharedServerTestCase, SluiceTestCase

MAX_SIZE = 100000
MAX_RCPTS = 5


def body_of_size(octets, prefix=b"Subject: size test\r\n\r\n"):
    """Unstuffed body of exactly `octets` octets in CRLF lines (each <= 80 octets); lines that
    begin with '.' are included so the count must ignore dot-stuffing. Returns (raw, wire)."""
    lines = [prefix]
    total = len(prefix)
    n = 0
    while total < octets:
        left = octets - total
        if left <= 80:
            line = b"." * (left - 2) + b"\r\n" if left >= 3 else b"\r\n"
            if left == 1:
                raise ValueError("cannot end on a 1-octet remainder")
        else:
            line = (b"." if n % 3 == 0 else b"x") + b"y" * 77 + b"\r\n"
        lines.append(line)
        total += len(line)
        n += 1
    raw = b"".join(lines)
    assert len(raw) == octets, (len(raw), octets)
    wire = b"".join((b"." + l if l.startswith(b".") else l) for l in lines)
    return raw, wire


class SmtpCommands(SharedServerTestCase):
    server_overrides = {"server": {"max_message_size": MAX_SIZE, "max_recipients": MAX_RCPTS,
                                   "max_errors": 50},
                        "spool": {"segment_bytes": 1048576}}

    def session(self, ehlo=True):
        c = self.server.connect()
        self.addCleanup(c.close)
        if ehlo:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
        return c

    # ---- greeting, EHLO, HELO
    def test_greeting_is_220_with_hostname(self):
        c = self.session(ehlo=False)
        self.assertReply(c.greeting, 220)
        self.assertIn("relay.example.test", c.greeting.text)

    def test_ehlo_lists_extensions(self):
        c = self.session(ehlo=False)
        r = c.cmd("EHLO client.example.org")
        self.assertReply(r, 250)
        self.assertTrue(r.lines[0].startswith("relay.example.test"), r)
        keywords = [line.upper() for line in r.lines[1:]]
        for ext in ("PIPELINING", "SIZE %d" % MAX_SIZE, "8BITMIME", "ENHANCEDSTATUSCODES",
                    "SMTPUTF8", "CHUNKING", "DSN"):
            self.assertIn(ext, keywords, "EHLO reply lacks %s: %r" % (ext, r))

    def test_ehlo_without_name_is_501(self):
        c = self.session(ehlo=False)
        self.assertReply(c.cmd("EHLO"), 501)

    def test_helo(self):
        c = self.session(ehlo=False)
        r = c.cmd("HELO client.example.org")
        self.assertReply(r, 250)
        self.assertIn("relay.example.test", r.text)
        r = c.transaction()
        self.assertReply(r, 250, "2.0.0")
        stored = self.server.queued_message(r.queue_id)["message"]
        self.assertRegex(stored, r"with SMTP id %s" % r.queue_id)

    # ---- MAIL
    def test_mail_accepts_parameters(self):
        c = self.session()
        for params in ("", " SIZE=1000", " BODY=8BITMIME", " BODY=7BIT", " SMTPUTF8",
                       " SIZE=%d BODY=8BITMIME SMTPUTF8" % MAX_SIZE):
            self.assertReply(c.cmd("MAIL FROM:<a@example.org>" + params), 250, "2.1.0",
                             "MAIL with%r" % params)
            self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("MAIL FROM:<>"), 250, "2.1.0", "null reverse-path")

    def test_mail_bad_parameters(self):
        c = self.session()
        for line, codes in (("MAIL FROM:<a@example.org> FOO=BAR", (555,)),
                            ("MAIL FROM:<a@example.org> BODY=BINARYMIME", (501, 555)),
                            ("MAIL FROM:<a@example.org> SIZE=abc", (501, 555)),
                            ("MAIL FROM:<a@example.org> SIZE=1 SIZE=2", (501, 555)),
                            ("MAIL FROM:<a@example.org> SMTPUTF8=yes", (501, 555)),
                            ("MAIL FROM:a@example.org", (501,)),
                            ("MAIL FROM:<a@example.org", (501,)),
                            ("MAIL TO:<a@example.org>", (501,)),
                            ("MAIL", (501,))):
            r = c.cmd(line)
            self.assertIn(r.code, codes, "%s -> %r" % (line, r))
            self.assertIsNotNone(r.enhanced, "no enhanced code: %s -> %r" % (line, r))
            self.assertTrue(r.enhanced.startswith("5."), r)
        # None of them opened a transaction.
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)

    def test_nested_mail_is_503(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("MAIL FROM:<b@example.org>"), 503, "5.5.1")

    def test_size_over_max_at_mail_is_552(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@example.org> SIZE=%d" % (MAX_SIZE + 1)), 552, "5.3.4")
        self.assertReply(c.cmd("MAIL FROM:<a@example.org> SIZE=%d" % MAX_SIZE), 250, "2.1.0")

    # ---- RCPT
    def test_rcpt(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.com>"), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<postmaster>"), 250, "2.1.5")
        for line in ("RCPT TO:b@example.com", "RCPT TO:<b@example.com> FOO=1", "RCPT FROM:<b@x.example>"):
            r = c.cmd(line)
            self.assertIn(r.code, (501, 555), "%s -> %r" % (line, r))

    def test_too_many_recipients_is_452(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        for i in range(MAX_RCPTS):
            self.assertReply(c.cmd("RCPT TO:<r%d@example.com>" % i), 250)
        self.assertReply(c.cmd("RCPT TO:<one-too-many@example.com>"), 452, "4.5.3")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: five\r\n\r\nbody\r\n.\r\n")
        r = c.read_reply()
        self.assertReply(r, 250, "2.0.0")
        self.assertEqual(len(self.server.queued_message(r.queue_id)["recipients"]), MAX_RCPTS)

    # ---- DATA and the stored message
    def test_data_queues_and_adds_trace_headers(self):
        c = self.session()
        r = c.transaction(sender="s@example.org", recipients=["r@example.com"],
                          body=b"Subject: hello\r\n\r\nline one\r\n..dot line\r\n")
        self.assertReply(r, 250, "2.0.0")
        self.assertRegex(r.text, r"^2\.0\.0 Ok: queued as [0-9A-Z]{16}$")
        info = self.server.queued_message(r.queue_id)
        self.assertEqual(info["from"], "s@example.org")
        self.assertEqual(info["recipients"], ["r@example.com"])
        raw_size = len(b"Subject: hello\r\n\r\nline one\r\n.dot line\r\n")
        self.assertEqual(info["size"], raw_size, "size must be the unstuffed octets, without Received:")
        stored = info["message"]
        self.assertTrue(stored.startswith("Received: from client.example.org ([127.0.0.1])"),
                        "Received: not prepended: %r" % stored[:200])
        first_header = stored.split("\r\n\r\n", 1)[0]
        self.assertRegex(first_header, r"by relay\.example\.test .*id %s" % r.queue_id)
        self.assertRegex(first_header, r"(?m)^Message-ID: <[^>]+>\r?$")
        self.assertRegex(first_header, r"(?m)^Date: .+\d{4} \d\d:\d\d:\d\d [+-]\d{4}\r?$")
        self.assertIn("\r\nline one\r\n.dot line\r\n", stored, "the API shows the message unstuffed")
        self.assertTrue(self.server.spool_contains(b"\r\nline one\r\n..dot line\r\n"),
                        "stored form must stay dot-stuffed wire form")
        # The session goes on after a message.
        self.assertReply(c.cmd("NOOP"), 250)

    def test_existing_message_id_and_date_are_kept(self):
        c = self.session()
        body = (b"Message-ID: <mine@client.example.org>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                b"Subject: x\r\n\r\nbody\r\n")
        r = c.transaction(body=body)
        self.assertReply(r, 250, "2.0.0")
        stored = self.server.queued_message(r.queue_id)["message"]
        headers = stored.split("\r\n\r\n", 1)[0]
        self.assertEqual(len(re.findall(r"(?mi)^Message-ID:", headers)), 1, headers)
        self.assertEqual(len(re.findall(r"(?mi)^Date:", headers)), 1, headers)
        self.assertIn("<mine@client.example.org>", headers)

    def test_data_without_argument_only(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.com>"), 250)
        self.assertReply(c.cmd("DATA now"), 501)

    def test_exact_max_size_accepted_one_over_refused(self):
        c = self.session()
        raw, wire = body_of_size(MAX_SIZE)
        r = c.transaction(body=wire)
        self.assertReply(r, 250, "2.0.0", "exactly max_message_size must be accepted: %r" % r)
        self.assertEqual(self.server.queued_message(r.queue_id)["size"], MAX_SIZE)
        raw, wire = body_of_size(MAX_SIZE + 1)
        before = self.server.queue_count()
        r = c.transaction(body=wire)
        self.assertReply(r, 552, "5.3.4")
        self.assertEqual(self.server.queue_count(), before, "an oversized message was queued")
        # The session continues.
        self.assertReply(c.cmd("NOOP"), 250)
        self.assertReply(c.transaction(), 250, "2.0.0")

    def test_much_too_big_body_refused_after_end_of_data(self):
        c = self.session()
        r = c.transaction(body=b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 300)
        self.assertReply(r, 552, "5.3.4")
        self.assertReply(c.cmd("NOOP"), 250)

    def test_text_line_limit(self):
        c = self.session()
        r = c.transaction(body=b"Subject: long\r\n\r\n" + b"a" * 998 + b"\r\n")
        self.assertReply(r, 250, "2.0.0", "a 998-octet line is legal")
        before = self.server.queue_count()
        r = c.transaction(body=b"Subject: long\r\n\r\n" + b"a" * 999 + b"\r\nend\r\n")
        self.assertReply(r, 500, "5.5.2")
        self.assertEqual(self.server.queue_count(), before)
        self.assertReply(c.cmd("NOOP"), 250)
        self.assertReply(c.transaction(), 250, "2.0.0")

    def test_command_line_limit(self):
        c = self.session()
        # 512 octets including CRLF is the limit.
        self.assertReply(c.cmd("NOOP " + "x" * (512 - 7)), 250)
        self.assertReply(c.cmd("NOOP " + "x" * (512 - 6)), 500, "5.5.2")
        self.assertReply(c.cmd("NOOP " + "x" * 5000), 500, "5.5.2")
        self.assertReply(c.cmd("NOOP"), 250, None, "session must continue after a long line")

    def test_mail_rcpt_with_parameters_up_to_2048(self):
        c = self.session()
        # A MAIL line of exactly 2048 octets is read as a command (the unknown parameter gets
        # 555, not "line too long"); 2049 is too long.
        head = "MAIL FROM:<a@example.org> XPAD="
        line = head + "p" * (2048 - 2 - len(head))
        self.assertEqual(len(line) + 2, 2048)
        r = c.cmd(line)
        self.assertEqual(r.code, 555, "a 2048-octet MAIL line must be parsed, got %r" % r)
        r = c.cmd(line + "p")
        self.assertReply(r, 500, "5.5.2")
        # A real, valid RCPT line longer than 512 octets.
        self.assertReply(c.cmd("MAIL FROM:<a@example.org> ENVID=" + "e" * 100 + " RET=HDRS"), 250)
        orcpt = "rfc822;" + "o" * 60 + "@" + ".".join(["d" * 60] * 4) + "+2B" * 40
        line = "RCPT TO:<%s@%s> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=%s" % (
            "l" * 60, ".".join(["d" * 60] * 3) + ".example", orcpt)
        self.assertGreater(len(line) + 2, 512)
        self.assertLessEqual(len(line) + 2, 2048)
        self.assertReply(c.cmd(line), 250, "2.1.5")

    # ---- the other commands
    def test_rset_noop_vrfy_expn_help(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        self.assertReply(c.cmd("RCPT TO:<b@example.com>"), 503, "5.5.1", "RSET must end the transaction")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertReply(c.cmd("VRFY postmaster"), 252)
        self.assertEqual(c.cmd("VRFY someone@example.com").code, 252)
        self.assertReply(c.cmd("EXPN staff"), 502)
        self.assertReply(c.cmd("HELP"), 214)
        self.assertReply(c.cmd("RSET extra"), 501)

    def test_obsolete_commands_are_502(self):
        c = self.session()
        for verb in ("TURN", "SEND FROM:<a@example.org>", "SOML FROM:<a@example.org>",
                     "SAML FROM:<a@example.org>"):
            r = c.cmd(verb)
            self.assertReply(r, 502, None, "%s -> %r" % (verb, r))
            self.assertIsNotNone(r.enhanced, r)

    def test_unknown_command_is_500(self):
        c = self.session()
        self.assertReply(c.cmd("XYZZY"), 500, "5.5.1")
        self.assertReply(c.cmd("FOO bar baz"), 500, "5.5.1")
        self.assertReply(c.cmd("NOOP"), 250)

    def test_commands_are_case_insensitive(self):
        c = self.session(ehlo=False)
        self.assertReply(c.cmd("ehlo client.example.org"), 250)
        self.assertReply(c.cmd("mail from:<a@example.org>"), 250)
        self.assertReply(c.cmd("rcpt to:<b@example.com>"), 250)
        self.assertReply(c.cmd("data"), 354)
        c.send(b"\r\n.\r\n")
        self.assertReply(c.read_reply(), 250, "2.0.0")

    def test_bad_sequence_is_503(self):
        c = self.session(ehlo=False)
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 503, "5.5.1", "MAIL before EHLO")
        self.assertReply(c.cmd("EHLO client.example.org"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.com>"), 503, "5.5.1", "RCPT before MAIL")
        self.assertReply(c.cmd("DATA"), 503, "5.5.1", "DATA before MAIL")
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("DATA"), 503, "5.5.1", "DATA before any RCPT")

    def test_quit(self):
        c = self.session()
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertTrue(c.wait_closed(5), "server must close after 221")

    # ---- BDAT
    def test_bdat_chunks(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.com>"), 250)
        part1 = b"Subject: bdat\r\n\r\n.leading dot\r\n"
        part2 = b"..two dots\r\n.\r\nlast line\r\n"
        c.send(b"BDAT %d\r\n" % len(part1) + part1)
        self.assertReply(c.read_reply(), 250)
        c.send(b"BDAT %d\r\n" % len(part2) + part2)
        self.assertReply(c.read_reply(), 250)
        r = c.cmd("BDAT 0 LAST")
        self.assertReply(r, 250, "2.0.0")
        self.assertIsNotNone(r.queue_id, r)
        info = self.server.queued_message(r.queue_id)
        self.assertEqual(info["size"], len(part1) + len(part2))
        stored = info["message"]
        self.assertIn("\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n", stored,
                      "the API shows the message as sent: %r" % stored)
        self.assertTrue(self.server.spool_contains(b"\r\n\r\n..leading dot\r\n...two dots\r\n..\r\nlast line\r\n"),
                        "BDAT content must be stored dot-stuffed")
        shown = self.server.cli("queue", "show", r.queue_id)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn("\\n..two dots\\r", shown.stdout)

    def test_bdat_last_in_one_chunk_pipelined(self):
        c = self.session()
        msg = b"Subject: one chunk\r\n\r\nhello"  # BDAT need not end in CRLF
        c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nBDAT %d LAST\r\n" % len(msg)
               + msg + b"NOOP\r\n")
        replies = c.read_replies(4)
        self.assertEqual([r.code for r in replies], [250, 250, 250, 250], replies)
        self.assertIsNotNone(replies[2].queue_id, replies)

    def test_data_after_bdat_is_503(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<b@example.com>"), 250)
        c.send(b"BDAT 4\r\nabcd")
        self.assertReply(c.read_reply(), 250)
        self.assertReply(c.cmd("DATA"), 503)

    def test_bdat_without_transaction_is_refused_and_chunk_skipped(self):
        c = self.session()
        c.send(b"BDAT 6 LAST\r\nNOOP\r\n")  # the chunk looks like a command: it must not run
        r = c.read_reply()
        self.assertEqual(r.code, 503, r)
        self.assertReply(c.cmd("NOOP"), 250)
        c.send(b"BDAT 6\r\n")
        c.send(b"QUIT\r\n")  # chunk content, not a command
        r = c.read_reply()
        self.assertEqual(r.code, 503, r)
        self.assertReply(c.cmd("NOOP"), 250, None, "the chunk must have been read as data")

    # ---- loop detection
    def test_received_header_limit(self):
        c = self.session()
        hops = b"".join(b"Received: from hop%d.example by x.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % i
                        for i in range(100))
        self.assertReply(c.transaction(body=hops + b"Subject: 100\r\n\r\nbody\r\n"), 250, "2.0.0")
        extra = b"Received: from hop.example by x.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        before = self.server.queue_count()
        r = c.transaction(body=hops + extra + b"Subject: 101\r\n\r\nbody\r\n")
        self.assertReply(r, 554, "5.4.6")
        self.assertEqual(self.server.queue_count(), before)
        self.assertReply(c.cmd("NOOP"), 250)

    # ---- real clients
    def test_swaks(self):
        result = subprocess.run(
            ["swaks", "--server", "127.0.0.1:%d" % self.server.port, "--helo", "swaks.example",
             "--from", "swaks@example.org", "--to", "someone@example.com",
             "--header", "Subject: from swaks", "--body", "sent by swaks"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        ids = h.QUEUE_ID_RE.findall(result.stdout)
        self.assertEqual(len(ids), 1, result.stdout)
        stored = self.server.queued_message(ids[0])["message"]
        self.assertIn("sent by swaks", stored)
        self.assertIn("Received: from swaks.example ([127.0.0.1])", stored)

    def test_swaks_bdat_pipelining(self):
        result = subprocess.run(
            ["swaks", "--server", "127.0.0.1:%d" % self.server.port, "--pipeline",
             "--from", "swaks@example.org", "--to", "a@example.com,b@example.com",
             "--body", "pipelined by swaks"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        ids = h.QUEUE_ID_RE.findall(result.stdout)
        self.assertEqual(len(ids), 1, result.stdout)
        self.assertEqual(self.server.queued_message(ids[0])["recipients"],
                         ["a@example.com", "b@example.com"])

    def test_smtplib(self):
        with smtplib.SMTP("127.0.0.1", self.server.port, timeout=30) as s:
            code, _ = s.ehlo("py.example.org")
            self.assertEqual(code, 250)
            for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8",
                        "chunking"):
                self.assertTrue(s.has_extn(ext), ext)
            self.assertEqual(s.esmtp_features["size"], str(MAX_SIZE))
            refused = s.sendmail("py@example.org", ["x@example.com", "y@example.net"],
                                 "Subject: smtplib\r\n\r\nhello from smtplib\r\n")
            self.assertEqual(refused, {})
            # 8-bit and SMTPUTF8.
            msg = "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\ncaf\u00e9 cr\u00e8me\r\n".encode("utf-8")
            s.sendmail("j\u00f6rg@example.org", ["\u00fc@example.com"], msg,
                       mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        ids = self.server.queue_ids()
        found = [self.server.queued_message(i) for i in ids]
        utf8 = [m for m in found if m["from"] == "j\u00f6rg@example.org"]
        self.assertEqual(len(utf8), 1, [m["from"] for m in found])
        self.assertEqual(utf8[0]["recipients"], ["\u00fc@example.com"])
        self.assertIn("caf\u00e9 cr\u00e8me", utf8[0]["message"])
        self.assertIn("with UTF8SMTP", utf8[0]["message"])
        plain = [m for m in found if m["from"] == "py@example.org"]
        self.assertEqual(len(plain), 1)
        parsed = email.message_from_string(plain[0]["message"])
        self.assertEqual(parsed["Subject"], "smtplib")

    def test_utf8_address_without_smtputf8_is_refused(self):
        c = self.session()
        r = c.cmd("MAIL FROM:<j\u00f6rg@example.org>")
        self.assertEqual(r.code // 100, 5, r)


class ErrorLimit(SluiceTestCase):
    def test_too_many_errors_closes_with_421(self):
        server = self.start_sluice({"server": {"max_errors": 3}})
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            self.assertReply(c.cmd("BOGUS1"), 500)
            self.assertReply(c.cmd("BOGUS2"), 500)
            c.send("BOGUS3\r\n")
            replies = []
            try:
                while True:
                    replies.append(c.read_reply(timeout=5))
            except h.ConnectionClosed:
                pass
            self.assertGreaterEqual(len(replies), 1)
            self.assertEqual(replies[-1].code, 421, replies)
            self.assertTrue(replies[-1].enhanced.startswith("4."), replies)
            self.assertTrue(c.closed_by_peer)



class DsnParameters(SluiceTestCase):
    """RFC 3461: DSN is advertised because its parameters are stored with the message; the queue
    API shows them as sent, and they survive a restart."""

    def test_dsn_parameters_are_stored_and_survive_a_restart(self):
        server = self.start_sluice()
        with server.connect() as c:
            r = c.cmd("EHLO client.example.org")
            self.assertReply(r, 250)
            self.assertIn("DSN", [line.upper() for line in r.lines[1:]], r)
            self.assertReply(c.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=abc+2Bdef"), 250)
            self.assertReply(c.cmd("RCPT TO:<x@y.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y.example"),
                             250)
            self.assertReply(c.cmd("RCPT TO:<plain@y.example>"), 250)
            self.assertReply(c.cmd("RCPT TO:<n@y.example> NOTIFY=NEVER,DELAY"), 501, "5.5.4")
            self.assertReply(c.cmd("RCPT TO:<n@y.example> NOTIFY=NEVER NOTIFY=NEVER"), 501, "5.5.4")
            self.assertReply(c.cmd("DATA"), 354)
            c.send(b"Subject: dsn\r\n\r\nhello\r\n.\r\n")
            r = c.read_reply()
            self.assertReply(r, 250, "2.0.0")
            queue_id = r.queue_id
            # A message without DSN parameters shows them empty.
            plain = c.transaction(recipients=("p@y.example",))
            self.assertReply(plain, 250, "2.0.0")
        expected = {"ret": "HDRS", "envid": "abc+2Bdef",
                    "recipients": [{"notify": "SUCCESS,FAILURE", "orcpt": "rfc822;x+40y.example"},
                                   {"notify": "", "orcpt": ""}]}
        empty = {"ret": "", "envid": "", "recipients": [{"notify": "", "orcpt": ""}]}
        for when in ("before", "after"):
            info = server.queued_message(queue_id)
            self.assertEqual(info["recipients"], ["x@y.example", "plain@y.example"], when)
            self.assertEqual(info["dsn"], expected, "%s the restart: %r" % (when, info))
            self.assertEqual(server.queued_message(plain.queue_id)["dsn"], empty, when)
            listed = {m["id"]: m for m in server.queue()["messages"]}
            self.assertEqual(listed[queue_id]["dsn"], expected, when)
            if when == "before":
                self.assertEqual(server.stop(), 0)
                server.start()


if __name__ == "__main__":
    h.main()
