"""Descriptors: a queue spread over more spool segments than `max_open_segments` recovers and
serves without holding a descriptor per segment (one each made a large queue eat the
descriptors sessions need: accept failed with EMFILE and every message got 451). The start-up
descriptor plan is logged."""

import os

import harness as h
from harness import SluiceTestCase

MESSAGES = 40
BODY_OCTETS = 300_000  # three to a 1 MiB segment: ~14 segments
OPEN_SEGMENTS_MAX = 2
ALWAYS_OPEN = 4  # the current segment, two ready, one being made


def segment_descriptors(pid):
    count = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if os.path.basename(target).startswith("seg-"):
            count += 1
    return count


class SegmentDescriptors(SluiceTestCase):
    def overrides(self):
        return {"server": {"threads": 1, "max_message_size": 600_000, "max_recipients": 10},
                "spool": {"segment_bytes": 1048576, "max_open_segments": OPEN_SEGMENTS_MAX}}

    def test_more_segments_than_the_cap_recover_and_serve(self):
        server = self.start_sluice(self.overrides())
        body = (("x" * 998 + "\r\n") * (BODY_OCTETS // 1000)).encode()
        ids = []
        with server.connect() as client:
            client.cmd("EHLO client.example.org")
            for i in range(MESSAGES):
                reply = client.transaction(body=b"Subject: %d\r\n\r\n" % i + body)
                self.assertReply(reply, 250)
                ids.append(reply.queue_id)
        self.assertLessEqual(segment_descriptors(server.pid), OPEN_SEGMENTS_MAX + ALWAYS_OPEN)
        self.assertEqual(server.stop(), 0)
        segments = [n for n in os.listdir(os.path.join(server.spool_dir, "shard-0")) if n.startswith("seg-")]
        self.assertGreaterEqual(len(segments), 10, "the test needs many more segments than the cap")

        server.start()
        self.assertIn("event=descriptors", server.full_log())
        self.assertLessEqual(segment_descriptors(server.pid), ALWAYS_OPEN, "recovered segments are opened when read")
        self.assertEqual(sorted(server.queue_ids()), sorted(ids))
        for queue_id in ids:  # every body is readable, through a bounded set of descriptors
            message = server.queued_message(queue_id)
            self.assertEqual(message["id"], queue_id)
            self.assertLessEqual(segment_descriptors(server.pid), OPEN_SEGMENTS_MAX + ALWAYS_OPEN)
        with server.connect() as client:
            client.cmd("EHLO client.example.org")
            self.assertReply(client.transaction(), 250)
        self.assertEqual(server.queue_count(), MESSAGES + 1)


if __name__ == "__main__":
    h.main()
