"""Crash safety of delivery: kill -9 and power cuts while Sluice delivers, and a restart with
deferred mail.

The promise under test (engine/app/outbound.cc, engine/relay/scheduler.h): after a crash and a
restart every message that got `250` is delivered; a recipient whose outcome ("delivered") was
recorded is never sent again; a duplicate is possible only for a crash between the remote `250`
and our journal record of it. Once the queue drains, the segment files that held the mail are
deleted and the spool is back to its empty size.

How a duplicate is told from a bug, without timing: the restarted Sluice is first shown a
receiver that answers 421 at the greeting, so it delivers nothing while the test reads the queue
it recovered (GET /api/queue, each recipient's state). That queue is exactly what was durable at
the crash. A recipient the receiver already has and the recovered queue still lists as not final
(pending/deferred) is the allowed duplicate: its 250 came, its record did not make it. Every other
recipient must reach the receiver once. Then the fault is cleared, the queue flushed and drained.

The unit of counting is (token, recipient): every message has a unique token (X-Token header,
Message-ID, sender address and body), and with recipients_per_transaction = 1 each recipient of a
two-recipient message is its own transaction, so a crash can fall between them.

SLUICE_CRASH_MESSAGES sets the message count of the kill -9 run (default 5,000: about a minute
here, under ASan too)."""

import collections
import json
import os
import random
import smtplib
import sys
import threading
import time
import unittest

import harness as h
from harness import DeliveryTestCase
import test_power_cut as powercut  # its PowerCutMount and skip conditions, not its tests

CLIENTS = 6                       # concurrent SMTP senders
MESSAGES_PER_CONNECTION = 25
CONNECTIONS_PER_HOST = 4          # Sluice's delivery connections to the one receiver
SEGMENT_BYTES = 1 << 20           # small segments: the run fills and seals several per shard
DRAIN_WAIT_S = 300.0              # generous (ASan, a shared 2-core box); never reached when healthy
KILL_AT_ACKED = 0.5               # kill -9 once Sluice acknowledged this share of the run
KILL_AT_DELIVERED = 0.02          # ... and the receiver got at least this many per message of the run
POWERCUT_MESSAGES_PER_ROUND = 900  # new messages sent at most in each run before a cut
# (cut mode, at the next data sync): a sync cut short (an outcome batch, typically), a torn
# one, and one at a random moment.
POWERCUT_ROUNDS = (("drop", True), ("torn", True), ("drop", False))
FINAL_STATES = ("delivered", "bounced")


def message_count():
    if os.environ.get("SLUICE_CRASH_MESSAGES"):
        return int(os.environ["SLUICE_CRASH_MESSAGES"])
    return 5000


def token_of(message):
    """The token of a message the receiver got (its X-Token header)."""
    return message.header("X-Token")


def body_of(token, lines):
    return ("Subject: crash test %s\r\nMessage-ID: <%s@crashtest.example>\r\nX-Token: %s\r\n\r\n%s" % (
        token, token, token, "".join("%s line %03d %s\r\n" % (token, i, "z" * 40) for i in range(lines))))


def segment_files(spool_dir):
    """{shard directory name: {segment id: size}} of a spool."""
    found = {}
    for shard in sorted(os.listdir(spool_dir)):
        path = os.path.join(spool_dir, shard)
        if not shard.startswith("shard-") or not os.path.isdir(path):
            continue
        files = {}
        for name in os.listdir(path):
            if name.startswith("seg-"):  # seg-<16 hex digits>
                try:
                    files[int(name[4:], 16)] = os.path.getsize(os.path.join(path, name))
                except FileNotFoundError:
                    pass  # unlinked meanwhile
        found[shard] = files
    return found


