"""Shared harness for Sluice's integration tests.

Each tests/integration/test_*.py drives the built `sluice` binary with real peers. They are run
by ctest as `/usr/bin/python3 tests/integration/test_X.py --sluice /path/to/build/sluice` and
can be run by hand the same way. Only the standard library (and Debian's python3 modules) are
used. Everything a test starts is stopped by PID in a cleanup, even when the test fails, and the
tail of the server's log is printed when a test fails.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

SLUICE = None  # path of the binary, set by main() from --sluice

QUEUE_ID_RE = re.compile(r"queued as ([0-9A-Z]{16})(?![0-9A-Za-z])")
READY_TIMEOUT_S = 60.0     # generous: the suite also runs under ASan
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 60


# ---- small utilities ---------------------------------------------------------------------

def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (bind port 0, read it, close): racy, another process may
    take it before it is used. Sluice itself listens on port 0 (see Sluice); use this only for
    peers that must be told a port in advance."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.05):
    """Polls predicate() until it returns a true value or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # TOML basic strings accept JSON's escapes for what we write
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError("cannot write %r as TOML" % (value,))


def write_toml(path, config):
    """Writes {section: {key: value}} as TOML; a list of dicts becomes [[section]] tables."""
    lines = []
    for section, body in config.items():
        if isinstance(body, list):
            for table in body:
                lines.append("[[%s]]" % section)
                lines.extend("%s = %s" % (k, toml_value(v)) for k, v in table.items())
                lines.append("")
            continue
        lines.append("[%s]" % section)
        lines.extend("%s = %s" % (k, toml_value(v)) for k, v in body.items())
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def merge_config(base, overrides):
    merged = {section: (list(body) if isinstance(body, list) else dict(body))
              for section, body in base.items()}
    for section, body in (overrides or {}).items():
        if isinstance(body, list):
            merged[section] = list(body)
            continue
        merged.setdefault(section, {})
        for key, value in body.items():
            if value is None:
                merged[section].pop(key, None)
            else:
                merged[section][key] = value
    return merged


