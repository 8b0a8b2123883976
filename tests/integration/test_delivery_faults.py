"""Delivery against faulty next hops, and bounces (DSN, RFC 3464).

Each test has its own Sluice, a fixture DNS server (tests/fixtures/dns_server.py) and two
SmtpReceivers on one port ([delivery] port): the recipients' domain dest.test has its MX on
127.0.0.2 (the receiver the test makes faulty), the senders' domain sender.test on 127.0.0.3 (a
well-behaved receiver, where bounces arrive). Retry times are short (retry_initial 1s, retry_max 2s,
site_backoff 1s). Nothing is asserted about how long anything took: waits are generous (the file
also runs under ASan) and every assertion is about what was sent, received, logged or queued.
"""

import email
import email.policy
import os
import re

import harness as h

DEST_HOST = "127.0.0.2"    # MX of dest.test: the receiver under test
HOME_HOST = "127.0.0.3"    # MX of sender.test: where bounces go
SENDER = "alice@sender.test"
RCPT = "bob@dest.test"
UNKNOWN = "nobody@dest.test"
OTHER = "carol@dest.test"
HOSTNAME = "relay.example.test"  # the harness's [server] hostname

ZONE = {
    "dest.test": {"MX": [[10, "mx.dest.test"]]},
    "mx.dest.test": {"A": [DEST_HOST]},
    "sender.test": {"MX": [[10, "mx.sender.test"]]},
    "mx.sender.test": {"A": [HOME_HOST]},
}

WAIT_S = h.DELIVERY_WAIT_S


def message_bytes(subject="fault test", body=b"hello\r\n", extra_headers=b""):
    """A complete message with Date and Message-ID (so that Sluice adds only Received:)."""
    return (b"From: Alice <alice@sender.test>\r\n"
            b"To: Bob <bob@dest.test>\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
            b"Message-ID: <" + subject.replace(" ", "-").encode() + b"@sender.test>\r\n" +
            extra_headers + b"\r\n" + body)


def dot_stuff(data):
    return b"".join((b"." + line) if line.startswith(b".") else line
                    for line in data.splitlines(keepends=True))


def strip_first_received(data):
    """(the first header field if it is Received:, the rest of the message)."""
    m = re.match(rb"Received:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", data)
    if not m:
        return None, data
    return m.group(0), data[m.end():]