class Ledger:
    """What the test sent, what Sluice acknowledged, what each run delivered, and what each
    restart recovered; `check` says what breaks the promise."""

    def __init__(self):
        self.lock = threading.Lock()
        self.attempts = {}      # token -> (sender, recipients, body lines, run number)
        self.acked = {}         # token -> queue id
        self.by_sender = {}     # sender -> token
        self.run_starts = []    # receiver message index at the start of each run
        self.recovered = {}     # run number -> {token: {recipient: state}} listed after the restart
        self.unknown_queued = []

    def attempt(self, token, sender, recipients, lines, run):
        with self.lock:
            self.attempts[token] = (sender, tuple(recipients), lines, run)
            self.by_sender[sender] = token

    def ack(self, token, queue_id):
        with self.lock:
            self.acked[token] = queue_id

    def start_run(self, receiver):
        self.run_starts.append(receiver.message_count)
        return len(self.run_starts) - 1

    def record_recovered(self, run, queue):
        listed = {}
        for m in queue["messages"]:
            token = self.by_sender.get(m["from"])
            if token is None:
                self.unknown_queued.append(m)
                continue
            listed[token] = {s["address"]: s["state"] for s in m["recipient_states"]}
        self.recovered[run] = listed
        return listed

    def pending(self, run):
        """(token, recipient) pairs the restart of `run` found not final."""
        return {(t, r) for t, states in self.recovered.get(run, {}).items()
                for r, state in states.items() if state not in FINAL_STATES}

    def deliveries(self, receiver):
        """[(run, index, token, recipient, message)] of everything the receiver got."""
        out = []
        starts = self.run_starts + [float("inf")]
        run = 0
        for m in receiver.messages:
            while m.index >= starts[run + 1]:
                run += 1
            for rcpt in m.recipients:
                out.append((run, m.index, token_of(m), rcpt, m))
        return out

    def lost_at_restart(self, receiver, run):
        """Acknowledged pairs that neither reached the receiver before `run` started nor are in
        its recovered queue as not final: lost by the crash."""
        received = {(t, r) for rn, _, t, r, _ in self.deliveries(receiver) if rn < run}
        pending = self.pending(run)
        with self.lock:
            acked = [(t, r) for t in self.acked if self.attempts[t][3] < run for r in self.attempts[t][1]]
        return sorted(p for p in acked if p not in received and p not in pending)

    def check(self, receiver):
        """(problems, duplicates, counts): every rule of the promise, over the whole test."""
        problems = []
        counts = collections.Counter()
        per_run = collections.Counter()
        first_run = {}
        duplicates = []
        for run, index, token, rcpt, m in self.deliveries(receiver):
            pair = (token, rcpt)
            if token not in self.attempts:
                problems.append("the receiver got a message the test never sent: %r %r" % (m, m.headers[:200]))
                continue
            sender, recipients, lines, sent_run = self.attempts[token]
            if rcpt not in recipients or m.sender != sender:
                problems.append("envelope changed: %r (sent from %s to %s)" % (m, sender, recipients))
            if not (m.data.startswith(b"Received: ") and m.data.endswith(body_of(token, lines).encode())):
                problems.append("content changed: %r" % m)  # only our Received: header in front
            counts[pair] += 1
            per_run[(run, pair)] += 1
            if per_run[(run, pair)] > 1:
                problems.append("run %d delivered %s to %s twice (no crash in between)" % (run, token, rcpt))
            if pair in first_run:
                # A second delivery in a later run: allowed only if that run's restart found the
                # recipient not final (the remote 250 came, our record of it was not durable).
                if pair not in self.pending(run):
                    problems.append("%s to %s delivered in run %d and again in run %d, though the restart "
                                    "recovered it as final (a delivered recipient retried)" % (
                                        token, rcpt, first_run[pair], run))
                duplicates.append((token, rcpt, first_run[pair], run))
            else:
                first_run[pair] = run
                if sent_run < run and pair not in self.pending(run):
                    problems.append("%s to %s (sent in run %d) delivered in run %d, whose restart did not "
                                    "list it as pending" % (token, rcpt, sent_run, run))
        with self.lock:
            for token in self.acked:
                for rcpt in self.attempts[token][1]:
                    if counts[(token, rcpt)] == 0:
                        problems.append("acknowledged %s (%s) never reached %s" % (token, self.acked[token], rcpt))
        if self.unknown_queued:
            problems.append("recovered queue lists messages the test never sent: %r" % self.unknown_queued[:3])
        return problems, duplicates, counts


