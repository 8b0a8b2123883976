"""PROXY protocol v1/v2 from a trusted load balancer: the real client address is used for relay
decisions and Received:; malformed headers close the connection without a greeting; untrusted
clients are greeted at once and a PROXY line is just an unknown command."""

import ipaddress
import socket
import struct
import time

import harness as h
from harness import SluiceTestCase, SharedServerTestCase

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, dst="192.0.2.1", sport=40000, dport=25):
    family = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (family, src, dst, sport, dport)).encode()


def v2(src=None, dst=None, sport=40000, dport=25, command=1, tlvs=b"", family=None):
    """A PROXY v2 header. command 1 = PROXY, 0 = LOCAL. src None = AF_UNSPEC."""
    if src is None:
        fam, addresses = 0x00, b""
    elif ":" in src:
        fam = 0x21
        addresses = (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst or "2001:db8::1").packed
                     + struct.pack("!HH", sport, dport))
    else:
        fam = 0x11
        addresses = (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst or "192.0.2.1").packed
                     + struct.pack("!HH", sport, dport))
    if family is not None:
        fam = family
    payload = addresses + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, fam]) + struct.pack("!H", len(payload)) + payload


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def raw_connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def read_all_until_close(s, timeout=10):
    """Everything the server sends until it closes; (data, closed)."""
    s.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return data, True
        except socket.timeout:
            return data, False
        if not chunk:
            return data, True
        data += chunk
    return data, False


