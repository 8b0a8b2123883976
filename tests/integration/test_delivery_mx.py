"""Delivery found by DNS (issue 8, sections 1 and 6): a DNS server on loopback serving a test
zone (tests/fixtures/dns_server.py) and real SMTP receivers on 127.0.0.x / ::1, all on one port
([delivery] port). Equal-preference MX hosts share the load and the backup gets none; with them
down everything goes to the backup; implicit MX; null MX and NXDOMAIN bounce without a
connection; SERVFAIL and a silent server defer and deliver once DNS answers; a CNAME domain; an
IPv6-only MX host; [[route]] beats MX; delivered copies are byte-identical apart from our
Received: header."""

import threading

import harness as h
from harness import DeliveryTestCase

DATE = "Date: Wed, 02 Dec 2026 12:00:00 +0000\r\n"  # with Message-ID: Sluice adds neither
FAST_RETRY = {"retry_initial": "1s", "retry_max": "2s", "site_backoff": "1s", "connect_timeout": "2s"}


def body(token):
    return ("Subject: mx %s\r\nMessage-ID: <%s@client.example.org>\r\n%s\r\nbody %s\r\n" %
            (token, token, DATE, token)).encode()


class DeliveryTest(DeliveryTestCase):
    def setup_relay(self, zone, hosts=("127.0.0.2", "127.0.0.3", "127.0.0.4"), per_host=None,
                    routes=None, dns_timeout="1s", **delivery):
        """A DNS server with `zone`, receivers on `hosts` (one port), Sluice using both. The zone
        may be a function of the receivers (their .host is the address)."""
        self.receivers = self.start_receivers(hosts, per_host=per_host)
        self.rx = {r.host: r for r in self.receivers}
        self.dns = self.start_dns(zone(self.rx) if callable(zone) else zone)
        settings = dict(FAST_RETRY)
        settings.update(delivery)
        overrides = h.delivery_overrides(self.dns, self.receivers[0].port, routes=routes, **settings)
        overrides["dns"]["timeout"] = dns_timeout
        overrides["dns"]["ttl_floor"] = "0s"
        self.server = self.start_sluice(overrides)
        return self.server

    def send(self, recipients, token, sender="sender@example.org"):
        code, text, queue_id = h.smtplib_send(self.server.port, sender, recipients, body(token))
        self.assertEqual(code, 250, text)
        return queue_id

    def wait_queue_empty(self, timeout=30):
        self.assertTrue(h.wait_until(lambda: self.server.queue_count() == 0, timeout),
                        "queue not empty: %r" % self.server.queue())

    def deliveries(self, **match):
        return self.server.events("delivery", **match)


def fnv1a(text):
    h = 14695981039346656037
    for c in text.encode():
        h = ((h ^ c) * 1099511628211) % (1 << 64)
    return h