class Senders:
    """CLIENTS smtplib threads sending messages 0..total-1 (total None: until stopped) to
    whichever Sluice process is current. A message whose 250 was not seen is sent again under a
    new token (the old one may or may not have been stored: either is allowed), so each token is
    one transaction. `go` pauses them between transactions."""

    def __init__(self, ledger, total=None, seed=0):
        self.ledger = ledger
        self.total = total
        self.rng = random.Random(seed)
        self.work = collections.deque(range(total)) if total is not None else None
        self.next_number = 0
        self.lock = threading.Lock()
        self.go = threading.Event()
        self.stop = threading.Event()
        self.server = None
        self.run = 0
        self.refused = 0
        self.failed_connections = 0
        self.started = False
        self.limit = None
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)]

    def start(self, server, run, quota=None):
        """Sending to `server` (again); with quota (unbounded senders only), at most that many
        more new messages."""
        self.server = server
        self.run = run
        with self.lock:
            self.limit = None if quota is None else self.next_number + quota
        if not self.started:
            self.started = True
            for t in self.threads:
                t.start()
        self.go.set()

    def pause(self):
        self.go.clear()

    def finish(self, timeout=DRAIN_WAIT_S):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def halt(self):
        self.stop.set()
        self.go.set()
        for t in self.threads:
            if t.is_alive():
                t.join(timeout=60)

    def _take(self):
        with self.lock:
            if self.work is None:
                if self.limit is not None and self.next_number >= self.limit:
                    return "idle"
                n, self.next_number = self.next_number, self.next_number + 1
                return (n, 0)
            return self.work.popleft() if self.work else None

    def _give_back(self, item):
        with self.lock:
            if self.work is not None:
                self.work.appendleft(item)

    def _client(self, worker):
        item = None
        while not self.stop.is_set():
            self.go.wait()
            if self.stop.is_set():
                return
            try:
                with smtplib.SMTP("127.0.0.1", self.server.port, timeout=30) as s:
                    s.ehlo("sender%d.example" % worker)
                    for _ in range(MESSAGES_PER_CONNECTION):
                        if not self.go.is_set() or self.stop.is_set():
                            break
                        if item is None:
                            item = self._take()
                            if item is None:
                                return
                            if item == "idle":  # this round's quota is sent
                                item = None
                                time.sleep(0.05)
                                break
                            if not isinstance(item, tuple):
                                item = (item, 0)
                        number, attempt = item
                        token = "m%05d-a%d" % (number, attempt)
                        sender = "ct-%s@sender.example" % token
                        recipients = ["rcpt-a@dest.example"] + (["rcpt-b@dest.example"] if number % 2 else [])
                        lines = 20 + number % 17
                        self.ledger.attempt(token, sender, recipients, lines, self.run)
                        item = (number, attempt + 1)  # until the 250 is seen
                        code, _ = s.mail(sender)
                        if code != 250:
                            break
                        if any(s.rcpt(r)[0] != 250 for r in recipients):
                            s.rset()
                            break
                        code, msg = s.data(body_of(token, lines))
                        match = h.QUEUE_ID_RE.search(msg.decode("utf-8", "replace"))
                        if code == 250 and match:
                            self.ledger.ack(token, match.group(1))
                            item = None
                        else:
                            with self.lock:
                                self.refused += 1
                            break
            except (OSError, smtplib.SMTPException):
                with self.lock:
                    self.failed_connections += 1
                time.sleep(0.05)  # Sluice is down or restarting: try again when `go` is set
        if item is not None:
            self._give_back(item)