def parse_dsn(data):
    """{"message": email.message.Message, "parts": [content types], "per_message": {field: value},
    "recipients": [{field: value}], "returned": text of the third part} of a DSN's data."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    parts = msg.get_payload() if msg.is_multipart() else []
    report = {"message": msg, "parts": [p.get_content_type() for p in parts],
              "per_message": {}, "recipients": [], "returned": None}
    for part in parts:
        if part.get_content_type() == "message/delivery-status":
            # The email package parses the status part into one Message per block.
            blocks = part.get_payload()
            if blocks:
                report["per_message"] = dict(blocks[0].items())
                report["recipients"] = [dict(b.items()) for b in blocks[1:]]
        elif part.get_content_type() in ("text/rfc822-headers", "message/rfc822"):
            payload = part.get_payload()
            report["returned"] = payload if isinstance(payload, str) else \
                "".join(p.as_string() for p in payload)
    return report


class FaultTestCase(h.DeliveryTestCase):
    def start_world(self, dest_faults=None, home_faults=None, config=None, **delivery):
        """DNS, the two receivers, and Sluice delivering to them (config: more sections)."""
        self.dns = self.start_dns(ZONE)
        self.dest, self.home = self.start_receivers(
            (DEST_HOST, HOME_HOST), per_host={DEST_HOST: dest_faults or {},
                                              HOME_HOST: home_faults or {}})
        settings = dict(retry_initial="1s", retry_max="2s", site_backoff="1s")
        settings.update(delivery)
        overrides = h.delivery_overrides(self.dns, self.dest.port, **settings)
        overrides.update(config or {})
        self.server = self.start_sluice(overrides)
        return self.server

    # -- sending
    def send(self, data=None, sender=SENDER, recipients=(RCPT,), mail_params="",
             rcpt_params=None):
        """One message over SMTP (data: the unstuffed message, CRLF lines); its queue id."""
        data = message_bytes() if data is None else data
        rcpt_params = rcpt_params or {}
        with self.server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            self.assertReply(c.cmd("MAIL FROM:<%s>%s" % (sender, mail_params)), 250)
            for rcpt in recipients:
                params = rcpt_params.get(rcpt, "")
                self.assertReply(c.cmd("RCPT TO:<%s>%s" % (rcpt, (" " + params) if params else "")),
                                 250, msg=rcpt)
            self.assertReply(c.cmd("DATA"), 354)
            c.send(dot_stuff(data) + b".\r\n")
            reply = c.read_reply()
            self.assertReply(reply, 250, "2.0.0")
            c.cmd("QUIT")
        self.assertIsNotNone(reply.queue_id, reply)
        return reply.queue_id

    # -- the queue
    def queued(self, queue_id):
        for m in self.server.queue()["messages"]:
            if m["id"] == queue_id:
                return m
        return None

    def wait_deferred(self, queue_id, reply_code, may_finish=False):
        """The queue entry once it has at least one failed attempt whose reply starts with
        reply_code. may_finish: when the fault clears itself, the retry (about 1 s later) may
        deliver before a poll saw the deferral; then None (the caller checks the log instead)."""
        def deferred():
            m = self.queued(queue_id)
            if m is None and may_finish:
                return "gone"
            return m if m and m["attempts"] >= 1 and m["last_reply"].startswith(reply_code) else None
        m = h.wait_until(deferred, WAIT_S, interval=0.02)
        self.assertTrue(m, "%s not deferred with %s; queue: %s" % (
            queue_id, reply_code, self.server.queue()))
        return None if m == "gone" else m

    def wait_queue_empty(self):
        empty = h.wait_until(lambda: self.server.queue_count() == 0, WAIT_S, interval=0.1)
        self.assertTrue(empty, "queue not empty: %s" % self.server.queue())

    def flush(self):
        status, body = self.server.admin("/api/queue/flush", method="POST")
        self.assertEqual(status, 202, body)

    # -- the log (read after Sluice stopped: a shard writes its lines once per loop iteration,
    # so only then is every line it made surely in the file)
    def stop_server(self):
        if self.server.running():
            self.assertEqual(self.server.stop(), 0)

    def deliveries(self, queue_id, **match):
        self.stop_server()
        return self.server.events("delivery", id=queue_id, **match)

    def bounce_lines(self, **match):
        self.stop_server()
        return self.server.events("bounce", **match)

    # -- metrics (while it runs; counters move when a journal record or removal is durable,
    # which may be just after the queue API shows it)
    def metric(self, name, labels=""):
        text = self.server.metrics()
        m = re.search(r"(?m)^%s%s\s+([0-9.eE+-]+)$" % (re.escape(name), re.escape(labels)), text)
        return float(m.group(1)) if m else None

    def assertMetric(self, name, labels="", equal=None, at_least=None):
        def good(value):
            return value is not None and (value == equal if equal is not None else value >= at_least)
        h.wait_until(lambda: good(self.metric(name, labels)), WAIT_S, interval=0.1)
        value = self.metric(name, labels)
        self.assertTrue(good(value), "%s%s = %s, expected %s" % (
            name, labels, value, ("== %s" % equal) if equal is not None else (">= %s" % at_least)))

    # -- bounces
    def wait_for_dsn(self, original_id):
        """The DSN (a receiver Message) that reached the sender's MX for message original_id."""
        def found():
            for m in self.home.messages:
                if ("X-Sluice-Queue-ID: %s" % original_id).encode() in m.data:
                    return m
            return None
        dsn = h.wait_until(found, WAIT_S, interval=0.1)
        self.assertTrue(dsn, "no DSN for %s at %s; messages: %s" % (
            original_id, self.home.address, self.home.messages))
        return dsn

    def assertDsn(self, dsn, original_id, failed, status, diagnostic=None, remote_mta="mx.dest.test",
                  diagnostic_type="smtp"):
        """dsn is a failure report for exactly the recipients `failed`, with Status `status` and
        (if given) a Diagnostic-Code containing `diagnostic`."""
        self.assertEqual(dsn.sender, "", "a DSN is sent from <>")
        self.assertEqual(dsn.recipients, [SENDER])
        report = parse_dsn(dsn.data)
        msg = report["message"]
        self.assertEqual(msg["To"], "<%s>" % SENDER)
        self.assertIn("MAILER-DAEMON@%s" % HOSTNAME, msg["From"])
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(report["parts"][:2], ["text/plain", "message/delivery-status"])
        self.assertEqual(report["per_message"].get("Reporting-MTA"), "dns; " + HOSTNAME)
        self.assertEqual(report["per_message"].get("X-Sluice-Queue-ID"), original_id)
        self.assertEqual([r.get("Final-Recipient") for r in report["recipients"]],
                         ["rfc822; " + a for a in failed])
        for r in report["recipients"]:
            self.assertEqual(r.get("Action"), "failed", r)
            self.assertEqual(r.get("Status"), status, r)
            self.assertEqual(r.get("Remote-MTA"), "dns; " + remote_mta, r)
            if diagnostic is not None:
                self.assertTrue(r.get("Diagnostic-Code", "").startswith(diagnostic_type + "; "), r)
                self.assertIn(diagnostic, r.get("Diagnostic-Code"), r)
        return report


