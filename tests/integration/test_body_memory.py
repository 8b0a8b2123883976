"""Message bodies in memory are bounded per shard ([server] body_memory_per_shard): many
concurrent senders of large messages are held back by TCP (their DATA is not read while the
budget is full) instead of exhausting memory; every one of them gets its answer, the spool's
segment preallocation keeping up or the message waiting for a segment (never a 451 while the
disk has room), and other clients are served meanwhile. MAIL with SIZE= above the budget gets
452 4.3.1 (issue 6, section 2)."""

import os
import socket
import threading
import time

import harness as h
from harness import SluiceTestCase

MIB = 1 << 20
BUDGET = 64 * MIB
MAX_MESSAGE = 21 * MIB
CHUNK = 256 * 1024
SHARDS = 2  # the budget is per shard
# Above the budgets: per shard its recv buffer ring (16 MiB, touched as it is used); then the
# binary and its heap at start (~8 MiB), per-session state, input that arrived in the moment
# between a session's pause and its recv's cancel, allocator slack. Measured with 200 senders:
# ~90 MiB over the shards' budgets and rings together.
RING = 16 * MIB
OVERHEAD = 128 * MIB


def vm_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class BodyMemory(SluiceTestCase):
    def start(self, budget=BUDGET, **server):
        settings = {"threads": 1, "body_memory_per_shard": budget, "max_message_size": MAX_MESSAGE,
                    "data_timeout": "60s", "command_timeout": "60s", "max_sessions_per_client": 0}
        settings.update(server)
        return self.start_sluice({"server": settings, "spool": {"segment_bytes": 64 * MIB}})

    def test_size_above_budget_gets_452(self):
        small = 8 * MIB  # below max_message_size: some messages can never be held at once
        server = self.start(budget=small)
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            self.assertReply(c.cmd("MAIL FROM:<a@example.org> SIZE=%d" % (small + 1)), 452, "4.3.1")
            self.assertReply(c.cmd("MAIL FROM:<a@example.org> SIZE=%d" % (small // 2)), 250)
            self.assertReply(c.cmd("RSET"), 250)
            # Above max_message_size the permanent 552 comes first.
            self.assertReply(c.cmd("MAIL FROM:<a@example.org> SIZE=%d" % (MAX_MESSAGE + 1)), 552, "5.3.4")

    def test_body_larger_than_budget_without_size_is_refused(self):
        small = 8 * MIB
        server = self.start(budget=small)
        c = server.connect(timeout=60)
        self.addCleanup(c.close)
        self.assertReply(c.cmd("EHLO client.example.org"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@example.org>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@example.com>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        block = (b"y" * 998 + b"\r\n") * 256
        try:
            for _ in range((small + 4 * MIB) // len(block)):
                c.send(block)
        except OSError:
            pass  # the server closed after its answer
        r = c.read_reply(timeout=30)
        self.assertReply(r, 421, "4.3.1")
        self.assertTrue(c.wait_closed(10))
        self.assertEqual(server.queue_count(), 0)
        with server.connect() as other:  # the relay goes on
            self.assertReply(other.cmd("EHLO other.example.org"), 250)
            self.assertReply(other.transaction(), 250, "2.0.0")

    def test_an_answered_session_no_longer_holds_the_budget(self):
        """A session that got its 250 and stays connected holds no body: the next sender is the
        oldest holder and may use the whole budget. (It stayed counted as the oldest, and with a
        budget the size of the largest message every later body waited for its timeout.)"""
        small = 8 * MIB
        server = self.start(budget=small, max_message_size=small, command_timeout="120s", data_timeout="120s")
        idle = server.connect(timeout=30)
        self.addCleanup(idle.close)
        self.assertReply(idle.cmd("EHLO idle.example.org"), 250)
        self.assertReply(idle.transaction(body=b"Subject: first\r\n\r\nx\r\n"), 250)
        # `idle` stays connected and says nothing; a 2 MiB message from another client goes through.
        body = (b"z" * 998 + b"\r\n") * (2 * MIB // 1000)
        with server.connect(timeout=30) as c:
            self.assertReply(c.cmd("EHLO next.example.org"), 250)
            self.assertReply(c.transaction(body=b"Subject: next\r\n\r\n" + body), 250)

    def test_many_large_senders_stay_within_budget(self):
        sanitized = h.built_with_sanitizers()
        # Under ASan the same run, smaller (its allocator swamps the RSS figure anyway).
        senders = 40 if sanitized else 200
        message_bytes = 5 * MIB if sanitized else 20 * MIB
        # The allocator returns freed pages after a delay (mimalloc: 25 ms); under this load that
        # keeps tens of MiB of already freed bodies in RSS. Without the delay the figure shows
        # what Sluice holds.
        os.environ["MIMALLOC_DECOMMIT_DELAY"] = "0"
        try:
            server = self.start(threads=SHARDS)
        finally:
            del os.environ["MIMALLOC_DECOMMIT_DELAY"]
        line = b"x" * 998 + b"\r\n"
        body = b"Subject: large\r\n\r\n" + line * (message_bytes // len(line))
        self.assertLess(len(body), MAX_MESSAGE)
        st = os.statvfs(server.spool_dir)
        if st.f_bavail * st.f_frsize < 3 * senders * len(body):
            self.skipTest("not enough disk for %d messages of %d MiB" % (senders, message_bytes >> 20))

        results = [None] * senders
        errors = []

        def send(i):
            try:
                c = h.SmtpClient(server.port, timeout=120)
                try:
                    r = c.cmd("EHLO sender%d.example.org" % i)
                    if r.code != 250:
                        results[i] = r
                        return
                    # Half of them declare SIZE=, half do not.
                    params = " SIZE=%d" % len(body) if i % 2 else ""
                    r = c.cmd("MAIL FROM:<s%d@example.org>%s" % (i, params))
                    if r.code != 250:
                        results[i] = r
                        return
                    r = c.cmd("RCPT TO:<r%d@example.com>" % i)
                    if r.code != 250:
                        results[i] = r
                        return
                    r = c.cmd("DATA")
                    if r.code != 354:
                        results[i] = r
                        return
                    view = memoryview(body)
                    for offset in range(0, len(body), CHUNK):
                        c.sock.sendall(view[offset:offset + CHUNK])
                        time.sleep(0.005)  # slowly: sessions overlap for the whole run
                    if i % 10 == 0:
                        # Some half-close right after: input parked while the budget is
                        # full must still be answered, not dropped at the FIN.
                        c.sock.sendall(b".\r\nQUIT\r\n")
                        c.sock.shutdown(socket.SHUT_WR)
                        results[i] = c.read_reply(timeout=120)
                        if c.read_reply(timeout=120).code != 221:
                            errors.append("sender %d: no 221 after a half-close" % i)
                        return
                    c.sock.sendall(b".\r\n")
                    results[i] = c.read_reply(timeout=120)
                    c.cmd("QUIT")
                finally:
                    c.close()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append("sender %d: %r" % (i, e))

        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(senders)]
        t0 = time.monotonic()
        for t in threads:
            t.start()

        # Another client is served meanwhile: it is never in a transaction, never held back.
        probe_rounds = []
        watcher = h.SmtpClient(server.port, timeout=30)
        self.addCleanup(watcher.close)
        self.assertReply(watcher.cmd("EHLO watcher.example.org"), 250)
        peak_rss = 0
        while any(t.is_alive() for t in threads) and time.monotonic() - t0 < 300:
            peak_rss = max(peak_rss, vm_kib(server.pid, "VmRSS"))
            started = time.monotonic()
            r = watcher.cmd("NOOP", timeout=30)
            probe_rounds.append((r.code, time.monotonic() - started))
            time.sleep(0.2)
        for t in threads:
            t.join(timeout=5)
        elapsed = time.monotonic() - t0
        self.assertTrue(server.running(), "the relay must stay up")
        self.assertReply(watcher.cmd("EHLO watcher.example.org"), 250)
        hwm_mib = vm_kib(server.pid, "VmHWM") / 1024
        codes = [r.code if r is not None else None for r in results]
        accepted = codes.count(250)
        print("\n    %d senders x %d MiB in %.1f s: %d x 250, others %s; peak RSS %.0f MiB "
              "(VmHWM %.0f MiB; budget %d MiB x %d shards); NOOP probes %d, slowest %.2f s" % (
                  senders, message_bytes >> 20, elapsed, accepted,
                  sorted(set(c for c in codes if c != 250), key=str), peak_rss / 1024, hwm_mib,
                  BUDGET >> 20, SHARDS, len(probe_rounds), max((d for _, d in probe_rounds), default=0)))
        self.assertEqual(errors, [])
        self.assertTrue(all(code is not None for code in codes), codes)
        self.assertTrue(all(code == 250 or 400 <= code < 500 for code in codes), codes)
        # Preallocation behind a burst is no reason to fail a message while the disk has room.
        self.assertNotIn(451, codes, "no 451 (no spool segment ready) while the disk has room")
        self.assertGreater(accepted, senders // 2)
        self.assertEqual(server.queue_count(), accepted)
        self.assertTrue(probe_rounds and all(code == 250 for code, _ in probe_rounds), probe_rounds)
        if not sanitized:
            self.assertLess(hwm_mib, (SHARDS * (BUDGET + RING) + OVERHEAD) / MIB,
                            "bodies in memory must stay within the budget plus overhead")


if __name__ == "__main__":
    h.main()