class DeliveryCrashBase(DeliveryTestCase):
    def overrides(self, receiver, **extra):
        delivery = dict(retry_initial="1s", retry_max="2s", site_backoff="1s",
                        connections_per_host=CONNECTIONS_PER_HOST, recipients_per_transaction=1,
                        messages_per_connection=1000)
        delivery.update(extra)
        return h.merge_config({
            "server": {"threads": 2, "max_message_size": 262144},
            "spool": {"segment_bytes": SEGMENT_BYTES},
        }, h.delivery_overrides(port=receiver.port, routes={"*": receiver}, **delivery))

    def quiesce_receiver(self, receiver):
        """Waits until the receiver's connections from a dead Sluice are closed, so that no
        message of the dead run is recorded after the next run starts."""
        h.wait_until(lambda: not receiver.open_connections(), 30)

    def restart_frozen(self, server, receiver, ledger):
        """Starts Sluice again while the receiver refuses every connection (421 at the greeting),
        reads what it recovered, then lets delivery go on (flush). Returns (run, listed)."""
        receiver.set_faults(greeting_421=True)
        self.quiesce_receiver(receiver)
        run = ledger.start_run(receiver)
        server.start()
        listed = ledger.record_recovered(run, server.queue())
        recovered = int(server.ready_line.split("recovered=")[1].split()[0])
        receiver.clear_faults()
        status, body = server.admin("/api/queue/flush", method="POST")
        self.assertIn(status, (200, 202), body)
        return run, listed, recovered

    def wait_drained(self, server, receiver, ledger):
        """Until the queue is empty and every acknowledged recipient reached the receiver."""
        def done():
            if server.queue_count() != 0:
                return False
            received = {(token_of(m), r) for m in receiver.messages for r in m.recipients}
            with ledger.lock:
                return all((t, r) in received for t in ledger.acked for r in ledger.attempts[t][1])
        return h.wait_until(done, DRAIN_WAIT_S, interval=0.2)

    def report(self, ledger, receiver, duplicates, counts):
        """Prints the figures; the duplicates one per line (at most 50)."""
        sys.stderr.write("    %d tokens sent (%d acknowledged), %d deliveries of %d distinct "
                         "(token, recipient), %d duplicate(s)\n" % (
                             len(ledger.attempts), len(ledger.acked), receiver.message_count,
                             len(counts), len(duplicates)))
        with ledger.lock:
            unacked = {token_of(m) for m in receiver.messages} - set(ledger.acked)
        # A message stored durably whose 250 the crash kept from the client may be delivered: allowed.
        sys.stderr.write("    %d delivered token(s) whose 250 the client never saw (stored, then the crash)\n" % len(unacked))
        for token, rcpt, first, second in duplicates[:50]:
            sys.stderr.write("      duplicate: %s to %s, delivered in run %d and again in run %d\n" % (
                token, rcpt, first, second))


class KillDuringDelivery(DeliveryCrashBase):
    def test_kill9_during_a_run_loses_nothing_and_retries_no_delivered_recipient(self):
        started = time.monotonic()
        total = message_count()
        receiver = self.start_receiver("127.0.0.2")
        ledger = Ledger()
        run = ledger.start_run(receiver)
        server = self.start_sluice(self.overrides(receiver))
        fresh = segment_files(server.spool_dir)
        senders = Senders(ledger, total=total)
        self.addCleanup(senders.halt)
        senders.start(server, run)

        # kill -9 in the middle of the run: some messages delivered, more acknowledged and still
        # queued, the rest not sent yet (the senders go on after the restart).
        def far_enough():
            with ledger.lock:
                acked = len(ledger.acked)
            return acked >= total * KILL_AT_ACKED and receiver.message_count >= total * KILL_AT_DELIVERED
        self.assertTrue(h.wait_until(far_enough, DRAIN_WAIT_S, interval=0.02), "the run did not get going")
        queued_before_kill = server.queue_count()
        senders.pause()
        self.assertEqual(server.kill9(), -9)
        killed_at = time.monotonic() - started
        with ledger.lock:
            acked_at_kill = len(ledger.acked)
        at_kill = segment_files(server.spool_dir)
        self.quiesce_receiver(receiver)
        delivered_at_kill = receiver.message_count

        run, listed, recovered = self.restart_frozen(server, receiver, ledger)
        lost = ledger.lost_at_restart(receiver, run)
        in_flight = ledger.pending(run) & {(token_of(m), r) for m in receiver.messages for r in m.recipients}
        sys.stderr.write(
            "\n    %d messages, kill -9 after %.1f s: %d acknowledged, %d deliveries, %d queued just before; "
            "restart recovered %d messages (%d listed, %d recipients not final, %d of them already at the "
            "receiver: the possible duplicates)\n" % (
                total, killed_at, acked_at_kill, delivered_at_kill, queued_before_kill, recovered,
                len(listed), len(ledger.pending(run)), len(in_flight)))
        self.assertEqual(lost, [], "acknowledged recipients neither delivered nor recovered")
        self.assertGreater(len(listed), 0, "nothing was queued at the kill: the test proves nothing")

        senders.start(server, run)  # the rest of the run
        self.assertTrue(senders.finish(), "the senders did not finish")
        self.assertTrue(self.wait_drained(server, receiver, ledger), "the queue did not drain")
        problems, duplicates, counts = ledger.check(receiver)
        self.report(ledger, receiver, duplicates, counts)
        # The bound: a duplicate is a recipient the receiver had before the kill while the
        # recovered queue still had it not final (`in_flight`). ledger.check proved that each
        # duplicate is such a recipient, so duplicates <= in_flight. No tighter constant holds:
        # outcomes are group-committed, so besides the one transaction in flight on each of the
        # connections_per_host connections, the outcomes of every transaction completed while
        # the journal's current commit (write + fdatasync) was under way were not yet written.
        self.assertLessEqual(len(duplicates), len(in_flight))
        self.assertEqual(problems[:20], [])
        self.assertEqual(len(ledger.acked), total, "every message of the run was acknowledged once")

        # The spool is back to its empty size: the segments that held the run are deleted; each
        # shard keeps only its current segment and the preallocated ones (as many files, of the
        # same size, as a fresh spool plus the one in use).
        drained = h.wait_until(lambda: self._segments_settled(server.spool_dir, fresh), 30)
        after = segment_files(server.spool_dir)
        sys.stderr.write("    segments: fresh %s, at the kill %s, after the drain %s; %.1f s in all\n" % (
            {s: sorted(f) for s, f in fresh.items()}, {s: sorted(f) for s, f in at_kill.items()},
            {s: sorted(f) for s, f in after.items()}, time.monotonic() - started))
        # Every segment that held mail at the kill is sealed by the restart's recovery; the
        # drain must delete them all.
        self.assertTrue(any(len(files) > 2 for files in at_kill.values()), "no segment held mail at the kill")
        self.assertTrue(drained, "segments left after the drain: %s (fresh: %s)" % (after, fresh))
        for shard, files in after.items():
            # At the kill the newest kReadySegmentsTarget (2) may have been preallocated, empty;
            # every older one held mail of the run, and must be gone.
            held_mail = sorted(at_kill.get(shard, {}))[:-2]
            self.assertEqual(sorted(set(files) & set(held_mail)), [],
                             "%s: segments of the killed run survived the drain" % shard)
        self.assertEqual(server.stop(), 0)

    @staticmethod
    def _segments_settled(spool_dir, fresh):
        now = segment_files(spool_dir)
        return all(len(files) <= len(fresh.get(shard, {})) + 1 and
                   all(size == SEGMENT_BYTES for size in files.values())
                   for shard, files in now.items())