# ---- temporary failures: deferred, then delivered --------------------------------------------

class TemporaryFailures(FaultTestCase):
    def test_greeting_421_deferred_then_delivered_after_flush(self):
        self.start_world(dest_faults={"greeting_421": True})
        queue_id = self.send()
        entry = self.wait_deferred(queue_id, "421")
        self.assertIn("4.3.2", entry["last_reply"])
        state = entry["recipient_states"][0]
        self.assertEqual((state["address"], state["state"]), (RCPT, "deferred"), entry)
        self.assertGreater(state["next_attempt_ms"], 0, entry)
        self.assertGreater(entry["next_attempt"], entry["arrived"], entry)
        self.assertEqual(self.dest.message_count, 0)
        self.assertTrue(any(c.greeted_421 for c in self.dest.connections))
        self.dest.clear_faults()
        self.flush()
        messages = self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        self.assertEqual(len(self.dest.messages), 1, messages)
        self.assertEqual(messages[0].recipients, [RCPT])
        self.assertEqual(self.home.message_count, 0, "no bounce for a deferral")
        self.assertEqual(len(self.deliveries(queue_id, outcome="delivered")), 1)

    def test_greeting_421_twice_delivered_by_the_retry(self):
        # The site is down after each refused connection (site_backoff 1s, doubling to
        # retry_max 2s); the retry after it gets through without a flush.
        self.start_world(dest_faults={"greeting_421": 2})
        queue_id = self.send()
        self.wait_deferred(queue_id, "421", may_finish=True)
        self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        self.assertEqual(self.dest.message_count, 1)
        self.assertEqual(sum(1 for c in self.dest.connections if c.greeted_421), 2,
                         self.dest.connections)
        self.assertEqual(len(self.deliveries(queue_id, outcome="delivered")), 1)

    def test_rcpt_451_once_deferred_then_delivered_once(self):
        self.start_world(dest_faults={"rcpt_451_once": True})
        queue_id = self.send()
        entry = self.wait_deferred(queue_id, "451", may_finish=True)
        if entry is not None:  # seen between the attempts (the log below says it in any case)
            self.assertIn("4.3.0", entry["last_reply"])
            self.assertEqual(entry["attempts"], 1, entry)
            self.assertEqual(entry["recipient_states"][0]["state"], "deferred", entry)
        # No flush: the retry (retry_initial 1s) delivers it.
        self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        self.assertEqual(len(self.dest.messages_to(RCPT)), 1, self.dest.messages)
        self.assertMetric("sluice_delivery_recipients_total", '{outcome="deferred"}', at_least=1)
        self.assertMetric("sluice_delivery_recipients_total", '{outcome="delivered"}', at_least=1)
        self.assertMetric("sluice_queue_messages", equal=0)
        deferred = self.deliveries(queue_id, outcome="deferred")
        self.assertEqual([(d["code"], d["status"]) for d in deferred], [("451", "4.3.0")])
        self.assertEqual(deferred[0]["to"], RCPT)
        self.assertEqual(deferred[0]["host"], "mx.dest.test")
        self.assertIn("Temporary lookup failure", deferred[0]["reply"])
        delivered = self.deliveries(queue_id, outcome="delivered")
        self.assertEqual(len(delivered), 1)
        self.assertEqual(delivered[0]["code"], "250")

    def test_connection_dropped_mid_data_delivered_once_on_retry(self):
        self.start_world(dest_faults={"drop_mid_data": 600, "drop_mid_data_times": 1})
        body = b"".join(b"line %04d of a body long enough to be cut in the middle\r\n" % i
                        for i in range(60))
        queue_id = self.send(message_bytes("dropped", body))
        self.wait_deferred(queue_id, "4.", may_finish=True)
        self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        self.assertEqual(self.dest.message_count, 1, "exactly one complete message")
        self.assertEqual(sum(c.dropped for c in self.dest.connections), 1)
        self.assertEqual(strip_first_received(self.dest.messages[0].data)[1],
                         message_bytes("dropped", body))
        deferred = self.deliveries(queue_id, outcome="deferred")
        self.assertEqual(len(deferred), 1, deferred)
        self.assertTrue(deferred[0]["status"].startswith("4."), deferred)
        self.assertEqual(len(self.deliveries(queue_id, outcome="delivered")), 1)

    def test_slow_server_delivered(self):
        self.start_world(dest_faults={"slow": 0.5})
        queue_id = self.send()
        self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        self.assertEqual(self.dest.message_count, 1)
        self.assertEqual(self.deliveries(queue_id, outcome="deferred"), [])
        self.assertEqual(len(self.deliveries(queue_id, outcome="delivered")), 1)


