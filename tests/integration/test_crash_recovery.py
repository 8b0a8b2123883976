"""kill -9 while 10 clients send: after a restart on the same spool, every message whose 250 a
client saw is queued, with its content. A second instance on the same spool exits 1."""

import json
import smtplib
import threading
import time

import harness as h
from harness import SluiceTestCase

CLIENTS = 10
SEND_SECONDS = 5.0
MESSAGES_PER_CONNECTION = 5


class CrashRecovery(SluiceTestCase):
    def test_kill9_under_load_loses_no_acknowledged_message(self):
        server = self.start_sluice()
        acked = {}  # queue id -> token in the body
        lock = threading.Lock()
        stop = threading.Event()
        errors = []

        def client(n):
            seq = 0
            while not stop.is_set():
                try:
                    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
                        s.ehlo("load%d.example" % n)
                        for _ in range(MESSAGES_PER_CONNECTION):
                            if stop.is_set():
                                break
                            token = "client-%d-seq-%d" % (n, seq)
                            seq += 1
                            code, msg = s.mail("load%d@example.org" % n)
                            if code != 250:
                                errors.append(("MAIL", code, msg))
                                break
                            s.rcpt("rcpt%d@example.com" % (seq % 7))
                            body = ("Subject: %s\r\nX-Token: %s\r\n\r\n%s\r\n" % (token, token, "x" * 700 + token))
                            code, msg = s.data(body)
                            if code == 250:
                                m = h.QUEUE_ID_RE.search(msg.decode())
                                with lock:
                                    acked[m.group(1)] = token
                            else:
                                errors.append(("DATA", code, msg))
                except (OSError, smtplib.SMTPException):
                    if not stop.is_set() and server.running():
                        time.sleep(0.05)  # a reset under load: retry on a new connection
                    elif not server.running():
                        return

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(SEND_SECONDS)
        with lock:
            acked_before_kill = len(acked)
        code = server.kill9()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        self.assertEqual(code, -9)
        self.assertEqual(errors, [], "refusals during the load run")
        print("\n    %d clients sent for %.0f s: %d acknowledged (%d at the moment of kill -9)" % (
            CLIENTS, SEND_SECONDS, len(acked), acked_before_kill))
        self.assertGreater(len(acked), 50, "too few messages to make the test meaningful")

        server.start()
        self.assertIn("recovered=", server.ready_line)
        listed = server.cli("queue", "list", "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        queue = json.loads(listed.stdout)
        ids = {m["id"] for m in queue["messages"]}
        self.assertEqual(queue["count"], len(queue["messages"]))
        missing = sorted(set(acked) - ids)
        print("    after restart: %d queued, %d acknowledged ids missing" % (len(ids), len(missing)))
        self.assertEqual(missing, [], "acknowledged messages lost")
        text = server.cli("queue", "list")
        self.assertEqual(text.returncode, 0)
        for queue_id in list(acked)[:5]:
            self.assertIn(queue_id, text.stdout)
        # Content survives too (a sample, so the test stays quick under ASan).
        for queue_id in sorted(acked)[:: max(1, len(acked) // 25)]:
            message = server.queued_message(queue_id)
            self.assertIn("X-Token: %s\r\n" % acked[queue_id], message["message"])
            self.assertTrue(message["message"].startswith("Received: "))
        # New ids after the restart sort after every recovered one.
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO after.example"), 250)
            r = c.transaction()
            self.assertReply(r, 250, "2.0.0")
            self.assertGreater(r.queue_id, max(ids), "ids must stay monotonic across restarts")
            self.assertNotIn(r.queue_id, ids)

    def test_restart_after_clean_stop_keeps_queue(self):
        server = self.start_sluice()
        ids = []
        with server.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            for i in range(5):
                r = c.transaction(body=b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i))
                self.assertReply(r, 250, "2.0.0")
                ids.append(r.queue_id)
        self.assertEqual(server.stop(), 0)
        server.start()
        self.assertEqual(sorted(server.queue_ids()), sorted(ids))
        self.assertIn("body 3\r\n", server.queued_message(ids[3])["message"])

    def test_second_instance_on_same_spool_exits_1(self):
        first = self.start_sluice(name="first")
        second = h.Sluice(self.tmp, name="second", spool_dir=first.spool_dir)
        self.servers.append(second)
        second.expect_nonzero = True
        second.start(expect_ready=False)
        code = second.wait(timeout=30)
        print("\n    second instance exit code: %s; its log: %s" % (
            code, " | ".join(second.log_lines()[-3:])))
        self.assertEqual(code, 1, "a second sluice on the same spool must exit 1")
        # The first one is unharmed.
        with first.connect() as c:
            self.assertReply(c.cmd("EHLO client.example.org"), 250)
            self.assertReply(c.transaction(), 250, "2.0.0")


if __name__ == "__main__":
    h.main()
