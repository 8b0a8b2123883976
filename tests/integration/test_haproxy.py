"""Real HAProxy (TCP mode, send-proxy-v2, check-send-proxy, option smtpchk) in front of Sluice:
health checks pass and mail goes through with the real client address."""

import os
import signal
import socket
import subprocess
import time

import harness as h
from harness import SluiceTestCase

CLIENT_SOURCE = "127.0.0.5"  # the client's own address; HAProxy itself connects from 127.0.0.1


class HAProxyInFront(SluiceTestCase):
    def start_haproxy(self, sluice_port):
        self.lb_port = h.free_port()
        self.stats_path = os.path.join(self.tmp, "haproxy.sock")
        cfg = os.path.join(self.tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("""global
    stats socket %(stats)s mode 600 level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp_in
    bind 127.0.0.1:%(lb)d
    default_backend sluice
backend sluice
    option smtpchk EHLO haproxy-check.example.test
    server s1 127.0.0.1:%(port)d send-proxy-v2 check check-send-proxy inter 500ms
""" % {"stats": self.stats_path, "lb": self.lb_port, "port": sluice_port})
        self.haproxy_log = open(os.path.join(self.tmp, "haproxy.log"), "w")
        proc = subprocess.Popen(["haproxy", "-f", cfg, "-db"], stdout=self.haproxy_log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(self.stop_haproxy, proc)
        return proc

    def stop_haproxy(self, proc):
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self.haproxy_log.close()
        if self._failed():
            with open(os.path.join(self.tmp, "haproxy.log"), errors="replace") as f:
                print("---- haproxy log ----\n" + f.read()[-4000:])

    def stats(self):
        """HAProxy's `show stat` CSV as a list of dicts."""
        data = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(self.stats_path)
                s.sendall(b"show stat\n")
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return []
        lines = data.decode().strip().splitlines()
        if not lines or not lines[0].startswith("# "):
            return []
        header = lines[0][2:].split(",")
        return [dict(zip(header, line.split(","))) for line in lines[1:]]

    def server_row(self):
        for row in self.stats():
            if row.get("pxname") == "sluice" and row.get("svname") == "s1":
                return row
        return None

    def test_health_checks_and_mail_through_haproxy(self):
        sluice = self.start_sluice({
            "proxy_protocol": {"trusted": ["127.0.0.1/32"]},
            # Only the address HAProxy reports may relay: proof that the PROXY header is used.
            "relay": {"networks": ["%s/32" % CLIENT_SOURCE]}})
        self.start_haproxy(sluice.port)

        row = h.wait_until(lambda: (self.server_row() or {}).get("status") == "UP" and self.server_row(), 20, 0.2)
        self.assertTrue(row, "HAProxy never saw s1 UP: %r" % self.server_row())
        print("\n    haproxy s1: status=%s check_status=%s check_code=%s" % (
            row["status"], row.get("check_status"), row.get("check_code")))
        self.assertEqual(row.get("check_status"), "L7OK", row)
        # Let a few more checks run, then make sure s1 stayed up.
        time.sleep(2)
        row = self.server_row()
        self.assertEqual(row["status"], "UP", row)
        self.assertEqual(row.get("chkfail"), "0", "failed health checks: %r" % row)

        code, text, queue_id = h.smtplib_send(
            self.lb_port, "lb@example.org", ["someone@other.example"],
            "Subject: through haproxy\r\n\r\nhello via the load balancer\r\n",
            source_address=(CLIENT_SOURCE, 0))
        self.assertEqual(code, 250, text)
        self.assertIsNotNone(queue_id, text)
        stored = sluice.queued_message(queue_id)["message"]
        self.assertTrue(stored.startswith("Received: from client.example.org ([%s])" % CLIENT_SOURCE),
                        stored[:150])

        # From 127.0.0.1 (not in relay networks) through HAProxy: denied, since the header says so.
        code, text, _ = h.smtplib_send(self.lb_port, "lb@example.org", ["x@other.example"],
                                       "Subject: x\r\n\r\ny\r\n", source_address=("127.0.0.1", 0))
        self.assertEqual(code, 554, text)

        bad = [l for l in sluice.log_lines() if "proxy_invalid" in l or "reason=proxy" in l]
        self.assertEqual(bad, [], "sluice logged PROXY errors for HAProxy's traffic")
        metrics = sluice.metrics()
        print("    sluice log lines: %d, queued=%s" % (len(sluice.log_lines()), sluice.queue_count()))
        self.assertIsNotNone(metrics)


if __name__ == "__main__":
    h.main()
