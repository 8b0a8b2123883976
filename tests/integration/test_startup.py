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
