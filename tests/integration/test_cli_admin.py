"""The `sluice` command line (check-config, version, queue ...) and the admin HTTP endpoint
(/healthz, /readyz, /metrics, /api/queue)."""

import json
import os
import re
import subprocess

import harness as h
from harness import SharedServerTestCase, SluiceTestCase

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


class CheckConfig(SluiceTestCase):
    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def check(self, path):
        return h.run_cli("check-config", "--config", path)

    def assert_error_at(self, result, path, line):
        self.assertEqual(result.returncode, 2, "exit code: %r" % result)
        pattern = r"(?m)^%s:%d: \S" % (re.escape(path), line)
        self.assertRegex(result.stderr, pattern, "expected '%s:%d: message' in stderr" % (path, line))

    def test_good_file(self):
        path = self.write("good.toml", """[server]
hostname = "relay.example.test"
listen = ["127.0.0.1:2525"]
threads = 2
max_message_size = 52428800
max_recipients = 1000
command_timeout = "5m"
[spool]
dir = "/var/spool/sluice"
commit_interval_us = 500
commit_batch_bytes = 1048576
min_free_bytes = 1073741824
[relay]
networks = ["127.0.0.0/8", "::1/128"]
domains = ["example.test", ".example.test"]
[proxy_protocol]
trusted = ["10.0.0.0/8"]
[dns]
servers = ["127.0.0.1:8053"]
[delivery]
port = 2526
retry_initial = "5m"
retry_max = "1h"
lifetime = "5d"
connections_per_host = 20
[[route]]
domain = "*"
next_hop = "127.0.0.2:2526"
[admin]
listen = "127.0.0.1:9025"
""")
        result = self.check(path)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_unknown_key(self):
        path = self.write("unknown.toml", '[server]\nthreads = 2\nmax_mesage_size = 10\n')
        result = self.check(path)
        print("\n    stderr: %s" % result.stderr.strip())
        self.assert_error_at(result, path, 3)

    def test_unknown_section(self):
        path = self.write("section.toml", '[server]\nthreads = 2\n\n[spoool]\ndir = "x"\n')
        self.assert_error_at(self.check(path), path, 4)

    def test_bad_values(self):
        cases = (
            ('[server]\nthreads = "two"\n', 2),
            ('[server]\n\nmax_message_size = -1\n', 3),
            ('[server]\ncommand_timeout = "5x"\n', 2),
            ('[server]\nlisten = ["127.0.0.1:99999"]\n', 2),
            ('[relay]\nnetworks = ["10.0.0.0/33"]\n', 2),
            ('[admin]\nlisten = "nonsense"\n', 2),
            ('[server]\nthreads = 1\nmax_message_size = 10485760\n[spool]\nsegment_bytes = 1048576\n', 5),
        )
        for text, line in cases:
            with self.subTest(config=text):
                path = self.write("bad.toml", text)
                result = self.check(path)
                self.assert_error_at(result, path, line)

    def test_every_error_reported(self):
        path = self.write("many.toml", '[server]\nthreads = "x"\nbogus = 1\n[spool]\nmin_free_bytes = "lots"\n')
        result = self.check(path)
        self.assertEqual(result.returncode, 2)
        for line in (2, 3, 5):
            self.assertRegex(result.stderr, r"(?m)^%s:%d: " % (re.escape(path), line))

    def test_toml_syntax_error(self):
        path = self.write("syntax.toml", '[server]\nthreads = \n')
        result = self.check(path)
        self.assertEqual(result.returncode, 2)
        self.assertRegex(result.stderr, r"(?m)^%s:\d+: " % re.escape(path))

    def test_missing_file(self):
        result = self.check(os.path.join(self.tmp, "absent.toml"))
        self.assertEqual(result.returncode, 2)
        self.assertIn("absent.toml", result.stderr)

    def test_serve_with_bad_config_exits_2(self):
        path = self.write("bad.toml", '[server]\nthreads = "two"\n')
        result = subprocess.run([h.SLUICE, "serve", "--config", path], capture_output=True, text=True,
                                timeout=30)
        self.assertEqual(result.returncode, 2, result.stderr)

    def test_version_and_usage(self):
        result = h.run_cli("version")
        self.assertEqual(result.returncode, 0)
        self.assertRegex(result.stdout, r"^sluice \S+")
        print("\n    %s" % result.stdout.strip())
        self.assertEqual(h.run_cli("frobnicate").returncode, 2)
        self.assertEqual(h.run_cli().returncode, 2)
        self.assertEqual(h.run_cli("queue", "--admin", "127.0.0.1:1", "bogus").returncode, 2)

    def test_queue_without_server_is_runtime_error(self):
        port = h.free_port()
        self.assertEqual(h.run_cli("queue", "--admin", "127.0.0.1:%d" % port, "list").returncode, 1)


class ServeOverrides(SluiceTestCase):
    def test_command_line_overrides(self):
        port, admin, port6 = h.free_port(), h.free_port(), h.free_port("::1")
        spool = os.path.join(self.tmp, "cli-spool")
        log = open(os.path.join(self.tmp, "serve.log"), "w")
        self.addCleanup(log.close)
        proc = subprocess.Popen([h.SLUICE, "serve", "--listen", "127.0.0.1:%d" % port,
                                 "--listen", "[::1]:%d" % port6, "--admin", "127.0.0.1:%d" % admin,
                                 "--spool", spool, "--threads", "1"],
                                stdout=log, stderr=log, cwd=self.tmp)

        def stop():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.addCleanup(stop)
        def text():
            with open(log.name) as f:
                return f.read()
        ready = h.wait_until(lambda: "event=ready" in text() or proc.poll() is not None, 60)
        self.assertTrue(ready and proc.poll() is None, text())
        self.assertIn("shards=1", text())
        for host, p in (("127.0.0.1", port), ("::1", port6)):
            with h.SmtpClient(p, host=host) as c:
                self.assertReply(c.greeting, 220)
        status, _ = h.http_call(admin, "/healthz")
        self.assertEqual(status, 200)
        self.assertTrue(os.path.isdir(spool))
        stop()
        self.assertEqual(proc.returncode, 0)