_LOGFMT_RE = re.compile(r'([A-Za-z0-9_]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line):
    """{key: value} of one logfmt line; quoted values are unescaped (\\", \\\\, \\xNN)."""
    fields = {}
    for key, value in _LOGFMT_RE.findall(line):
        if value.startswith('"') and len(value) >= 2:
            value = re.sub(r'\\x([0-9a-f]{2})|\\(.)',
                           lambda m: chr(int(m.group(1), 16)) if m.group(1) else m.group(2),
                           value[1:-1])
        fields[key] = value
    return fields


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_cli(*args, timeout=60, check=False):
    """Runs `sluice ARGS...`, returns CompletedProcess with text stdout/stderr."""
    result = subprocess.run([SLUICE] + [str(a) for a in args], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError("sluice %s exited %d\nstdout: %s\nstderr: %s" % (
            " ".join(map(str, args)), result.returncode, result.stdout, result.stderr))
    return result


# ---- the server under test ---------------------------------------------------------------

def parse_ready_addresses(ready_line):
    """(listen addresses, admin address) of an `event=ready` line, as (host, port) pairs; the
    admin address is None when it is not host:port (e.g. a unix socket)."""
    def host_port(text):
        m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
        if not m:
            return None
        return (m.group(1), int(m.group(2))) if m.group(1) else (m.group(3), int(m.group(4)))

    listen = re.search(r"(?:^|\s)listen=(\S+)", ready_line)
    admin = re.search(r"(?:^|\s)admin=(\S+)", ready_line)
    addresses = [host_port(a) for a in listen.group(1).split(",")] if listen else []
    return [a for a in addresses if a], (host_port(admin.group(1)) if admin else None)


class Sluice:
    """One `sluice serve --config FILE` process. It listens on port 0 (SMTP and admin) and the
    ports the kernel chose are read from its `event=ready` line: no port is picked in advance, so
    no other process can take it in between. `port`, `port6` (first [::1] listener) and
    `admin_port` are 0 until start() returned (overrides that write listen addresses with them
    get port 0, which is what they should ask for)."""

    def __init__(self, workdir, overrides=None, name="sluice", spool_dir=None):
        self.workdir = workdir
        self.name = name
        self.port = 0
        self.admin_port = 0
        self.port6 = 0  # for tests that also listen on [::1]
        self.spool_dir = spool_dir or os.path.join(workdir, "spool")
        self.config_path = os.path.join(workdir, name + ".toml")
        self.log_path = os.path.join(workdir, name + ".log")
        base = {
            "server": {
                "hostname": "relay.example.test",
                "listen": ["127.0.0.1:0"],
                "threads": 2,
                "max_message_size": 1048576,
                "drain_timeout": "3s",
            },
            "spool": {
                "dir": self.spool_dir,
                "min_free_bytes": 0,
                "segment_bytes": 4194304,
            },
            "admin": {"listen": "127.0.0.1:0"},
            # Never the machine's resolver (not on loopback): a port where nothing answers, so
            # mail to a domain without a [[route]] is deferred (4.4.3) unless a test brings its
            # own DNS server.
            "dns": {"servers": ["127.0.0.1:9"], "timeout": "1s"},
        }
        if callable(overrides):  # overrides that need the ports picked above
            overrides = overrides(self)
        self.config = merge_config(base, overrides)
        write_toml(self.config_path, self.config)
        self.proc = None
        self.returncode = None
        self._log_offset = 0
        self.ready_line = None

    # -- life cycle
    def start(self, timeout=READY_TIMEOUT_S, expect_ready=True):
        with open(self.log_path, "a") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen([SLUICE, "serve", "--config", self.config_path],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.workdir)
        self.returncode = None
        if not expect_ready:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if "event=ready" in line:
                    self.ready_line = line
                    self._take_ports(line)
                    return self
            if self.proc.poll() is not None:
                raise AssertionError("%s exited with %d before event=ready\n%s" % (
                    self.name, self.proc.returncode, self.log_tail()))
            time.sleep(0.02)
        raise AssertionError("%s: no event=ready within %.0f s\n%s" % (
            self.name, timeout, self.log_tail()))

    def _take_ports(self, ready_line):
        listen, admin = parse_ready_addresses(ready_line)
        v4 = [port for host, port in listen if ":" not in host]
        v6 = [port for host, port in listen if ":" in host]
        if v4 or v6:
            self.port = (v4 or v6)[0]
        if v6:
            self.port6 = v6[0]
        if admin:
            self.admin_port = admin[1]

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum):
        if self.running():
            os.kill(self.proc.pid, signum)

    def wait(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM, wait, then SIGKILL. Returns the exit code (negative = killed by signal)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                sys.stderr.write("%s: did not exit %.0f s after SIGTERM, sending SIGKILL\n" % (
                    self.name, timeout))
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    # -- logs
    def log_lines(self):
        try:
            with open(self.log_path, errors="replace") as f:
                f.seek(self._log_offset)
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def events(self, event, **match):
        """Parsed log lines of this run with event=EVENT whose fields equal `match`."""
        found = []
        for line in self.log_lines():
            if "event=%s" % event not in line:
                continue
            fields = parse_logfmt(line)
            if fields.get("event") == event and all(fields.get(k) == v for k, v in match.items()):
                found.append(fields)
        return found

    def wait_for_event(self, event, wait_s=10.0, **match):
        """The first parsed line event=EVENT matching `match`, waiting up to wait_s; or None."""
        found = wait_until(lambda: self.events(event, **match), wait_s)
        return found[0] if found else None

    def full_log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines=LOG_TAIL_LINES):
        tail = self.full_log().splitlines()[-lines:]
        return "---- tail of %s ----\n%s\n---- end of log ----" % (self.log_path, "\n".join(tail))

    # -- clients
    def connect(self, **kwargs):
        return SmtpClient(self.port, **kwargs)

    @property
    def token_path(self):
        """The admin token file: [admin] token_file, default <spool dir>/admin.token."""
        return self.config.get("admin", {}).get("token_file") or os.path.join(self.spool_dir, "admin.token")

    def token(self):
        """The admin bearer token (None while the file does not exist)."""
        try:
            with open(self.token_path) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def admin(self, path, method="GET", timeout=10, token=True, headers=None):
        """(status, body) of an admin request, with the bearer token unless token=False (or a
        string: that token)."""
        bearer = self.token() if token is True else (token or None)
        return http_call(self.admin_port, path, method=method, timeout=timeout, token=bearer,
                         headers=headers)

    def admin_full(self, path, method="GET", timeout=10, token=True, headers=None):
        """(status, response headers, body bytes) of an admin request."""
        bearer = self.token() if token is True else (token or None)
        return http_request(self.admin_port, path, method=method, timeout=timeout, token=bearer,
                            headers=headers)

    def queue(self, query=""):
        """The whole queue as the API's JSON, following the paging cursor (X-Sluice-Next-After)
        when the query has no limit of its own."""
        messages = []
        after = None
        while True:
            sep = "&" if "?" in query else "?"
            path = "/api/queue" + query + ((sep + "after=" + after) if after else "")
            status, headers, body = self.admin_full(path)
            if status != 200:
                raise AssertionError("GET %s -> %d %s" % (path, status, body))
            page = json.loads(body)
            messages.extend(page["messages"])
            after = headers.get("x-sluice-next-after")
            if not after or "limit=" in query:
                return {"count": len(messages), "messages": messages}

    def queue_ids(self):
        return [m["id"] for m in self.queue()["messages"]]

    def queue_count(self):
        return self.queue()["count"]

    def queued_message(self, queue_id):
        status, body = self.admin("/api/queue/" + queue_id)
        if status != 200:
            raise AssertionError("GET /api/queue/%s -> %d %s" % (queue_id, status, body))
        return json.loads(body)

    def spool_contains(self, data):
        """True if some spool segment file holds `data` (the stored, dot-stuffed wire form,
        which the API no longer shows)."""
        for root, _, files in os.walk(self.spool_dir):
            for name in files:
                if name.startswith("seg-"):
                    with open(os.path.join(root, name), "rb") as f:
                        if data in f.read():
                            return True
        return False

    def metrics(self):
        status, body = self.admin("/metrics", token=False)
        if status != 200:
            raise AssertionError("GET /metrics -> %d" % status)
        return body

    def cli(self, *args, **kwargs):
        return run_cli(*args, "--admin", "127.0.0.1:%d" % self.admin_port,
                       "--token-file", self.token_path, **kwargs)


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def sanitizer_reports(log_text):
    """The lines of a server log that come from ASan/UBSan/LSan (empty when clean)."""
    lines = [l for l in log_text.splitlines() if any(m in l for m in SANITIZER_MARKERS)]
    return "\n".join(lines[:20])


def metric_sum(text, name):
    """Sum of every sample of metric `name` (any labels) in Prometheus text; None if absent."""
    total = None
    pattern = re.compile(r"^%s(\{[^}]*\})?\s+([0-9.eE+-]+)" % re.escape(name))
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            total = (total or 0) + float(m.group(2))
    return total


def http_request(port, path, method="GET", timeout=10, host="127.0.0.1", token=None,
                 headers=None):
    """(status, {lower-case header: value}, body bytes) of one HTTP request to the admin
    endpoint; `token` adds "Authorization: Bearer TOKEN"."""
    request = urllib.request.Request("http://%s:%d%s" % (host, port, path), method=method)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return (response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def http_call(port, path, method="GET", timeout=10, host="127.0.0.1", token=None, headers=None):
    """(status, body text) of an HTTP request to the admin endpoint."""
    status, _, body = http_request(port, path, method=method, timeout=timeout, host=host,
                                   token=token, headers=headers)
    return status, body.decode("utf-8", "replace")


# ---- raw SMTP client ---------------------------------------------------------------------

class Reply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines  # text of each line after "NNN-" / "NNN "

    @property
    def text(self):
        return "\n".join(self.lines)

    @property
    def enhanced(self):
        """The RFC 3463 enhanced code of the last line ("2.0.0"), or None."""
        parts = self.lines[-1].split(" ", 1) if self.lines else []
        if parts and re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", parts[0]):
            return parts[0]
        return None

    @property
    def queue_id(self):
        m = QUEUE_ID_RE.search(self.text)
        return m.group(1) if m else None

    def __repr__(self):
        return "Reply(%d %r)" % (self.code, self.text)


class ConnectionClosed(Exception):
    pass


class SmtpClient:
    """A socket that speaks SMTP byte-exactly: send raw bytes, read whole (multi-line) replies."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, greeting=True, source=None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.timeout = timeout
        self.buffer = b""
        self.closed_by_peer = False
        self.greeting = self.read_reply() if greeting else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed_by_peer = True
            raise ConnectionClosed("connection closed by server; unread bytes: %r" % self.buffer)
        self.buffer += chunk

    def read_reply(self, timeout=None):
        """Reads one complete reply ("250-a", "250-b", "250 c")."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        lines = []
        code = None
        while True:
            while b"\r\n" not in self.buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout("no complete reply within %.1f s; have %r" % (
                        timeout, self.buffer))
                self._fill(remaining)
            raw, self.buffer = self.buffer.split(b"\r\n", 1)
            line = raw.decode("utf-8", "replace")
            m = re.match(r"^(\d{3})([ -])(.*)$", line)
            if not m and re.match(r"^\d{3}$", line):
                m = re.match(r"^(\d{3})()()$", line)
            if not m:
                raise AssertionError("malformed reply line %r" % line)
            this_code = int(m.group(1))
            if code is not None and this_code != code:
                raise AssertionError("reply code changed inside a multi-line reply: %r" % line)
            code = this_code
            lines.append(m.group(3))
            if m.group(2) != "-":
                return Reply(code, lines)

    def read_replies(self, count, timeout=None):
        return [self.read_reply(timeout) for _ in range(count)]

    def cmd(self, line, timeout=None):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.read_reply(timeout)

    def recv_raw(self, delay=0.3, timeout=5.0):
        """Whatever is readable after `delay` seconds, in ONE recv (plus the reply buffer)."""
        time.sleep(delay)
        self.sock.settimeout(timeout)
        data = self.buffer
        self.buffer = b""
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed_by_peer = True
        return data + chunk

    def wait_closed(self, timeout=10.0):
        """True if the server closes the connection within timeout (unread data is kept)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._fill(max(0.01, deadline - time.monotonic()))
            except ConnectionClosed:
                return True
            except socket.timeout:
                return False
            except OSError:
                return True
        return False

    def transaction(self, sender="sender@example.org", recipients=("rcpt@example.com",),
                    body=b"Subject: test\r\n\r\nhello\r\n", mail_params=""):
        """MAIL, RCPT..., DATA, body, '.' one step at a time; returns the final Reply.
        `body` is raw wire bytes (already dot-stuffed) ending in CRLF."""
        r = self.cmd("MAIL FROM:<%s>%s" % (sender, (" " + mail_params) if mail_params else ""))
        if r.code != 250:
            raise AssertionError("MAIL -> %r" % r)
        for rcpt in recipients:
            r = self.cmd("RCPT TO:<%s>" % rcpt)
            if r.code != 250:
                raise AssertionError("RCPT %s -> %r" % (rcpt, r))
        r = self.cmd("DATA")
        if r.code != 354:
            raise AssertionError("DATA -> %r" % r)
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send(body + b".\r\n")
        return self.read_reply()


def smtplib_send(port, sender, recipients, message, host="127.0.0.1", timeout=30,
                 source_address=None, mail_options=()):
    """Sends one message with smtplib; returns (code, reply text, queue id or None)."""
    import smtplib
    with smtplib.SMTP(host, port, timeout=timeout, source_address=source_address) as s:
        s.ehlo("client.example.org")
        code, msg = s.mail(sender, list(mail_options))
        if code != 250:
            return code, msg.decode(), None
        for r in recipients:
            code, msg = s.rcpt(r)
            if code != 250:
                return code, msg.decode(), None
        code, msg = s.data(message)
        text = msg.decode("utf-8", "replace")
        m = QUEUE_ID_RE.search(text)
        return code, text, (m.group(1) if m else None)


# ---- unittest glue -----------------------------------------------------------------------

class SluiceTestCase(unittest.TestCase):
    """Gives each test a temp dir and starts servers that are always stopped afterwards; on a
    failure the tail of each server's log is printed."""

    class_servers = ()

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="sluice-it-")
        self.tmp = self._tmp.name
        self.servers = []
        self.addCleanup(self._cleanup)

    def _failed(self):
        # During cleanups unittest's own "success" flag is reset; look at the result instead.
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is None:
            return False
        return any(test is self or getattr(test, "test_case", None) is self
                   for test, _ in list(result.failures) + list(result.errors))

    def _cleanup(self):
        failed = self._failed()
        problems = []
        for server in self.servers:
            code = server.stop()
            bad_exit = code not in (0, None) and not getattr(server, "expect_nonzero", False)
            reports = sanitizer_reports(server.full_log())
            if bad_exit:
                problems.append("%s exited %s on SIGTERM (expected 0)" % (server.name, code))
            if reports:
                problems.append("%s: sanitizer report in its log:\n%s" % (server.name, reports))
            if failed or bad_exit or reports:
                sys.stderr.write("\n%s exit code %s\n%s\n" % (server.name, code, server.log_tail()))
        if failed or problems:
            for server in type(self).class_servers:
                sys.stderr.write("\n%s\n" % server.log_tail())
        if (failed or problems) and os.environ.get("SLUICE_IT_KEEP"):
            sys.stderr.write("kept %s (SLUICE_IT_KEEP)\n" % self.tmp)
        else:
            self._tmp.cleanup()
        if problems:
            raise AssertionError("\n".join(problems))

    def start_sluice(self, overrides=None, name="sluice", spool_dir=None, workdir=None):
        server = Sluice(workdir or self.tmp, overrides, name=name, spool_dir=spool_dir)
        self.servers.append(server)
        server.start()
        return server

    # -- assertions
    def assertReply(self, reply, code, enhanced=None, msg=None):
        self.assertIsInstance(reply, Reply)
        what = ("%s: " % msg) if msg else ""
        if reply.code != code:
            self.fail("%sexpected %d, got %r" % (what, code, reply))
        if enhanced is not None and reply.enhanced != enhanced:
            self.fail("%sexpected enhanced code %s, got %r" % (what, enhanced, reply))


class SharedServerTestCase(SluiceTestCase):
    """One server for the whole class (faster); override `server_overrides`."""

    server_overrides = None

    @classmethod
    def setUpClass(cls):
        cls._class_tmp = tempfile.TemporaryDirectory(prefix="sluice-it-class-")
        cls.server = Sluice(cls._class_tmp.name, cls.server_overrides, name="sluice-shared")
        cls.class_servers = (cls.server,)
        try:
            cls.server.start()
        except BaseException:
            cls.server.stop()
            sys.stderr.write(cls.server.log_tail() + "\n")
            cls._class_tmp.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        reports = sanitizer_reports(cls.server.full_log())
        if code != 0 or reports:
            sys.stderr.write("\nshared server exited %s (expected 0)\n%s\n" % (
                code, cls.server.log_tail()))
        cls._class_tmp.cleanup()
        if code != 0:
            raise AssertionError("shared server exited %s on SIGTERM, expected 0" % code)
        if reports:
            raise AssertionError("sanitizer report in the shared server's log:\n%s" % reports)


# ---- delivery: fixture DNS server and receivers (tests/fixtures) -------------------------------

FIXTURES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
DELIVERY_WAIT_S = 60.0  # generous, as READY_TIMEOUT_S: the suite also runs under ASan


def import_fixtures():
    """The modules (dns_server, smtp_receiver) of tests/fixtures, imported on first use so that
    tests which do not deliver need neither python3-dnslib nor python3-aiosmtpd."""
    if FIXTURES_DIR not in sys.path:
        sys.path.insert(0, FIXTURES_DIR)
    import dns_server
    import smtp_receiver
    return dns_server, smtp_receiver


def delivery_overrides(dns=None, port=None, routes=None, **delivery):
    """Config overrides for a delivery test, to pass to start_sluice (alone or merged with
    others by merge_config):
      [dns] servers = [dns.address] (a DnsServer, or a list of them, or "HOST:PORT" strings);
      [delivery] port = port (the one port all receivers of the test share) and any other
        [delivery] key given as keyword, e.g. retry_initial="1s", lifetime="10s",
        connections_per_host=2;
      [[route]] from routes: {domain: next_hop} or a list of {"domain", "next_hop"} dicts; a
        next_hop may be a receiver (its address is used)."""
    overrides = {}
    if dns is not None:
        servers = dns if isinstance(dns, (list, tuple)) else [dns]
        overrides["dns"] = {"servers": [getattr(s, "address", s) for s in servers]}
    section = dict(delivery)
    if port is not None:
        section["port"] = int(port)
    if section:
        overrides["delivery"] = section
    if routes:
        items = routes.items() if isinstance(routes, dict) else \
            ((r["domain"], r["next_hop"]) for r in routes)
        overrides["route"] = [{"domain": d, "next_hop": getattr(hop, "address", hop)}
                              for d, hop in items]
    return overrides


class DeliveryTestCase(SluiceTestCase):
    """SluiceTestCase with the delivery fixtures: start_dns, start_receivers, start_sink. Each is
    stopped after the test's Sluice servers (so that Sluice never sees them vanish while it
    stops); on a failure, what they saw is printed with the logs."""

    def setUp(self):
        super().setUp()
        self.fixtures = []

    def _cleanup(self):
        if self._failed():  # before the temp dir (smtp-sink's counters and dumps) goes
            for fixture in self.fixtures:
                sys.stderr.write("\n%s\n" % describe_fixture(fixture))
        try:
            super()._cleanup()
        finally:
            for fixture in reversed(self.fixtures):
                fixture.stop()

    def start_dns(self, zone=None, **kwargs):
        """A started DnsServer (tests/fixtures/dns_server.py) serving `zone`; kwargs: host,
        port, origins, default_ttl, negative_ttl."""
        dns_server, _ = import_fixtures()
        server = dns_server.DnsServer(zone, **kwargs)
        self.fixtures.append(server)
        return server.start()

    def start_receivers(self, hosts=("127.0.0.2", "127.0.0.3"), per_host=None, **faults):
        """Started SmtpReceivers, one per host, all on one port (receivers[0].port); faults as
        in smtp_receiver.FAULT_DEFAULTS, per_host {host: {fault: value}} for exceptions."""
        _, smtp_receiver = import_fixtures()
        receivers = smtp_receiver.start_receivers(hosts, per_host=per_host, **faults)
        self.fixtures.extend(receivers)
        return receivers

    def start_receiver(self, host="127.0.0.2", port=0, **faults):
        _, smtp_receiver = import_fixtures()
        receiver = smtp_receiver.SmtpReceiver(host, port, **faults)
        self.fixtures.append(receiver)
        return receiver.start()

    def start_sink(self, host="127.0.0.2", port=0, options=(), dump=True):
        """Postfix's smtp-sink as a process on host:port (skips the test if it is missing)."""
        _, smtp_receiver = import_fixtures()
        if not smtp_receiver.smtp_sink_available():
            self.skipTest("smtp-sink not installed (package postfix)")
        sink = smtp_receiver.SmtpSink(self.tmp, host, port, options=options, dump=dump)
        self.fixtures.append(sink)
        return sink.start()

    def wait_for_messages(self, receivers, count, timeout=DELIVERY_WAIT_S):
        """The messages once the receiver(s) together accepted `count`; fails after timeout."""
        _, smtp_receiver = import_fixtures()
        return smtp_receiver.wait_for_messages(receivers, count, timeout)


def describe_fixture(fixture):
    """A few lines on what a fixture saw, for the log of a failed test."""
    if hasattr(fixture, "queries"):
        counts = fixture.counts()
        return "---- DNS %s: %d queries: %s" % (fixture.address, sum(counts.values()), counts)
    if hasattr(fixture, "connections"):
        lines = ["---- receiver %s: %d connection(s), %d message(s)" % (
            fixture.address, fixture.connection_count, fixture.message_count)]
        for conn in fixture.connections[-10:]:
            lines.append("  #%d from %s: sent %s; got %s" % (
                conn.id, conn.peer, " | ".join(conn.commands)[:400],
                " | ".join(conn.replies)[-400:]))
        return "\n".join(lines)
    if hasattr(fixture, "counters"):
        return "---- smtp-sink %s: %s" % (fixture.address, fixture.counters())
    return repr(fixture)


def built_with_sanitizers():
    """True for the ASan+UBSan build: its allocator and shadow memory make RSS figures meaningless."""
    try:
        out = subprocess.run(["ldd", SLUICE], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "libasan" in out or "libubsan" in out


def default_sluice_path():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(here)), "build", "sluice")


def main():
    """Strips --sluice PATH from argv and runs unittest with the rest."""
    global SLUICE
    argv = [sys.argv[0]]
    args = sys.argv[1:]
    i = 0
    while i < len(args):
        if args[i] == "--sluice" and i + 1 < len(args):
            SLUICE = args[i + 1]
            i += 2
            continue
        if args[i].startswith("--sluice="):
            SLUICE = args[i].split("=", 1)[1]
            i += 1
            continue
        argv.append(args[i])
        i += 1
    SLUICE = os.path.abspath(SLUICE or os.environ.get("SLUICE") or default_sluice_path())
    if not os.access(SLUICE, os.X_OK):
        sys.stderr.write("sluice binary not found or not executable: %s\n" % SLUICE)
        sys.exit(2)
    sys.stderr.write("using %s\n" % SLUICE)
    unittest.main(argv=argv, verbosity=2)