def most_open_at_once(connections):
    """The largest number of the connections that were open at the same moment."""
    events = sorted([(c.opened, 1) for c in connections] +
                    [(c.closed_at if c.closed_at is not None else float("inf"), -1) for c in connections],
                    key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


class Sites(DeliveryTest):
    def test_domains_with_the_same_mx_share_one_pool_across_shards(self):
        # Four domains hosted by one provider, received by Sluice's two shards (the harness runs
        # two): one site, one pool, so connections_per_host = 1 holds for all four together.
        # (With a pool per domain's shard, as before, the two shards' pools overlapped: the
        # names are chosen so that a per-domain hash spreads them over both shards.)
        domains = ["d%d.provider-hosted.test" % i for i in range(1, 5)]
        self.assertEqual({fnv1a(d) % 2 for d in domains}, {0, 1})
        def zone(rx):
            z = {d: {"MX": [[10, "mx.provider.test"]]} for d in domains}
            z["mx.provider.test"] = {"A": [rx["127.0.0.2"].host]}
            return z
        self.setup_relay(zone, hosts=("127.0.0.2",), per_host={"127.0.0.2": {"slow": 0.05}},
                         connections_per_host=1)
        for i in range(3):
            self.send(["user%d@%s" % (i, d) for d in domains], "site-%d" % i)
        rx = self.rx["127.0.0.2"]
        self.wait_for_messages([rx], 12)
        self.wait_queue_empty()
        self.assertEqual(rx.message_count, 12)
        self.assertEqual(most_open_at_once(rx.connections), 1, rx.connections)
        self.server.stop()
        attempts = self.deliveries(outcome="delivered")
        self.assertEqual(len(attempts), 12)
        self.assertEqual({a["site"] for a in attempts}, {"mx.provider.test"})


class MxSelection(DeliveryTest):
    def test_equal_preference_hosts_share_and_backup_gets_none(self):
        dns_server, _ = h.import_fixtures()
        self.setup_relay(lambda rx: dns_server.mx_zone(
            "example.test", [(10, rx["127.0.0.2"]), (10, rx["127.0.0.3"]), (20, rx["127.0.0.4"])]),
            connections_per_host=4)
        count = 300
        threads = [threading.Thread(target=lambda k=k: [self.send(["user@example.test"], "m%d-%d" % (k, i))
                                                        for i in range(count // 10)]) for k in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.wait_for_messages(self.receivers[:2], count)
        self.wait_queue_empty()
        a, b, backup = (self.rx[x].message_count for x in ("127.0.0.2", "127.0.0.3", "127.0.0.4"))
        print("\n    300 messages over two preference-10 hosts: %d and %d, backup %d" % (a, b, backup))
        self.assertEqual(a + b, count)
        self.assertEqual(backup, 0, "the preference-20 backup is used only when the others fail")
        # A fair share: each host at least a third of the load (exact halves are not promised:
        # jobs go to whichever connection asks, and connections alternate between the hosts).
        self.assertGreaterEqual(min(a, b), count // 3, (a, b))
        tokens = sorted(m.header("Message-ID") for r in self.receivers for m in r.messages)
        self.assertEqual(len(set(tokens)), count, "each message exactly once")

    def test_both_primaries_down_everything_goes_to_the_backup(self):
        dns_server, _ = h.import_fixtures()
        # 127.0.0.5 and 127.0.0.6 have no receiver: connection refused.
        self.setup_relay(lambda rx: dns_server.mx_zone(
            "example.test", [(10, "127.0.0.5"), (10, "127.0.0.6"), (20, rx["127.0.0.4"])]),
            hosts=("127.0.0.4",))
        for i in range(20):
            self.send(["user@example.test"], "b%d" % i)
        self.wait_for_messages(self.rx["127.0.0.4"], 20)
        self.wait_queue_empty()
        self.assertEqual(self.rx["127.0.0.4"].message_count, 20)
        self.assertEqual(len(self.deliveries(outcome="deferred")), 0,
                         "the backup is tried in the same attempt, nothing deferred")

    def test_implicit_mx(self):
        # No MX record: the domain's own A record is the mail host (RFC 5321 5.1).
        self.setup_relay(lambda rx: {"implicit.test": {"A": [rx["127.0.0.3"].host]}}, hosts=("127.0.0.3",))
        self.send(["user@implicit.test"], "implicit")
        [message] = self.wait_for_messages(self.rx["127.0.0.3"], 1)
        self.assertEqual(message.recipients, ["user@implicit.test"])
        self.wait_queue_empty()

    def test_cname_domain(self):
        dns_server, _ = h.import_fixtures()
        self.setup_relay(lambda rx: dict(dns_server.mx_zone("real.test", [(10, rx["127.0.0.2"])]),
                                         **{"alias.test": {"CNAME": ["real.test"]}}),
                         hosts=("127.0.0.2",))
        self.send(["user@alias.test"], "cname")
        [message] = self.wait_for_messages(self.rx["127.0.0.2"], 1)
        self.assertEqual(message.recipients, ["user@alias.test"], "the envelope keeps the name given")
        self.wait_queue_empty()

    def test_ipv6_only_mx_host(self):
        dns_server, _ = h.import_fixtures()
        self.setup_relay(lambda rx: dns_server.mx_zone("six.test", [(10, rx["::1"])]), hosts=("::1",))
        self.send(["user@six.test"], "six")
        [message] = self.wait_for_messages(self.rx["::1"], 1)
        self.assertEqual(message.recipients, ["user@six.test"])
        [line] = self.deliveries(outcome="delivered")
        self.assertTrue(line["address"].startswith("[::1]:"), line)
        self.wait_queue_empty()

    def test_route_wins_over_mx_and_most_specific_route_wins(self):
        dns_server, _ = h.import_fixtures()
        self.setup_relay(lambda rx: dns_server.mx_zone("example.test", [(10, rx["127.0.0.2"])]),
                         routes=[{"domain": ".example.test", "next_hop": "127.0.0.3:0"}])
        # next_hop needs the receivers' port: rewrite the route now that it is known.
        self.server.stop()
        port = self.receivers[0].port
        overrides = h.delivery_overrides(self.dns, port, routes={
            ".example.test": "127.0.0.3:%d" % port, "deep.sub.example.test": "127.0.0.4:%d" % port},
            **FAST_RETRY)
        self.server = self.start_sluice(overrides, name="sluice2")
        self.send(["a@example.test"], "mx")            # the domain itself: no route, MX
        self.send(["b@sub.example.test"], "suffix")     # .example.test
        self.send(["c@deep.sub.example.test"], "exact")  # the exact route
        self.wait_for_messages(self.rx["127.0.0.2"], 1)
        self.wait_for_messages(self.rx["127.0.0.3"], 1)
        self.wait_for_messages(self.rx["127.0.0.4"], 1)
        self.assertEqual(self.rx["127.0.0.2"].messages[0].recipients, ["a@example.test"])
        self.assertEqual(self.rx["127.0.0.3"].messages[0].recipients, ["b@sub.example.test"])
        self.assertEqual(self.rx["127.0.0.4"].messages[0].recipients, ["c@deep.sub.example.test"])
        self.assertEqual(self.dns.count("sub.example.test"), 0, "a route needs no DNS")


class DnsFailures(DeliveryTest):
    def test_null_mx_bounces_without_a_connection(self):
        self.setup_relay(lambda rx: {"nullmx.test": {"MX": [[0, "."]]},
                                     "example.org": {"MX": [[10, "mx.example.org"]]},
                                     "mx.example.org": {"A": [rx["127.0.0.2"].host]}},
                         hosts=("127.0.0.2",))
        queue_id = self.send(["user@nullmx.test"], "nullmx")
        [dsn] = self.wait_for_messages(self.rx["127.0.0.2"], 1)  # the bounce, to the sender
        self.assertEqual(dsn.sender, "")
        self.assertEqual(dsn.recipients, ["sender@example.org"])
        text = dsn.data.decode("utf-8", "replace")
        self.assertIn("Status: 5.1.10", text)
        self.assertIn(queue_id, text)
        self.assertEqual([c for c in self.rx["127.0.0.2"].connections
                          if any("nullmx" in m for m in c.commands)], [],
                         "no connection for the null MX domain")
        self.assertEqual(self.dns.count("nullmx.test", "A"), 0, "no address lookups after a null MX")
        self.wait_queue_empty()

    def test_nxdomain_bounces_5_1_2(self):
        self.setup_relay(lambda rx: {"example.org": {"MX": [[10, "mx.example.org"]]},
                                     "mx.example.org": {"A": [rx["127.0.0.2"].host]}},
                         hosts=("127.0.0.2",))
        self.send(["user@no-such-domain.test"], "nx")
        [dsn] = self.wait_for_messages(self.rx["127.0.0.2"], 1)
        self.assertIn("Status: 5.1.2", dsn.data.decode("utf-8", "replace"))
        self.assertEqual(len(self.deliveries(outcome="delivered")), 1, "only the DSN was delivered")
        self.wait_queue_empty()

    def test_servfail_defers_then_delivers(self):
        dns_server, _ = h.import_fixtures()
        self.setup_relay(lambda rx: dns_server.mx_zone("flaky.test", [(10, rx["127.0.0.2"])]),
                         hosts=("127.0.0.2",))
        self.dns.set_fault("flaky.test", "servfail")
        queue_id = self.send(["user@flaky.test"], "servfail")
        deferred = h.wait_until(lambda: [m for m in self.server.queue()["messages"]
                                         if m["id"] == queue_id and m["attempts"] >= 1], 15)
        self.assertTrue(deferred, self.server.queue())
        self.assertIn("4.4.3", deferred[0]["last_reply"])
        self.assertEqual(self.rx["127.0.0.2"].message_count, 0)
        self.dns.clear_faults()
        self.wait_for_messages(self.rx["127.0.0.2"], 1)
        self.wait_queue_empty()

    def test_silent_dns_server_defers_then_delivers(self):
        dns_server, _ = h.import_fixtures()
        self.setup_relay(lambda rx: dns_server.mx_zone("quiet.test", [(10, rx["127.0.0.2"])]),
                         hosts=("127.0.0.2",))
        self.dns.set_fault("*", "silent")
        queue_id = self.send(["user@quiet.test"], "silent")
        deferred = h.wait_until(lambda: [m for m in self.server.queue()["messages"]
                                         if m["id"] == queue_id and m["attempts"] >= 1], 20)
        self.assertTrue(deferred, "no deferral after the DNS timeout: %r" % self.server.queue())
        self.assertIn("4.4.3", deferred[0]["last_reply"])
        self.dns.clear_faults()
        self.wait_for_messages(self.rx["127.0.0.2"], 1, timeout=30)
        self.wait_queue_empty()


class Content(DeliveryTest):
    def test_delivered_copy_is_byte_identical_apart_from_received(self):
        dns_server, _ = h.import_fixtures()
        self.setup_relay(lambda rx: dns_server.mx_zone("example.test", [(10, rx["127.0.0.2"])]),
                         hosts=("127.0.0.2",))
        original = (b"Subject: bytes\r\nMessage-ID: <bytes@client.example.org>\r\n" + DATE.encode() + b"\r\n"
                    b".leading dot line\r\n..two dots\r\n" + bytes(range(32, 127)) + b"\r\n"
                    b"\r\n\r\nlast line\r\n")
        with self.server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            stuffed = b"".join((b"." + line if line.startswith(b".") else line)
                               for line in original.splitlines(keepends=True))
            r = c.transaction(recipients=("user@example.test",), body=stuffed)
            self.assertReply(r, 250)
        [message] = self.wait_for_messages(self.rx["127.0.0.2"], 1)
        received, rest = message.data.split(b"\r\n", 1)
        while rest[:1] in (b" ", b"\t"):  # the folded lines of our Received: field
            rest = rest.split(b"\r\n", 1)[1]
        self.assertTrue(received.startswith(b"Received: "), received)
        self.assertEqual(rest, original)


if __name__ == "__main__":
    h.main()