class AdminDuringDelivery(FaultTestCase):
    """hold/release on a message whose transaction is on a connection right now."""

    def mail_in_flight(self):
        """Once the receiver has the MAIL of our transaction (its replies are slow)."""
        def seen():
            return any(cmd.upper().startswith("MAIL") for c in self.dest.connections for cmd in c.commands)
        self.assertTrue(h.wait_until(seen, WAIT_S, interval=0.01), self.dest.connections)

    def release_while_in_flight(self, hold_first):
        self.start_world(dest_faults={"slow": 0.7})
        queue_id = self.send(recipients=(RCPT, OTHER))
        self.mail_in_flight()
        if hold_first:
            status, body = self.server.admin("/api/queue/%s/hold" % queue_id, method="POST")
            self.assertEqual(status, 200, body)
        status, body = self.server.admin("/api/queue/%s/release" % queue_id, method="POST")
        self.assertEqual(status, 200, body)
        self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        # Once more than the transaction takes, for a second copy to show if one was sent.
        h.wait_until(lambda: self.dest.message_count > 1, 6.0, interval=0.1)
        self.assertEqual(len(self.dest.messages_to(RCPT)), 1, self.dest.messages)
        self.assertEqual(len(self.dest.messages_to(OTHER)), 1, self.dest.messages)
        self.assertEqual(len(self.deliveries(queue_id, outcome="delivered")), 2)

    def test_release_while_in_flight_sends_once(self):
        self.release_while_in_flight(hold_first=False)

    def test_hold_and_release_while_in_flight_sends_once(self):
        self.release_while_in_flight(hold_first=True)


# ---- what the next hop offers ------------------------------------------------------------------

class Extensions(FaultTestCase):
    def transaction_connection(self):
        """The dest receiver's connection that carried a MAIL command."""
        conns = [c for c in self.dest.connections if any(x.upper().startswith("MAIL") for x in c.commands)]
        self.assertEqual(len(conns), 1, self.dest.connections)
        return conns[0]

    def test_pipelining_server_gets_one_group(self):
        # The control for the next test: the fixture does see a pipelined group.
        self.start_world()
        self.send(recipients=(RCPT, "carol@dest.test"))
        self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        conn = self.transaction_connection()
        self.assertTrue(any(c.upper().startswith("MAIL FROM") for c in conn.pipelined), conn.pipelined)

    def test_no_pipelining_one_command_at_a_time(self):
        self.start_world(dest_faults={"no_pipelining": True})
        self.send(recipients=(RCPT, "carol@dest.test"))
        messages = self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        self.assertEqual(messages[0].recipients, [RCPT, "carol@dest.test"])
        conn = self.transaction_connection()
        self.assertEqual(conn.pipelined, [], "commands sent while a reply was awaited")
        verbs = [c.split(":")[0].split(" ")[0].upper() for c in conn.commands]
        self.assertEqual(verbs[:5], ["EHLO", "MAIL", "RCPT", "RCPT", "DATA"], conn.commands)

    def test_no_8bitmime_7bit_message_delivered(self):
        self.start_world(dest_faults={"no_8bitmime": True})
        self.send()
        messages = self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        self.assertNotIn("BODY=8BITMIME", [o.upper() for o in messages[0].mail_options])
        self.assertEqual(self.home.message_count, 0)

    def test_no_8bitmime_8bit_message_bounced_5_6_3(self):
        # engine/smtp/client_session.h: an 8-bit body to a server without 8BITMIME is refused
        # before anything is sent (5.6.3); no 7-bit conversion is done yet.
        self.start_world(dest_faults={"no_8bitmime": True})
        queue_id = self.send(message_bytes("eight bit", "caf\u00e9 cr\u00e8me\r\n".encode()),
                             mail_params=" BODY=8BITMIME")
        dsn = self.wait_for_dsn(queue_id)
        self.assertDsn(dsn, queue_id, [RCPT], "5.6.3", diagnostic="8BITMIME", diagnostic_type="X-Sluice")
        self.wait_queue_empty()
        self.assertEqual(self.dest.message_count, 0)
        conn_commands = [c for conn in self.dest.connections for c in conn.commands]
        self.assertFalse([c for c in conn_commands if c.upper().startswith(("MAIL", "DATA"))],
                         conn_commands)
        bounced = self.deliveries(queue_id, outcome="bounced")
        self.assertEqual([b["status"] for b in bounced], ["5.6.3"])

    def test_helo_only_server_delivered_after_helo(self):
        self.start_world(dest_faults={"helo_only": True})
        self.send()
        messages = self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        self.assertFalse(messages[0].esmtp)
        self.assertEqual(messages[0].helo, HOSTNAME)
        self.assertEqual(messages[0].mail_options, [], "no ESMTP parameters after HELO")
        conn = self.transaction_connection()
        verbs = [c.split(" ")[0].upper() for c in conn.commands]
        self.assertEqual(verbs[:3], ["EHLO", "HELO", "MAIL"], conn.commands)

    def test_size_over_limit_bounced_5_3_4_without_sending(self):
        self.start_world(dest_faults={"max_size": 1000})
        body = b"".join(b"%04d a line of a message larger than the server takes\r\n" % i
                        for i in range(60))
        queue_id = self.send(message_bytes("too big", body))
        dsn = self.wait_for_dsn(queue_id)
        self.assertDsn(dsn, queue_id, [RCPT], "5.3.4", diagnostic="size limit 1000", diagnostic_type="X-Sluice")
        self.wait_queue_empty()
        self.assertEqual(self.dest.message_count, 0)
        commands = [c for conn in self.dest.connections for c in conn.commands]
        self.assertFalse([c for c in commands if c.upper().startswith(("MAIL", "DATA"))], commands)
        self.assertTrue(any(c.upper().startswith("EHLO") for c in commands), commands)