class Admin(SharedServerTestCase):
    def send(self, rcpts=("r@example.com",), body=b"Subject: admin\r\n\r\nhello admin\r\n"):
        with self.server.connect() as c:
            self.assertReply(c.cmd("EHLO admin-test.example"), 250)
            r = c.transaction(recipients=rcpts, body=body)
            self.assertReply(r, 250, "2.0.0")
            return r.queue_id

    def test_health_and_ready(self):
        status, body = self.server.admin("/healthz")
        self.assertEqual(status, 200, body)
        status, body = self.server.admin("/readyz")
        self.assertEqual(status, 200, body)
        status, _ = self.server.admin("/no/such/path")
        self.assertEqual(status, 404)

    def test_metrics_increase(self):
        names = ("sluice_messages_accepted_total", "sluice_spool_fsyncs_total")
        before = self.server.metrics()
        values = {n: h.metric_sum(before, n) for n in names}
        for n in names:
            self.assertIsNotNone(values[n], "metric %s missing from /metrics" % n)
        self.send()
        after = self.server.metrics()
        for n in names:
            self.assertGreater(h.metric_sum(after, n), values[n], "%s did not increase" % n)
        self.assertRegex(after, r"(?m)^# TYPE sluice_messages_accepted_total counter")

    def test_queue_api_fields(self):
        queue_id = self.send(rcpts=("a@one.example", "b@two.example"))
        queue = self.server.queue()
        self.assertEqual(queue["count"], len(queue["messages"]))
        entry = [m for m in queue["messages"] if m["id"] == queue_id]
        self.assertEqual(len(entry), 1)
        m = entry[0]
        for field in ("id", "from", "recipients", "size", "arrived", "next_attempt", "attempts",
                      "status", "last_reply"):
            self.assertIn(field, m)
        self.assertRegex(m["id"], r"^[0-9A-Z]{16}$")
        self.assertEqual(m["from"], "sender@example.org")
        self.assertEqual(m["recipients"], ["a@one.example", "b@two.example"])
        self.assertEqual(m["size"], len(b"Subject: admin\r\n\r\nhello admin\r\n"))
        self.assertRegex(m["arrived"], RFC3339)
        self.assertRegex(m["next_attempt"], RFC3339)
        self.assertEqual(m["attempts"], 0)
        # Filters.
        self.send()
        limited = self.server.queue("?limit=1")
        self.assertEqual(len(limited["messages"]), 1)
        by_domain = self.server.queue("?domain=two.example")
        self.assertIn(queue_id, [x["id"] for x in by_domain["messages"]])
        self.assertTrue(all("b@two.example" in x["recipients"] for x in by_domain["messages"]))

    def test_cli_queue_list_show_delete(self):
        queue_id = self.send(body=b"Subject: cli\r\n\r\nshow me\r\n")
        listed = self.server.cli("queue", "list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        line = [l for l in listed.stdout.splitlines() if queue_id in l]
        self.assertEqual(len(line), 1, listed.stdout)
        self.assertIn("sender@example.org", line[0])
        as_json = self.server.cli("queue", "list", "--json")
        self.assertEqual(as_json.returncode, 0)
        data = json.loads(as_json.stdout)
        self.assertIn(queue_id, [m["id"] for m in data["messages"]])
        self.assertEqual(set(data), {"count", "messages"})

        shown = self.server.cli("queue", "show", queue_id)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn("show me", shown.stdout)
        self.assertIn("Received: from admin-test.example", shown.stdout)

        deleted = self.server.cli("queue", "delete", queue_id)
        self.assertEqual(deleted.returncode, 0, deleted.stderr)
        self.assertNotIn(queue_id, self.server.queue_ids())
        self.assertNotIn(queue_id, self.server.cli("queue", "list").stdout)
        self.assertNotEqual(self.server.cli("queue", "delete", queue_id).returncode, 0,
                            "deleting a missing message must fail")
        self.assertNotEqual(self.server.cli("queue", "show", "0000000000000000").returncode, 0)
        status, _ = self.server.admin("/api/queue/" + queue_id)
        self.assertEqual(status, 404)

    def test_cli_queue_summary_hold_release_flush(self):
        queue_id = self.send(rcpts=("x@summary.example",))
        summary = self.server.cli("queue", "summary")
        self.assertEqual(summary.returncode, 0, summary.stderr)
        self.assertIn("summary.example", summary.stdout)
        held = self.server.cli("queue", "hold", queue_id)
        self.assertEqual(held.returncode, 0, held.stdout + held.stderr)
        status = [m["status"] for m in self.server.queue()["messages"] if m["id"] == queue_id]
        self.assertEqual(len(status), 1)
        self.assertIn(status[0], ("hold", "held"))
        released = self.server.cli("queue", "release", queue_id)
        self.assertEqual(released.returncode, 0, released.stderr)
        status = [m["status"] for m in self.server.queue()["messages"] if m["id"] == queue_id]
        self.assertEqual(status, ["queued"])
        self.assertEqual(self.server.cli("queue", "flush").returncode, 0)
        status, _ = self.server.admin("/api/queue/flush", method="POST")
        self.assertIn(status, (200, 202))


if __name__ == "__main__":
    h.main()
