"""`sluice-bench relay` and `compare` at a tiny size on loopback: every cell of a small matrix
through the real Sluice (the `sluice` that ctest passes as --sluice) into the in-process sink,
with the accounting (nothing lost, duplicated or corrupt), the figures present, the working
directories removed or kept, a relay that cannot start failing its cell (exit 1, no hang), and
the usage errors. No timing asserts.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

RUN_TIMEOUT_S = 300
# The spool must be on a disk (the tool refuses tmpfs, where fsync costs nothing).
DISK_TMP = "/var/tmp"


def bench_path():
    return os.path.join(os.path.dirname(h.SLUICE), "sluice-bench")


class BenchRelayTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="sluice-bench-relay-test-", dir=DISK_TMP)
        self.addCleanup(self.tmp.cleanup)

    def run_bench(self, command, *args, expect_rc=0):
        """Runs sluice-bench COMMAND with --sluice, --tmpdir and --json; returns (json, stdout)."""
        path = os.path.join(self.tmp.name, "result.json")
        if os.path.exists(path):
            os.unlink(path)
        argv = [bench_path(), command, "--tmpdir", self.tmp.name, "--json", path]
        if "--sluice" not in args:
            argv += ["--sluice", h.SLUICE]
        proc = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        if proc.returncode == 2 and "tmpfs" in proc.stderr:
            self.skipTest(DISK_TMP + " is on tmpfs")
        self.assertEqual(proc.returncode, expect_rc, "stdout:\n%s\nstderr:\n%s" % (proc.stdout, proc.stderr))
        with open(path) as f:
            return json.load(f), proc.stdout

    def workdirs(self):
        return glob.glob(os.path.join(self.tmp.name, "sluice-bench-relay-*"))

    def check_clean(self, result, messages):
        self.assertTrue(result["ok"], result)
        self.assertIsNone(result["error"])
        self.assertEqual(result["accepted"], messages)
        self.assertGreaterEqual(result["arrived"], messages)
        self.assertEqual(result["lost"], 0)
        self.assertEqual(result["duplicated"], 0)
        self.assertEqual(result["corrupt"], 0)
        self.assertEqual(result["e2e_latency_us"]["p50"] <= result["e2e_latency_us"]["max"], True)

    def test_a_small_matrix_through_sluice(self):
        doc, out = self.run_bench("relay", "--sizes", "1k,10k", "--rcpts", "1,2", "--messages", "100",
                                  "--sessions", "4", "--messages-per-connection", "1,0")
        self.assertTrue(doc["ok"])
        self.assertEqual(len(doc["cells"]), 8)
        labels = {c["label"] for c in doc["cells"]}
        self.assertIn("1k x1 rcpt, 1/conn", labels)
        self.assertIn("10k x2 rcpt, all/conn", labels)
        for cell in doc["cells"]:
            self.assertEqual([r["relay"] for r in cell["results"]], ["sluice"])
            result = cell["results"][0]
            self.check_clean(result, 100)
            self.assertGreater(result["fsyncs_per_msg"], 0)
            self.assertGreater(result["relay_cpu_us_per_msg"], 0)
            self.assertGreater(result["box_cpu_us_per_msg"], 0)
            self.assertGreater(result["relay_peak_rss_octets"], 0)
            self.assertGreater(result["msg_per_s"], 0)
            self.assertEqual(result["unaccepted_arrivals"], 0)
        self.assertIn("10k x2 rcpt, all/conn", out)
        self.assertEqual(self.workdirs(), [], "working directories are removed unless --keep")

    def test_mx_hosts_through_the_dns_fixture_spread_over_every_sink_address(self):
        # No [[route]]: Sluice resolves example.test through the fixture's three MX hosts of
        # preference 10 (127.0.0.3-5, one port) and rotates among them.
        doc, out = self.run_bench("relay", "--mx-hosts", "3", "--sizes", "1k", "--rcpts", "1", "--messages", "300",
                                  "--sessions", "6", "--messages-per-connection", "1")
        self.assertTrue(doc["ok"])
        result = doc["cells"][0]["results"][0]
        self.check_clean(result, 300)
        per_sink = result["arrived_per_sink"]
        self.assertEqual(len(per_sink), 3, result)
        self.assertEqual(sum(per_sink), result["arrived"])
        for count in per_sink:
            self.assertGreater(count, 0, "every equal-preference MX host gets mail: %s" % per_sink)
        self.assertIn("arrived per sink address (MX host):", out)

    def test_compare_without_a_peer_measures_the_limit_beside_sluice(self):
        doc, out = self.run_bench("compare", "--peer", "none", "--sizes", "1k", "--rcpts", "1", "--messages", "50",
                                  "--sessions", "2", "--messages-per-connection", "0")
        self.assertTrue(doc["ok"])
        self.assertEqual(len(doc["cells"]), 1)
        cell = doc["cells"][0]
        self.assertEqual([r["relay"] for r in cell["results"]], ["limit", "sluice"])
        for result in cell["results"]:
            self.check_clean(result, 50)
        limit = cell["results"][0]
        self.assertIsNone(limit["relay_cpu_us_per_msg"])  # no relay: nothing of its own to measure
        self.assertIsNone(limit["fsyncs_per_msg"])
        self.assertIsNotNone(cell["ratios"]["sluice_over_limit_rate"])
        self.assertIsNone(cell["ratios"]["sluice_over_peer_rate"])
        self.assertIn("sluice/limit rate", out)

    @unittest.skipUnless(os.geteuid() == 0 and os.path.exists("/usr/sbin/postfix"), "needs root and postfix")
    def test_compare_with_postfix_and_the_plot(self):
        os.chmod(self.tmp.name, 0o755)  # postfix (mail_owner) must reach its queue below it
        plot = os.path.join(self.tmp.name, "compare.svg")
        doc, out = self.run_bench("compare", "--peer", "postfix", "--sizes", "1k", "--rcpts", "2", "--messages", "40",
                                  "--sessions", "2", "--messages-per-connection", "0", "--plot", plot)
        self.assertTrue(doc["ok"])
        cell = doc["cells"][0]
        self.assertEqual([r["relay"] for r in cell["results"]], ["limit", "sluice", "postfix"])
        for result in cell["results"]:
            self.check_clean(result, 40)
        postfix = cell["results"][2]
        self.assertGreater(postfix["relay_cpu_us_per_msg"], 0)  # master's tree, reaped services included
        self.assertIsNone(postfix["fsyncs_per_msg"])  # Postfix has no such counter
        self.assertIsNotNone(cell["ratios"]["sluice_over_peer_rate"])
        self.assertIn("sluice/postfix rate", out)
        # The private instance is gone: Postfix's processes work in their queue directory, and
        # none is left in ours.
        left = []
        for cwd in glob.glob("/proc/[0-9]*/cwd"):
            try:
                if os.readlink(cwd).startswith(self.tmp.name):
                    left.append(cwd)
            except OSError:
                pass
        self.assertEqual(left, [])
        # The plot is one SVG document naming the cell and every series.
        import xml.etree.ElementTree as ET
        root = ET.parse(plot).getroot()
        self.assertTrue(root.tag.endswith("svg"))
        text = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
        for name in ("limit", "sluice", "postfix", "1k x2 rcpt, all/conn", "end-to-end throughput"):
            self.assertIn(name, text)

    def test_keep_leaves_the_working_directory(self):
        self.run_bench("relay", "--sizes", "1k", "--rcpts", "1", "--messages", "10", "--sessions", "1",
                       "--messages-per-connection", "0", "--keep")
        kept = self.workdirs()
        self.assertEqual(len(kept), 1)
        with open(os.path.join(kept[0], "sluice.toml")) as f:
            config = f.read()
        self.assertIn('domain = "*"', config)
        self.assertIn("127.0.0.3:", config)  # the sink
        self.assertTrue(os.path.isdir(os.path.join(kept[0], "spool")))

    def test_a_relay_that_does_not_start_fails_its_cell(self):
        doc, _ = self.run_bench("relay", "--sluice", "/bin/false", "--sizes", "1k", "--rcpts", "1",
                                "--messages", "10", "--sessions", "1", "--messages-per-connection", "0",
                                expect_rc=1)
        self.assertFalse(doc["ok"])
        result = doc["cells"][0]["results"][0]
        self.assertFalse(result["ok"])
        self.assertIn("exited", result["error"])
        self.assertEqual(result["accepted"], 0)
        self.assertEqual(len(self.workdirs()), 1, "a failed cell's working directory is kept")

    def test_usage_errors(self):
        for command, args in (("relay", ["--sizes", "0"]), ("relay", ["--rcpts", "x"]),
                              ("relay", ["--bogus", "1"]), ("compare", ["--peer", "exim"]),
                              ("relay", ["--peer", "none"]), ("relay", ["--tmpdir", "/dev/shm"]),
                              ("relay", ["--mx-hosts", "0"])):
            proc = subprocess.run([bench_path(), command, *args], capture_output=True, text=True,
                                  timeout=RUN_TIMEOUT_S)
            self.assertEqual(proc.returncode, 2, (command, args, proc.stderr))
            self.assertIn("sluice-bench %s:" % command, proc.stderr)


if __name__ == "__main__":
    h.main()