class WrappedClient(h.SmtpClient):
    """SmtpClient that sends a PROXY header before reading the greeting."""

    def __init__(self, port, header, pieces=1):
        super().__init__(port, greeting=False)
        step = max(1, len(header) // pieces)
        for i in range(0, len(header), step):
            self.send(header[i:i + step])
            if pieces > 1:
                time.sleep(0.05)
        self.greeting = self.read_reply()


class TrustedProxy(SharedServerTestCase):
    server_overrides = {
        "proxy_protocol": {"trusted": ["127.0.0.1/32"], "timeout": "2s"},
        "relay": {"networks": ["192.0.2.0/24", "2001:db8:1::/48"], "domains": ["local.test"]},
    }

    def relay_check(self, client, expect_allowed, expect_ip_literal):
        """EHLO, MAIL, RCPT to a foreign domain (allowed or 554), then a message to local.test and
        the Received: client address in the stored copy."""
        self.addCleanup(client.close)
        self.assertReply(client.greeting, 220)
        self.assertReply(client.cmd("EHLO lb-client.example"), 250)
        self.assertReply(client.cmd("MAIL FROM:<a@example.org>"), 250)
        r = client.cmd("RCPT TO:<x@other.example>")
        if expect_allowed:
            self.assertReply(r, 250, "2.1.5", "relay must be allowed for %s" % expect_ip_literal)
        else:
            self.assertReply(r, 554, "5.7.1", "relay must be denied for %s" % expect_ip_literal)
        self.assertReply(client.cmd("RCPT TO:<y@local.test>"), 250)
        self.assertReply(client.cmd("DATA"), 354)
        client.send(b"Subject: via proxy\r\n\r\nhello\r\n.\r\n")
        r = client.read_reply()
        self.assertReply(r, 250, "2.0.0")
        stored = self.server.queued_message(r.queue_id)["message"]
        self.assertTrue(stored.startswith("Received: from lb-client.example (%s)" % expect_ip_literal),
                        "Received: must show the proxied client %s: %r" % (expect_ip_literal, stored[:120]))

    def test_v1_tcp4_allowed(self):
        self.relay_check(WrappedClient(self.server.port, v1("192.0.2.7")), True, "[192.0.2.7]")

    def test_v1_tcp4_denied(self):
        self.relay_check(WrappedClient(self.server.port, v1("198.51.100.1")), False, "[198.51.100.1]")

    def test_v1_tcp6(self):
        self.relay_check(WrappedClient(self.server.port, v1("2001:db8:1::7", "2001:db8::1")), True,
                         "[IPv6:2001:db8:1::7]")

    def test_v1_split_across_writes(self):
        self.relay_check(WrappedClient(self.server.port, v1("192.0.2.9"), pieces=5), True, "[192.0.2.9]")

    def test_v2_tcp4(self):
        self.relay_check(WrappedClient(self.server.port, v2("192.0.2.8")), True, "[192.0.2.8]")
        self.relay_check(WrappedClient(self.server.port, v2("203.0.113.5")), False, "[203.0.113.5]")

    def test_v2_tcp6(self):
        self.relay_check(WrappedClient(self.server.port, v2("2001:db8:1::8")), True, "[IPv6:2001:db8:1::8]")
        self.relay_check(WrappedClient(self.server.port, v2("2001:db8:2::1")), False, "[IPv6:2001:db8:2::1]")

    def test_v2_with_tlvs_and_split(self):
        header = v2("192.0.2.10", tlvs=tlv(0x01, b"smtp") + tlv(0x02, b"mx.example.test") + tlv(0x04, b""))
        self.relay_check(WrappedClient(self.server.port, header, pieces=4), True, "[192.0.2.10]")

    def test_v2_local_uses_socket_address(self):
        self.relay_check(WrappedClient(self.server.port, v2(command=0)), False, "[127.0.0.1]")
        # LOCAL with an address block present: the addresses are ignored.
        self.relay_check(WrappedClient(self.server.port, v2("192.0.2.7", command=0)), False, "[127.0.0.1]")

    def test_v2_unspec_uses_socket_address(self):
        self.relay_check(WrappedClient(self.server.port, v2(None, command=1)), False, "[127.0.0.1]")

    def test_v1_unknown_uses_socket_address(self):
        self.relay_check(WrappedClient(self.server.port, b"PROXY UNKNOWN\r\n"), False, "[127.0.0.1]")
        self.relay_check(WrappedClient(self.server.port, b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), False,
                         "[127.0.0.1]")

    def test_v1_length_limit(self):
        header = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
        self.assertEqual(len(header), 107)
        self.relay_check(WrappedClient(self.server.port, header), False, "[127.0.0.1]")
        self.assert_closed_without_greeting(b"PROXY UNKNOWN " + b"x" * (108 - 16) + b"\r\n", "108-octet v1")
        self.assert_closed_without_greeting(b"PROXY UNKNOWN " + b"x" * 200, "v1 without CRLF")

    def assert_closed_without_greeting(self, header, label):
        s = raw_connect(self.server.port)
        self.addCleanup(s.close)
        try:
            s.sendall(header)
        except OSError:
            pass
        data, closed = read_all_until_close(s, timeout=10)
        self.assertTrue(closed, "%s: connection must be closed" % label)
        self.assertNotIn(b"220", data, "%s: no greeting may be sent: %r" % (label, data))

    def test_malformed_headers_close(self):
        cases = {
            "not proxy": b"EHLO client.example.org\r\n",
            "bad family": b"PROXY TCP5 192.0.2.7 192.0.2.1 1 2\r\n",
            "bad address": b"PROXY TCP4 192.0.2 192.0.2.1 1 2\r\n",
            "v6 in TCP4": b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",
            "bad port": b"PROXY TCP4 192.0.2.7 192.0.2.1 99999 25\r\n",
            "missing port": b"PROXY TCP4 192.0.2.7 192.0.2.1 1\r\n",
            "lowercase": b"proxy TCP4 192.0.2.7 192.0.2.1 1 2\r\n",
            "bare LF": b"PROXY TCP4 192.0.2.7 192.0.2.1 1 2\n",
            "v2 bad version": V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,
            "v2 bad command": V2_SIGNATURE + b"\x2f\x11\x00\x0c" + b"\x00" * 12,
            "v2 short for family": V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,
            "v2 too long": V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 1025) + b"\x00" * 1025,
            "v2 bad signature": b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c" + b"\x00" * 12,
        }
        for name, header in cases.items():
            with self.subTest(case=name):
                self.assert_closed_without_greeting(header, name)

    def test_v2_max_length_accepted(self):
        header = v2("192.0.2.11", tlvs=tlv(0xE0, b"p" * (1024 - 12 - 3)))
        self.assertEqual(len(header), 16 + 1024)
        self.relay_check(WrappedClient(self.server.port, header), True, "[192.0.2.11]")

    def test_early_talker_after_header(self):
        for name, header in (("v1", v1("192.0.2.7")), ("v2", v2("192.0.2.7"))):
            with self.subTest(version=name):
                s = raw_connect(self.server.port)
                self.addCleanup(s.close)
                s.sendall(header + b"EHLO early.example\r\n")
                data, closed = read_all_until_close(s)
                self.assertTrue(closed, "early talker must be disconnected")
                self.assertTrue(data.startswith(b"554"), "expected 554 and no greeting, got %r" % data)
                self.assertNotIn(b"220", data)

    def test_no_header_times_out(self):
        s = raw_connect(self.server.port)
        self.addCleanup(s.close)
        start = time.monotonic()
        data, closed = read_all_until_close(s, timeout=20)
        elapsed = time.monotonic() - start
        print("\n    closed after %.1f s (proxy timeout 2s)" % elapsed)
        self.assertTrue(closed, "a trusted peer that sends no header must be dropped")
        self.assertNotIn(b"220", data)


class UntrustedProxy(SluiceTestCase):
    def test_untrusted_client_greeted_and_proxy_line_ignored(self):
        server = self.start_sluice({
            "proxy_protocol": {"trusted": ["192.0.2.0/24"]},
            "relay": {"networks": ["192.0.2.0/24"]}})
        c = h.SmtpClient(server.port, greeting=False)
        self.addCleanup(c.close)
        # Greeted at once without sending anything.
        self.assertReply(c.read_reply(timeout=5), 220)
        self.assertReply(c.cmd("PROXY TCP4 192.0.2.7 192.0.2.1 40000 25"), 500, "5.5.1")
        self.assertReply(c.cmd("EHLO client.example.org"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<x@other.example>"), 554, "5.7.1",
                         "the PROXY line from an untrusted peer must not be honoured")


if __name__ == "__main__":
    h.main()
