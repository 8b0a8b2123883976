"""Power cuts. `kill -9` keeps the page cache, so it cannot show that fsync happened; these tests
run on tests/fixtures/powercut_fs.py, a FUSE filesystem that keeps only what was fsync'd (file
data by fsync/fdatasync, names by fsync of their directory) when the power is cut.

First the filesystem itself is proved: unsynced data and names are lost on a cut, synced ones
kept. Then Sluice's spool runs on it: several SMTP senders and admin hold/release/delete
requests (journal records), a cut at a random moment, kill -9, a "reboot" (the filesystem mounted
again from what survived) and a restart, many times over. Every message that got `250` (and was
not asked to be deleted) must be queued after each restart, nothing the test did not send may be
taken for a message, nothing it did not hold be held, and each restart must go on accepting and
storing mail.
Skipped (with the reason) only when /dev/fuse or pyfuse3 is missing."""

import errno
import fcntl
import json
import os
import random
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

import harness as h

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(os.path.dirname(HERE), "fixtures", "powercut_fs.py")
PYTHON = "/usr/bin/python3"

# Shards per round: rounds 1, 3 and 5 create shard directories (round 1 also the spool directory).
THREADS = (1, 1, 2, 2, 3, 3, 3, 3)
ROUNDS = len(THREADS)      # power cuts with load running, each followed by a reboot and restart
CLIENTS = 6                # concurrent SMTP senders
CUT_DELAY_S = (0.5, 2.5)   # random moment of the cut after the load starts
MOUNT_TIMEOUT_S = 30.0


def fuse_missing():
    """The reason the tests cannot run here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return "/dev/fuse cannot be opened: %s" % e
    probe = subprocess.run([PYTHON, "-c", "import pyfuse3, trio"], capture_output=True, text=True)
    if probe.returncode != 0:
        return "pyfuse3 (python3-pyfuse3) is not installed: %s" % probe.stderr.strip()[-200:]
    return None


def lazy_unmount(path):
    """Detaches a mount its fixture left behind (it died, or the test was interrupted)."""
    with open("/proc/self/mounts") as f:
        mounted = any(line.split()[1] == path for line in f)  # ismount() fails on a dead one
    if mounted and shutil.which("fusermount3"):
        subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)


class PowerCutMount:
    """One mount of the power-cut filesystem: a process serving MOUNT from the image in IMAGE.
    unmount() leaves in IMAGE what the disk holds (after a cut: only what survived it)."""

    def __init__(self, workdir, name="pcfs"):
        self.mountpoint = os.path.join(workdir, name + ".mnt")
        self.image = os.path.join(workdir, name + ".image")
        self.control_path = os.path.join(workdir, name + ".control")
        self.log_path = os.path.join(workdir, name + ".log")
        os.makedirs(self.mountpoint, exist_ok=True)
        self.proc = None
        self.mounts = 0

    def mount(self):
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [PYTHON, FIXTURE, "--mount", self.mountpoint, "--image", self.image, "--control",
                 self.control_path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("power-cut filesystem did not mount: %r\n%s" % (line, self.log()))
        self.mounts += 1
        return self

    def command(self, line, timeout=30):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.control_path)
            s.sendall(line.encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return answer.decode().strip()

    def cut(self, mode="drop", seed=0, at_sync=False):
        answer = self.command("cut %s %d%s" % (mode, seed, " at-sync" if at_sync else ""))
        if not answer.startswith("ok"):
            raise AssertionError("cut failed: %s" % answer)
        return answer

    def stats(self):
        return json.loads(self.command("stats"))

    def mounted(self):
        return self.proc is not None and self.proc.poll() is None

    def unmount(self):
        """Unmounts and waits until the image is written (the fixture exits)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.command("unmount", timeout=10)
            except OSError:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=MOUNT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        # Belt and braces: a fixture that died leaves a dead mount behind.
        lazy_unmount(self.mountpoint)
        code = self.proc.returncode
        self.proc = None
        if code != 0:
            raise AssertionError("power-cut filesystem exited %s\n%s" % (code, self.log()))

    def reboot(self):
        self.unmount()
        return self.mount()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return "---- %s ----\n%s" % (self.log_path, f.read()[-4000:])
        except FileNotFoundError:
            return ""


SKIP_REASON = fuse_missing()