# ---- bounces -----------------------------------------------------------------------------------

class Bounces(FaultTestCase):
    def test_550_bounces_to_the_sender(self):
        self.start_world(dest_faults={"rcpt_550": [UNKNOWN]})
        original = message_bytes("bounce me")
        queue_id = self.send(original, recipients=(UNKNOWN,))
        dsn = self.wait_for_dsn(queue_id)
        report = self.assertDsn(
            dsn, queue_id, [UNKNOWN], "5.1.1",
            diagnostic="550 5.1.1 <%s>: Recipient address rejected: User unknown" % UNKNOWN)
        # RET not given: the original's header is returned (with our Received: first).
        self.assertEqual(report["parts"][2], "text/rfc822-headers")
        returned = report["returned"]
        self.assertIn("Subject: bounce me", returned)
        self.assertIn("Message-ID: <bounce-me@sender.test>", returned)
        self.assertRegex(returned, r"^Received: from client\.example\.org .*\n\tby %s \(Sluice\) "
                                   r"with ESMTP id %s" % (re.escape(HOSTNAME), queue_id))
        self.assertNotIn("hello", returned, "only the header is returned")
        self.assertEqual(dsn.header("Subject"), "Undelivered Mail Returned to Sender")
        self.assertEqual(dsn.header("Auto-Submitted"), "auto-replied")
        # The original is gone once the DSN is durable, and the DSN once it was delivered.
        self.wait_queue_empty()
        self.assertEqual(self.dest.message_count, 0)
        self.assertEqual(self.home.message_count, 1)
        self.assertMetric("sluice_delivery_recipients_total", '{outcome="bounced"}', at_least=1)
        self.assertMetric("sluice_messages_finished_total", equal=2)  # the original and the DSN
        bounce = self.bounce_lines(id=queue_id)
        self.assertEqual(len(bounce), 1, bounce)
        self.assertEqual(bounce[0]["to"], SENDER)
        self.assertEqual(bounce[0]["recipients"], "1")
        self.assertEqual(len(self.deliveries(bounce[0]["bounce_id"], outcome="delivered")), 1)
        rejected = self.deliveries(queue_id, outcome="bounced")
        self.assertEqual([(r["to"], r["code"], r["status"]) for r in rejected], [(UNKNOWN, "550", "5.1.1")])

    def test_one_of_two_recipients_refused(self):
        self.start_world(dest_faults={"rcpt_550": [UNKNOWN]})
        # RET=FULL: the whole original comes back (message/rfc822).
        queue_id = self.send(message_bytes("half"), recipients=(RCPT, UNKNOWN),
                             mail_params=" RET=FULL")
        dsn = self.wait_for_dsn(queue_id)
        report = self.assertDsn(dsn, queue_id, [UNKNOWN], "5.1.1", diagnostic="550 5.1.1")
        self.assertEqual(report["parts"][2], "message/rfc822")
        self.assertIn("Subject: half", report["returned"])
        self.assertIn("hello", report["returned"])
        self.wait_queue_empty()
        self.assertEqual(len(self.dest.messages), 1, self.dest.messages)
        self.assertEqual(self.dest.messages[0].recipients, [RCPT])
        self.assertEqual(len(self.dest.messages_to(RCPT)), 1)
        self.assertNotIn(("Final-Recipient: rfc822; " + RCPT).encode(), dsn.data)
        self.assertEqual(self.home.message_count, 1)

    def test_ret_full_of_a_large_message_returns_it_whole(self):
        # Larger than one read of the original (1 MiB): the DSN's copy is put together from
        # several reads of the segment, and must be the original octet for octet.
        self.start_world(dest_faults={"rcpt_550": [UNKNOWN]},
                         config={"server": {"max_message_size": 4 << 20},
                                 "spool": {"segment_bytes": 8 << 20}})
        body = b"".join(b"line %07d of a large message that bounces whole\r\n" % i
                        for i in range(60000))  # about 3 MiB
        original = message_bytes("large bounce", body)
        queue_id = self.send(original, recipients=(UNKNOWN,), mail_params=" RET=FULL")
        dsn = self.wait_for_dsn(queue_id)
        report = self.assertDsn(dsn, queue_id, [UNKNOWN], "5.1.1", diagnostic="550 5.1.1")
        self.assertEqual(report["parts"][2], "message/rfc822")
        part = dsn.data.split(b"Content-Type: message/rfc822", 1)[1].split(b"\r\n\r\n", 1)[1]
        _, returned = strip_first_received(part)
        self.assertTrue(returned.startswith(original), "the original comes back whole")
        self.wait_queue_empty()

    def test_null_sender_550_no_dsn(self):
        self.start_world(dest_faults={"rcpt_550": [UNKNOWN]})
        queue_id = self.send(message_bytes("bounce of a bounce"), sender="", recipients=(UNKNOWN,))
        self.wait_queue_empty()
        # Had a DSN been made it would have been stored before the original was removed, and
        # removed itself only after reaching the sender's MX: an empty queue means none exists.
        self.assertEqual(self.home.message_count, 0)
        self.assertEqual(self.home.connection_count, 0)
        self.assertMetric("sluice_messages_finished_total", equal=1)
        self.assertEqual(self.bounce_lines(), [])
        rejected = self.deliveries(queue_id, outcome="bounced")
        self.assertEqual([(r["to"], r["code"]) for r in rejected], [(UNKNOWN, "550")])

    def test_notify_success_to_a_next_hop_without_dsn_is_reported_relayed(self):
        # The receiver offers no DSN, so NOTIFY=SUCCESS cannot be passed on: we report
        # "relayed" ourselves (RFC 3461 5.2.2); a recipient without NOTIFY gets nothing.
        self.start_world()
        queue_id = self.send(message_bytes("tell me"), recipients=(RCPT, OTHER),
                             rcpt_params={RCPT: "NOTIFY=SUCCESS,FAILURE"})
        dsn = self.wait_for_dsn(queue_id)
        self.assertEqual(dsn.sender, "")
        self.assertEqual(dsn.recipients, [SENDER])
        report = parse_dsn(dsn.data)
        self.assertEqual([r.get("Final-Recipient") for r in report["recipients"]], ["rfc822; " + RCPT])
        [r] = report["recipients"]
        self.assertEqual(r.get("Action"), "relayed", r)
        self.assertEqual(r.get("Status"), "2.0.0", r)
        self.assertEqual(r.get("Remote-MTA"), "dns; mx.dest.test", r)
        self.assertEqual(dsn.header("Subject"), "Successful Mail Delivery Report")
        self.wait_queue_empty()
        self.assertEqual(sorted(a for m in self.dest.messages for a in m.recipients), sorted([RCPT, OTHER]))

    def test_notify_never_no_dsn(self):
        self.start_world(dest_faults={"rcpt_550": [UNKNOWN]})
        queue_id = self.send(message_bytes("never tell"), recipients=(UNKNOWN,),
                             rcpt_params={UNKNOWN: "NOTIFY=NEVER"})
        self.wait_queue_empty()
        self.assertEqual(self.home.message_count, 0)
        self.assertEqual(self.home.connection_count, 0)
        self.assertMetric("sluice_messages_finished_total", equal=1)
        self.assertEqual(self.bounce_lines(), [])
        self.assertEqual(len(self.deliveries(queue_id, outcome="bounced")), 1)