@unittest.skipIf(powercut.SKIP_REASON is not None, powercut.SKIP_REASON or "")
class PowerCutDuringDelivery(DeliveryCrashBase):
    def setUp(self):
        super().setUp()
        self.fs = powercut.PowerCutMount(self.tmp)
        self.current = None
        self.addCleanup(self._stop_and_unmount)  # runs before the harness's cleanup (LIFO)

    def _stop_and_unmount(self):
        if self.current is not None and self.current.running():
            self.current.kill9()
        if self.fs.mounted():
            try:
                self.fs.unmount()
            except AssertionError as e:
                sys.stderr.write(str(e) + "\n")
        powercut.lazy_unmount(self.fs.mountpoint)
        if self._failed():
            sys.stderr.write("\n%s\n" % self.fs.log())

    def start_run(self, receiver, number):
        server = h.Sluice(self.tmp, self.overrides(receiver), name="sluice-run%d" % number,
                          spool_dir=os.path.join(self.fs.mountpoint, "spool"))
        self.servers.append(server)
        self.current = server
        return server

    def test_power_cut_during_delivery_loses_nothing_acknowledged(self):
        started = time.monotonic()
        rng = random.Random(int(os.environ.get("SLUICE_POWERCUT_SEED", "0")) or None)
        seed = rng.randrange(1 << 30)
        rng = random.Random(seed)
        sys.stderr.write("\n    power-cut seed %d (SLUICE_POWERCUT_SEED to repeat)\n" % seed)
        receiver = self.start_receiver("127.0.0.2")
        ledger = Ledger()
        self.fs.mount()
        server = self.start_run(receiver, 0)
        run = ledger.start_run(receiver)
        server.start()
        senders = Senders(ledger, total=None, seed=seed)
        self.addCleanup(senders.halt)
        quota = POWERCUT_MESSAGES_PER_ROUND
        senders.start(server, run, quota)
        for number, (mode, at_sync) in enumerate(POWERCUT_ROUNDS, start=1):
            # The cut comes while mail is being delivered: the receiver has some of this run's.
            start_index = ledger.run_starts[-1]
            self.assertTrue(h.wait_until(lambda: receiver.message_count - start_index >= 30, DRAIN_WAIT_S),
                            "run %d delivered nothing" % run)
            time.sleep(rng.uniform(0.0, 1.0))
            cut = self.fs.cut(mode, rng.randrange(1 << 30), at_sync=at_sync)
            with ledger.lock:
                acked = len(ledger.acked)
            senders.pause()
            server.kill9()
            server.expect_nonzero = True
            self.assertEqual(h.sanitizer_reports(server.full_log()), "")
            self.quiesce_receiver(receiver)
            delivered = receiver.message_count
            self.fs.reboot()
            server = self.start_run(receiver, number)
            run, listed, recovered = self.restart_frozen(server, receiver, ledger)
            lost = ledger.lost_at_restart(receiver, run)
            received = {(token_of(m), r) for m in receiver.messages for r in m.recipients}
            in_flight = ledger.pending(run) & received
            sys.stderr.write(
                "    cut %d (%s): %d acknowledged, %d deliveries so far; restart recovered %d (%d recipients not "
                "final, %d already at the receiver)\n" % (
                    number, cut, acked, delivered, recovered, len(ledger.pending(run)), len(in_flight)))
            self.assertEqual(lost, [], "cut %d: acknowledged recipients neither delivered nor recovered" % number)
            if number < len(POWERCUT_ROUNDS):
                senders.start(server, run, quota)
        # The last restart drains what is left; no more mail.
        senders.halt()
        self.assertTrue(self.wait_drained(server, receiver, ledger), "the queue did not drain")
        problems, duplicates, counts = ledger.check(receiver)
        self.report(ledger, receiver, duplicates, counts)
        self.assertEqual(problems[:20], [])
        self.assertGreater(len(ledger.acked), 0)
        self.assertEqual(server.stop(), 0, "clean stop after the power cuts")
        self.assertEqual(h.sanitizer_reports(server.full_log()), "")
        self.fs.unmount()
        sys.stderr.write("    %d power cuts, %.1f s\n" % (len(POWERCUT_ROUNDS), time.monotonic() - started))