@unittest.skipIf(SKIP_REASON is not None, SKIP_REASON or "")
class PowerCutFilesystem(unittest.TestCase):
    """The filesystem loses exactly what was not synced."""

    def setUp(self):
        self._tmp = h.tempfile.TemporaryDirectory(prefix="sluice-pcfs-")
        self.fs = PowerCutMount(self._tmp.name).mount()
        self.addCleanup(self._tmp.cleanup)
        self.addCleanup(self._unmount)
        self.children = []

    def _unmount(self):
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()
            child.stderr.close()
        try:
            self.fs.unmount()
        except AssertionError:
            pass  # already reported by the test, or the mount is gone

    def path(self, *parts):
        return os.path.join(self.fs.mountpoint, *parts)

    def run_program(self, source):
        """Runs `source` as a separate program that stays alive (holding its descriptors) after it
        prints "done", as a process does when the power goes."""
        child = subprocess.Popen([PYTHON, "-c", source, self.fs.mountpoint], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        self.children.append(child)
        line = child.stdout.readline()
        if line.strip() != "done":
            child.kill()
            self.fail("writer program failed: %r %s" % (line, child.stderr.read()))
        return child

    def read(self, *parts):
        with open(self.path(*parts), "rb") as f:
            return f.read()

    def test_cut_keeps_exactly_what_was_synced(self):
        program = r"""
import os, sys, time
root = sys.argv[1]
def put(path, data, sync=None):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    os.write(fd, data)
    if sync == "fsync":
        os.fsync(fd)
    elif sync == "fdatasync":
        os.fdatasync(fd)
    os.close(fd)
def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
d = os.path.join(root, "d")
os.mkdir(d)
os.mkdir(os.path.join(root, "never-synced-dir"))
fsync_dir(root)                                  # d and never-synced-dir are durable names
os.mkdir(os.path.join(root, "late-dir"))         # never durable: root not fsync'd again
put(os.path.join(d, "unsynced"), b"U" * 10000)
put(os.path.join(d, "synced"), b"S" * 10000, "fsync")
put(os.path.join(d, "datasynced"), b"D" * 10000, "fdatasync")
put(os.path.join(d, "renamed"), b"old contents", "fsync")
put(os.path.join(d, "doomed"), b"still here", "fsync")
put(os.path.join(d, "patched"), b"P" * 9000, "fsync")
fsync_dir(d)                                     # the names so far are durable
put(os.path.join(root, "never-synced-dir", "file"), b"F" * 100, "fsync")   # its dir: no fsync
put(os.path.join(d, "renamed.tmp"), b"new contents", "fsync")
os.rename(os.path.join(d, "renamed.tmp"), os.path.join(d, "renamed"))       # no dir fsync
os.unlink(os.path.join(d, "doomed"))                                        # no dir fsync
put(os.path.join(d, "created-late"), b"L" * 100, "fsync")                   # no dir fsync
fd = os.open(os.path.join(d, "patched"), os.O_WRONLY)
os.pwritev(fd, [b"x" * 10, b"y" * 10], 4090)     # over a block edge, never synced
os.pwrite(fd, b"grown", 20000)                   # grows the file, never synced
keep = os.open(os.path.join(d, "synced"), os.O_RDONLY)   # held open over the cut
print("done", flush=True)
time.sleep(600)
"""
        child = self.run_program(program)
        # While the power is on, everything written is visible.
        self.assertEqual(self.read("d", "unsynced"), b"U" * 10000)
        self.assertEqual(self.read("d", "renamed"), b"new contents")
        self.assertFalse(os.path.exists(self.path("d", "doomed")))
        self.assertEqual(self.read("d", "patched")[4090:4110], b"x" * 10 + b"y" * 10)
        self.assertEqual(os.path.getsize(self.path("d", "patched")), 20005)
        self.assertTrue(os.path.isdir(self.path("late-dir")))

        self.fs.cut("drop")
        # A dead machine: nothing more is written (or read).
        with self.assertRaises(OSError) as raised:
            with open(self.path("d", "after-cut"), "wb") as f:
                f.write(b"lost")
        self.assertEqual(raised.exception.errno, errno.EIO)
        child.kill()
        child.wait()
        self.fs.reboot()

        self.assertEqual(self.read("d", "unsynced"), b"", "unsynced data must be lost (the name was synced)")
        self.assertEqual(self.read("d", "synced"), b"S" * 10000)
        self.assertEqual(self.read("d", "datasynced"), b"D" * 10000)
        self.assertEqual(self.read("d", "renamed"), b"old contents", "a rename without dir fsync is undone")
        self.assertFalse(os.path.exists(self.path("d", "renamed.tmp")))
        self.assertEqual(self.read("d", "doomed"), b"still here", "an unlink without dir fsync is undone")
        self.assertFalse(os.path.exists(self.path("d", "created-late")),
                         "a file created (even fsync'd) in a directory not fsync'd since is gone")
        self.assertEqual(self.read("d", "patched"), b"P" * 9000, "unsynced pwrite/pwritev are undone")
        self.assertTrue(os.path.isdir(self.path("never-synced-dir")))
        self.assertEqual(os.listdir(self.path("never-synced-dir")), [])
        self.assertFalse(os.path.exists(self.path("late-dir")), "mkdir without fsync of the parent is undone")
        self.assertFalse(os.path.exists(self.path("d", "after-cut")))
        self.assertEqual(sorted(os.listdir(self.path("d"))),
                         ["datasynced", "doomed", "patched", "renamed", "synced", "unsynced"])

    def test_program_without_fsync_loses_everything(self):
        program = r"""
import os, sys, time
root = sys.argv[1]
os.makedirs(os.path.join(root, "spool", "shard-0"))
with open(os.path.join(root, "spool", "shard-0", "data"), "wb") as f:
    f.write(os.urandom(300000))
print("done", flush=True)
time.sleep(600)
"""
        child = self.run_program(program)
        self.assertEqual(os.path.getsize(self.path("spool", "shard-0", "data")), 300000)
        self.fs.cut("drop")
        child.kill()
        child.wait()
        self.fs.reboot()
        self.assertEqual(os.listdir(self.fs.mountpoint), [])

    def test_torn_cut_keeps_synced_data_and_mixes_the_rest(self):
        old = bytes(random.Random(1).getrandbits(8) for _ in range(64 * 4096))
        new = bytes(random.Random(2).getrandbits(8) for _ in range(64 * 4096))
        with open(self.path("f"), "wb") as f:
            f.write(old)
            os.fsync(f.fileno())
        fd = os.open(self.fs.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
        with open(self.path("f"), "r+b") as f:
            f.write(new)  # not synced: each block may or may not reach the disk
        self.fs.cut("torn", 7)
        self.fs.reboot()
        survived = self.read("f")
        self.assertEqual(len(survived), len(old))
        kinds = set()
        for i in range(0, len(old), 4096):
            block = survived[i:i + 4096]
            self.assertIn(block, (old[i:i + 4096], new[i:i + 4096]), "block %d is neither version" % (i // 4096))
            kinds.add(block == new[i:i + 4096])
        self.assertEqual(kinds, {True, False}, "a torn cut keeps some unsynced blocks, not all")

    def test_flock_statvfs_link_and_unlink_of_open_file(self):
        info = os.statvfs(self.fs.mountpoint)
        self.assertGreater(info.f_bavail * info.f_frsize, 1 << 30)
        with open(self.path("lock"), "w") as first, open(self.path("lock"), "w") as second:
            fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with self.assertRaises(BlockingIOError):
                fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with open(self.path("gone"), "w+b") as f:
            f.write(b"abc")
            os.unlink(self.path("gone"))
            f.write(b"def")
            f.seek(0)
            self.assertEqual(f.read(), b"abcdef")
        self.assertFalse(os.path.exists(self.path("gone")))
        with open(self.path("linked.tmp"), "wb") as f:
            f.write(b"token\n")
        os.link(self.path("linked.tmp"), self.path("linked"))
        os.unlink(self.path("linked.tmp"))
        self.assertEqual(self.read("linked"), b"token\n")


# ---- Sluice on the power-cut filesystem ------------------------------------------------------

def admin_call(server, path, method="GET", timeout=30):
    """(status, body) of an admin request, with the bearer token if the spool has one."""
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (server.admin_port, path), method=method,
                                     data=b"" if method == "POST" else None)
    token_path = os.path.join(server.spool_dir, "admin.token")
    if os.path.exists(token_path):
        with open(token_path) as f:
            request.add_header("Authorization", "Bearer " + f.read().strip())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def message_body(sender, lines):
    return "Subject: %s\r\nX-Token: %s\r\n\r\n%s" % (sender, sender, ("p" * 76 + "\r\n") * lines)


class Load:
    """CLIENTS smtplib senders; every message has its own sender address, so whatever the queue
    holds can be traced to the one transaction that sent it."""

    def __init__(self, server, round_number, attempts, targets, last_action):
        self.server = server
        self.round = round_number
        self.attempts = attempts  # sender -> (recipients, body lines), shared across rounds
        self.targets = targets    # queue id -> set of admin actions asked for it, shared across rounds
        self.last_action = last_action  # queue id -> (the last action asked, its status or None)
        self.acked = {}           # queue id -> sender
        self.refused = 0
        self.errors = []
        self.admin_answers = {}   # (action, HTTP status) -> count
        self.deleted = set()      # queue ids whose DELETE was answered 200
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)]
        self.threads.append(threading.Thread(target=self._admin, daemon=True))

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def _admin(self):
        """Journal records under load: hold, release and delete messages of this round."""
        rng = random.Random(self.round)
        while not self.stop.wait(0.01):
            with self.lock:
                if not self.acked:
                    continue
                queue_id = rng.choice(list(self.acked)[-200:])
                action = rng.choice(("hold", "hold", "release", "delete"))
                self.targets.setdefault(queue_id, set()).add(action)
                self.last_action[queue_id] = (action, None)  # None: no answer yet
            try:
                if action == "delete":
                    status, _ = admin_call(self.server, "/api/queue/" + queue_id, method="DELETE", timeout=5)
                else:
                    status, _ = admin_call(self.server, "/api/queue/%s/%s" % (queue_id, action), method="POST",
                                           timeout=5)
            except OSError:
                continue  # the power is gone
            with self.lock:
                self.admin_answers[(action, status)] = self.admin_answers.get((action, status), 0) + 1
                if action == "delete" and status == 200:
                    self.deleted.add(queue_id)
                if self.last_action.get(queue_id) == (action, None):
                    self.last_action[queue_id] = (action, status)

    def _client(self, n):
        rng = random.Random(self.round * 1000 + n)
        seq = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.server.port, timeout=10) as s:
                    s.ehlo("load%d.example" % n)
                    while not self.stop.is_set():
                        seq += 1
                        sender = "pc%d-%d-%d@example.org" % (self.round, n, seq)
                        recipients = tuple("rcpt%d@example.com" % rng.randrange(50)
                                           for _ in range(rng.randint(1, 3)))
                        code, _ = s.mail(sender)
                        if code != 250:
                            break
                        recipients = tuple(r for r in recipients if s.rcpt(r)[0] == 250)
                        if not recipients:
                            break
                        # Mostly a few KiB; some over a dozen 4 KiB blocks, which a torn cut can split.
                        lines = rng.randrange(1, 80) if rng.random() < 0.9 else rng.randrange(200, 800)
                        with self.lock:
                            self.attempts[sender] = (recipients, lines)
                        body = message_body(sender, lines)
                        code, msg = s.data(body)
                        match = h.QUEUE_ID_RE.search(msg.decode("utf-8", "replace"))
                        with self.lock:
                            if code == 250 and match:
                                self.acked[match.group(1)] = sender
                            elif code == 250:
                                self.errors.append("250 without a queue id: %r" % msg)
                            else:
                                self.refused += 1
            except (OSError, smtplib.SMTPException):
                if not self.stop.is_set():
                    time.sleep(0.02)