# ---- DSN facts across restarts ----------------------------------------------------------------

FAR_HOST = "127.0.0.4"     # MX of far.test: a second recipient domain, on its own receiver
FAR = "dave@far.test"
RESTART_ZONE = dict(ZONE, **{
    "far.test": {"MX": [[10, "mx.far.test"]]},
    "mx.far.test": {"A": [FAR_HOST]},
})


def journal_records(path):
    """[(offset, op, queue id)] of the journal records of one journal file, in order (the
    record layout of spool/format.h: a 36-octet header, then op u16, reserved u16, queue id)."""
    with open(path, "rb") as f:
        data = f.read()
    records = []
    offset = 0
    while len(data) - offset >= 36 and data[offset:offset + 36] != bytes(36):
        if data[offset:offset + 4] != b"SLSP":
            break
        record_type = int.from_bytes(data[offset + 6:offset + 8], "little")
        length = int.from_bytes(data[offset + 28:offset + 32], "little")
        payload = data[offset + 36:offset + 36 + length]
        if record_type == 3:  # journal
            records.append((offset, int.from_bytes(payload[0:2], "little"), payload[4:20].decode("ascii")))
        offset += 36 + length
    return records, offset


def forget_removal(spool_dir, queue_id):
    """Zeroes the journal from the durable removal of queue_id on: the files as a crash right
    before that record became durable leaves them (every later record is lost too)."""
    for shard in sorted(os.listdir(spool_dir)):
        directory = os.path.join(spool_dir, shard)
        if not shard.startswith("shard-") or not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if not name.startswith("journal"):
                continue
            path = os.path.join(directory, name)
            records, end = journal_records(path)
            for offset, op, record_id in records:
                if op == 1 and record_id == queue_id:  # JournalOp::remove
                    with open(path, "r+b") as f:
                        f.seek(offset)
                        f.write(bytes(end - offset))
                    return path
    return None


