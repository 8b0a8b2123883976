"""Start-up: once `event=ready` is logged, /readyz is 200 and the very first messages on every
shard are accepted (the spool must be ready before the listener is)."""

import os
import subprocess
import threading

import harness as h
from harness import SluiceTestCase

RESTARTS = 6
PARALLEL = 6  # enough connections that SO_REUSEPORT gives every shard some


class Startup(SluiceTestCase):
    def test_first_messages_after_ready_are_accepted(self):
        failures = []
        for round_ in range(RESTARTS):
            server = self.start_sluice(name="start%d" % round_, spool_dir="%s/spool%d" % (self.tmp, round_))
            status, _ = server.admin("/readyz")
            self.assertEqual(status, 200, "/readyz after event=ready")
            results = [None] * PARALLEL

            def send(i):
                try:
                    results[i] = h.smtplib_send(server.port, "first@example.org", ["r@example.com"],
                                                "Subject: first %d\r\n\r\nx\r\n" % i)
                except Exception as e:  # reported below
                    results[i] = (None, repr(e), None)
            threads = [threading.Thread(target=send, args=(i,)) for i in range(PARALLEL)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            for code, text, _ in results:
                if code != 250:
                    failures.append("round %d: %s %s" % (round_, code, text))
            self.assertEqual(server.stop(), 0)
        print("\n    %d starts x %d first messages: %d refused %s" % (RESTARTS, PARALLEL, len(failures), failures))
        self.assertEqual(failures, [], "messages sent right after event=ready were refused")


class AddressInUse(SluiceTestCase):
    """SO_REUSEPORT would let a second `sluice serve` (another spool) join the first one's
    listeners: mail would split between two spools. The second must exit 1 and say why."""

    def second_on(self, first, name, smtp_port, admin_port):
        second = h.Sluice(self.tmp, {"server": {"listen": ["127.0.0.1:%d" % smtp_port]},
                                     "admin": {"listen": "127.0.0.1:%d" % admin_port}},
                          name=name, spool_dir=os.path.join(self.tmp, name + "-spool"))
        self.servers.append(second)
        second.expect_nonzero = True
        second.start(expect_ready=False)
        code = second.wait(timeout=60)
        return second, code

    def test_second_instance_on_the_same_addresses_exits_1(self):
        first = self.start_sluice(name="first")
        free_smtp, free_admin = 0, 0  # port 0: never "in use"
        cases = (("smtp", first.port, free_admin, first.port),
                 ("admin", free_smtp, first.admin_port, first.admin_port))
        for which, smtp_port, admin_port, busy in cases:
            second, code = self.second_on(first, "second-" + which, smtp_port, admin_port)
            log = second.full_log()
            print("\n    second instance (%s port taken): exit %s, %r" % (which, code, log.strip()[-120:]))
            self.assertEqual(code, 1, log)
            self.assertIn("sluice: 127.0.0.1:%d is in use by another process" % busy, log)
            self.assertNotIn("event=ready", log)
        # The first one is unharmed and still takes every message.
        for _ in range(20):
            with first.connect() as c:
                self.assertReply(c.cmd("EHLO client.example.org"), 250)
                self.assertReply(c.transaction(), 250, "2.0.0")
        self.assertEqual(first.queue_count(), 20)


class MakeRun(SluiceTestCase):
    def test_make_run_builds_only_the_server(self):
        """`make run` served after building every target (tests, fuzzers, benchmarks): 163 s cold
        where the binary alone takes 77 s. Its build step must name the server target alone."""
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
        plan = subprocess.run(["make", "-n", "run"], cwd=root, capture_output=True, text=True, timeout=60)
        self.assertEqual(plan.returncode, 0, plan.stderr)
        builds = [line for line in plan.stdout.splitlines() if "cmake --build" in line]
        self.assertEqual(len(builds), 1, plan.stdout)
        self.assertIn("--target sluice", builds[0])
        self.assertTrue(builds[0].rstrip().endswith("--target sluice"), builds[0])
        self.assertIn("sluice serve", plan.stdout)


if __name__ == "__main__":
    h.main()