@unittest.skipIf(SKIP_REASON is not None, SKIP_REASON or "")
class PowerCutSpool(unittest.TestCase):
    def setUp(self):
        self._tmp = h.tempfile.TemporaryDirectory(prefix="sluice-pc-")
        self.tmp = self._tmp.name
        self.addCleanup(self._tmp.cleanup)
        self.fs = PowerCutMount(self.tmp)
        self.server = None
        self.runs = 0
        self.addCleanup(self._stop_everything)

    def _stop_everything(self):
        if self.server is not None and self.server.running():
            self.server.kill9()
        if self.fs.mounted():
            try:
                self.fs.unmount()
            except AssertionError as e:
                sys.stderr.write(str(e) + "\n")
        lazy_unmount(self.fs.mountpoint)
        if self._failed():
            if self.server is not None:
                sys.stderr.write("\n%s\n" % self.server.log_tail())
            sys.stderr.write("\n%s\n" % self.fs.log())

    def _failed(self):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        return result is not None and any(t is self for t, _ in list(result.failures) + list(result.errors))

    def start_server(self, threads):
        """A new server (config, ports, log) on the spool in the mount; more threads than the
        spool has shard directories make it create new ones."""
        self.runs += 1
        self.server = h.Sluice(self.tmp, {
            "server": {"threads": threads, "max_message_size": 262144},
            # Small segments: under load the spool moves to new preallocated ones.
            "spool": {"segment_bytes": 1048576},
        }, name="sluice-run%d" % self.runs, spool_dir=os.path.join(self.fs.mountpoint, "spool"))
        self.server.start()
        return self.server

    def assert_no_sanitizer_report(self):
        reports = h.sanitizer_reports(self.server.full_log())
        self.assertEqual(reports, "", "sanitizer report in %s" % self.server.log_path)

    def queue(self):
        return self.server.queue()["messages"]  # every page

    def check_queue(self, attempts, acked_all, recovered_before, targets):
        """What the restarted server lists: every acknowledged message not asked to be deleted,
        each traceable to one transaction the test sent with the same envelope, nothing twice,
        and held only if the test asked to hold it."""
        messages = self.queue()
        recovered = int(self.server.ready_line.split("recovered=")[1].split()[0])
        self.assertEqual(len(messages), recovered, "the list shows every recovered message")
        listed = {m["id"]: m for m in messages}
        self.listed_messages = listed
        senders = [m["from"] for m in messages]
        self.assertEqual(len(senders), len(set(senders)), "a message is listed twice")
        for m in messages:
            self.assertIn(m["from"], attempts, "a message the test never sent: %r" % m)
            self.assertEqual(tuple(m["recipients"]), attempts[m["from"]][0], "envelope changed: %r" % m)
        self.assertLessEqual(len(messages), len(attempts))
        for m in messages:
            self.assertIn(m["status"], ("queued", "held"))
            if m["status"] == "held":
                self.assertIn("hold", targets.get(m["id"], ()), "held, though never asked: %r" % m)
        # A delete answered 200 is durable (checked in after_restart); one cut short may or may not
        # have happened. A message never asked to be deleted must always be there.
        deleted = {queue_id for queue_id, actions in targets.items() if "delete" in actions}
        lost = sorted(set(acked_all) - set(listed) - deleted)
        for queue_id, sender in acked_all.items():
            if queue_id in listed:
                self.assertEqual(listed[queue_id]["from"], sender)
        vanished = sorted(recovered_before - set(listed) - deleted)
        # Bodies of a sample, with the newest (the ones nearest a torn tail): each is the one sent.
        ordered = sorted(listed)
        for queue_id in set(ordered[:: max(1, len(ordered) // 10)] + ordered[-10:]):
            status, body = admin_call(self.server, "/api/queue/" + queue_id)
            self.assertEqual(status, 200, body)
            sender = listed[queue_id]["from"]
            self.assertIn(message_body(sender, attempts[sender][1]), json.loads(body)["message"])
        return set(listed), lost, vanished

    def test_power_cuts_under_load_lose_no_acknowledged_message(self):
        started = time.monotonic()
        rng = random.Random(int(os.environ.get("SLUICE_POWERCUT_SEED", "0")) or None)
        seed = rng.randrange(1 << 30)
        rng = random.Random(seed)
        sys.stderr.write("\n    power-cut seed %d (SLUICE_POWERCUT_SEED to repeat)\n" % seed)
        self.fs.mount()
        attempts = {}
        targets = {}
        last_action = {}
        acked_all = {}
        recovered = set()
        lost_total = set()
        problems = []

        def after_restart(round_number):
            nonlocal recovered
            listed, lost, vanished = self.check_queue(attempts, acked_all, recovered, targets)
            new_losses = sorted(set(lost) - lost_total)
            lost_total.update(lost)
            torn = sum(int(line.split("torn_tails=")[1].split()[0])
                       for line in self.server.log_lines() if "event=recovered" in line)
            sys.stderr.write("    round %d: after the cut and restart %d queued (recovery saw %d torn tails), "
                             "%d acknowledged lost, %d recovered before now gone, %d deleted (200) back\n" % (
                                 round_number, len(listed), torn, len(new_losses), len(vanished),
                                 len(deleted_ok & listed)))
            if new_losses:
                problems.append("round %d: %d acknowledged messages lost (e.g. %s)" % (
                    round_number, len(new_losses), new_losses[:3]))
            if vanished:
                problems.append("round %d: %d messages recovered earlier are gone (e.g. %s)" % (
                    round_number, len(vanished), vanished[:3]))
            # A hold or release answered 200 and not followed by another request is durable.
            status_of = {queue_id: m["status"] for queue_id, m in self.listed_messages.items()}
            for queue_id, (action, status) in last_action.items():
                if status == 200 and action in ("hold", "release") and queue_id in status_of:
                    wanted = "held" if action == "hold" else "queued"
                    if status_of[queue_id] != wanted:
                        problems.append("round %d: %s answered 200 but %s is %s" % (
                            round_number, action, queue_id, status_of[queue_id]))
            revived = sorted(deleted_ok & listed)
            if revived:
                problems.append("round %d: %d messages deleted with a 200 are back (e.g. %s)" % (
                    round_number, len(revived), revived[:3]))
            recovered = listed

        deleted_ok = set()

        for round_number in range(1, ROUNDS + 1):
            self.start_server(THREADS[round_number - 1])
            if round_number > 1:
                after_restart(round_number - 1)
            load = Load(self.server, round_number, attempts, targets, last_action)
            load.start()
            delay = rng.uniform(*CUT_DELAY_S)
            time.sleep(delay)
            # Odd rounds: everything unsynced is lost, at once. Even rounds: the cut waits for the
            # next data sync, and the disk may have written any part of what that sync covers.
            torn = round_number % 2 == 0
            cut = self.fs.cut("torn" if torn else "drop", rng.randrange(1 << 30), at_sync=torn)
            with load.lock:
                acked_at_cut = len(load.acked)
            self.server.kill9()
            load.finish()
            self.assert_no_sanitizer_report()
            reused = sorted(set(load.acked) & (set(acked_all) | recovered))
            if reused:
                problems.append("round %d: queue ids given again after a restart: %s" % (round_number, reused[:3]))
            if load.acked and recovered and min(load.acked) <= max(recovered):
                problems.append("round %d: new id %s does not sort after the recovered %s" % (
                    round_number, min(load.acked), max(recovered)))
            problems.extend("round %d: %s" % (round_number, e) for e in load.errors[:3])
            acked_all.update(load.acked)
            deleted_ok |= load.deleted
            sys.stderr.write("    round %d: admin answers %s\n" % (
                round_number, ", ".join("%s %d: %d" % (a, c, n) for (a, c), n in sorted(load.admin_answers.items()))))
            sys.stderr.write("    round %d: %s, %.2f s into the load: %d acknowledged (%d at the cut), %d refused "
                             "(451 once the disk is gone)\n" % (round_number, cut, delay, len(load.acked),
                                                                acked_at_cut, load.refused))
            self.assertGreater(len(load.acked), 0, "no message acknowledged before the cut: nothing tested")
            self.fs.reboot()

        # The last restart, then more mail on the same spool, then a clean stop and a restart.
        self.start_server(THREADS[-1])
        after_restart(ROUNDS)
        with self.server.connect() as c:
            c.cmd("EHLO after.example")
            reply = c.transaction(sender="pc-final@example.org", recipients=("rcpt1@example.com",),
                                  body=message_body("pc-final@example.org", 0).encode())
        self.assertEqual(reply.code, 250, reply)
        attempts["pc-final@example.org"] = (("rcpt1@example.com",), 0)
        acked_all[reply.queue_id] = "pc-final@example.org"
        self.assertEqual(self.server.stop(), 0, "clean stop after the power cuts")
        self.assert_no_sanitizer_report()
        self.fs.reboot()  # a clean unmount keeps everything
        self.start_server(THREADS[-1])
        after_restart(ROUNDS + 1)
        self.assertEqual(self.server.stop(), 0)
        self.assert_no_sanitizer_report()
        self.fs.unmount()
        sys.stderr.write("    %d rounds, %d messages acknowledged, %d lost; %.1f s\n" % (
            ROUNDS, len(acked_all), len(lost_total), time.monotonic() - started))
        self.assertEqual(problems, [])


if __name__ == "__main__":
    h.main()