class AcrossRestarts(FaultTestCase):
    """What a DSN says must not depend on the process that made it: the Remote-MTA of a bounced
    recipient and the "relayed" notice are in the journal with the outcome, and a DSN stored
    before a crash is not made again after it."""

    def start_three(self, far_faults=None, home_faults=None):
        self.dns = self.start_dns(RESTART_ZONE)
        self.dest, self.home, self.far = self.start_receivers(
            (DEST_HOST, HOME_HOST, FAR_HOST),
            per_host={DEST_HOST: {"rcpt_550": [UNKNOWN]}, HOME_HOST: home_faults or {},
                      FAR_HOST: far_faults or {}})
        # A long first retry: nothing is retried on its own before the test flushes.
        self.server = self.start_sluice(h.delivery_overrides(
            self.dns, self.dest.port, retry_initial="10m", retry_max="1h", site_backoff="1s"))

    def wait_states(self, queue_id, states):
        def reached():
            m = self.queued(queue_id)
            return m is not None and [s["state"] for s in m["recipient_states"]] == states and m
        m = h.wait_until(reached, WAIT_S, interval=0.05)
        self.assertTrue(m, "%s never reached %s; queue: %s" % (queue_id, states, self.server.queue()))
        return m

    def test_remote_mta_and_relayed_survive_a_kill9_before_the_dsn(self):
        self.start_three(far_faults={"replies": {"RCPT": "451 4.3.0 try again later"}})
        queue_id = self.send(message_bytes("restart facts"), recipients=(RCPT, UNKNOWN, FAR),
                             rcpt_params={RCPT: "NOTIFY=SUCCESS,FAILURE"})
        # RCPT delivered to a next hop without DSN (owed "relayed"), UNKNOWN refused by
        # mx.dest.test, FAR deferred: the message stays, and no DSN is made yet.
        self.wait_states(queue_id, ["delivered", "bounced", "deferred"])
        self.assertEqual(self.home.message_count, 0)
        self.server.kill9()
        self.far.clear_faults()
        self.server.start()
        # The restarted process knows them from the spool (FAR waits for its retry in 10 minutes).
        states = self.queued(queue_id)["recipient_states"]
        self.assertEqual([(s["remote_mta"], s["relayed"]) for s in states],
                         [("mx.dest.test", True), ("mx.dest.test", False), ("mx.far.test", False)], states)
        self.flush()
        dsn = self.wait_for_dsn(queue_id)
        report = parse_dsn(dsn.data)
        self.assertEqual([r.get("Final-Recipient") for r in report["recipients"]],
                         ["rfc822; " + RCPT, "rfc822; " + UNKNOWN], report["recipients"])
        relayed, failed = report["recipients"]
        self.assertEqual(relayed.get("Action"), "relayed", relayed)
        self.assertEqual(relayed.get("Remote-MTA"), "dns; mx.dest.test", relayed)
        self.assertEqual(failed.get("Action"), "failed", failed)
        self.assertEqual(failed.get("Status"), "5.1.1", failed)
        self.assertEqual(failed.get("Remote-MTA"), "dns; mx.dest.test", failed)
        self.assertIn("550 5.1.1", failed.get("Diagnostic-Code", ""), failed)
        self.wait_queue_empty()
        self.assertEqual(self.far.messages_to(FAR)[0].recipients, [FAR])
        self.assertEqual(self.home.message_count, 1)

    def test_a_crash_after_the_dsn_was_stored_makes_no_second_dsn(self):
        # The sender's MX refuses for now, so the DSN stays queued beside the original's removal.
        self.start_three(home_faults={"greeting_421": True})
        queue_id = self.send(message_bytes("one dsn only"), recipients=(UNKNOWN,))
        bounce_id = self.server.wait_for_event("bounce", WAIT_S, id=queue_id)
        self.assertTrue(bounce_id, "no DSN made for %s" % queue_id)
        bounce_id = bounce_id["bounce_id"]
        self.assertTrue(h.wait_until(lambda: self.server.queue_ids() == [bounce_id], WAIT_S, interval=0.05),
                        self.server.queue())
        self.assertEqual(self.server.stop(), 0)
        # The spool as a crash between the DSN's record and the original's removal leaves it.
        self.assertIsNotNone(forget_removal(self.server.spool_dir, queue_id), "no removal record")
        self.home.clear_faults()
        self.server.start()
        # Both came back, as the crash left them (the original may be gone again already).
        self.assertEqual(int(self.server.ready_line.split("recovered=")[1].split()[0]), 2, self.server.ready_line)
        self.flush()
        self.wait_queue_empty()
        reports = [m for m in self.home.messages if ("X-Sluice-Queue-ID: %s" % queue_id).encode() in m.data]
        self.assertEqual(len(reports), 1, "one DSN for %s, got %d" % (queue_id, len(reports)))
        self.assertIn(("Message-ID: <%s@" % bounce_id).encode(), reports[0].data)
        self.assertEqual(self.bounce_lines(id=queue_id), [], "no DSN made after the restart")
        self.assertEqual(len(self.server.events("bounce_exists", id=queue_id)), 1)  # found final, removed