class DeferredAcrossRestart(DeliveryCrashBase):
    def test_attempts_and_next_attempt_survive_a_restart(self):
        receiver = self.start_receiver("127.0.0.2", replies={"RCPT": "451 4.3.0 try again later"})
        # A long first retry: nothing is retried on its own while the test runs, so any attempt
        # after the restart would be Sluice ignoring the recorded next_attempt.
        server = self.start_sluice(self.overrides(receiver, retry_initial="10m", retry_max="1h"))
        tokens = {}
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            for i in range(3):
                token = "deferred-%d" % i
                reply = c.transaction(sender="%s@sender.example" % token, recipients=("rcpt@dest.example",),
                                      body=body_of(token, 3).encode())
                self.assertReply(reply, 250, "2.0.0")
                tokens[reply.queue_id] = token

        def deferred():
            messages = server.queue()["messages"]
            return len(messages) == 3 and all(m["attempts"] >= 1 and m["recipient_states"][0]["state"] == "deferred"
                                              for m in messages) and messages
        before = h.wait_until(deferred, h.DELIVERY_WAIT_S)
        self.assertTrue(before, "not deferred: %s" % server.queue())
        connections_before = receiver.connection_count
        self.assertEqual(server.stop(), 0)
        server.start()
        # Give a restart that ignored next_attempt the time to try (it would at once), then compare.
        time.sleep(2.0)
        after = server.queue()["messages"]

        def key(m):
            return (m["id"], m["attempts"], m["next_attempt"], m["last_reply"],
                    [(s["state"], s["attempts"], s["next_attempt_ms"]) for s in m["recipient_states"]])
        sys.stderr.write("\n    before the restart: %s\n    after: %s\n" % (
            [key(m) for m in before], [key(m) for m in after]))
        self.assertEqual(sorted(map(key, after)), sorted(map(key, before)))
        self.assertEqual(receiver.connection_count, connections_before, "retried before next_attempt")

        receiver.clear_faults()
        status, body = server.admin("/api/queue/flush", method="POST")
        self.assertIn(status, (200, 202), body)
        self.wait_for_messages(receiver, 3)
        self.assertTrue(h.wait_until(lambda: server.queue_count() == 0, h.DELIVERY_WAIT_S), server.queue())
        got = collections.Counter(token_of(m) for m in receiver.messages)
        self.assertEqual(got, collections.Counter(tokens.values()), "each delivered once")
        self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    h.main()