# ---- what arrives is what was accepted ---------------------------------------------------------

class Transparency(FaultTestCase):
    def test_delivered_copy_is_byte_identical_apart_from_received(self):
        self.start_world()
        body = (b"First line\r\n"
                b".a line that starts with a dot\r\n"
                b"..two dots\r\n"
                b".\tdot and tab\r\n"
                b"trailing spaces   \r\n"
                b"\r\n"
                b"\r\n"
                b"tab\there, NUL-free 8-bit: caf\xc3\xa9\r\n" +
                b"x" * 998 + b"\r\n" +
                b"From the start of a line\r\n"
                b". \r\n"
                b"last line\r\n")
        headers = (b"X-Folded: first part\r\n"
                   b"\tsecond part\r\n"
                   b"X-Empty:\r\n")
        original = message_bytes("transparent", body, extra_headers=headers)
        queue_id = self.send(original, recipients=(RCPT,))
        messages = self.wait_for_messages(self.dest, 1)
        self.wait_queue_empty()
        received, rest = strip_first_received(messages[0].data)
        self.assertIsNotNone(received, messages[0].data[:200])
        self.assertIn(b"by %s (Sluice) with ESMTP id %s" % (HOSTNAME.encode(), queue_id.encode()), received)
        self.assertIn(b"for <%s>" % RCPT.encode(), received)
        self.assertEqual(rest, original)
        # And on the wire: dot-stuffed exactly as RFC 5321 4.5.2 asks.
        self.assertEqual(strip_first_received(messages[0].wire)[1], dot_stuff(original))
        self.assertIn("BODY=8BITMIME", [o.upper() for o in messages[0].mail_options])
        self.assertEqual(messages[0].sender, SENDER)


if __name__ == "__main__":
    h.main()
