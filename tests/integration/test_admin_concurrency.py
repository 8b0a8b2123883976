"""Admin requests from many clients at once: the admin workers post control requests to the
same shards concurrently, and every request must be run and answered. (Each shard's control ring
is single-producer; before Shard::post serialised the workers, two posts at the same instant
could write the same slot, one request was lost and its caller answered 503 after waiting.)"""

import threading

from harness import SluiceTestCase, http_call

CLIENTS = 8
REQUESTS_PER_CLIENT = 600


class AdminConcurrency(SluiceTestCase):
    def test_concurrent_readyz_all_answered(self):
        server = self.start_sluice({"server": {"threads": 2}})
        statuses = []
        lock = threading.Lock()

        def client():
            mine = []
            for _ in range(REQUESTS_PER_CLIENT):
                status, body = http_call(server.admin_port, "/readyz", timeout=30)
                mine.append((status, body))
                if status != 200:
                    break  # one lost request is the failure; no need to wait out more
            with lock:
                statuses.extend(mine)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        self.assertFalse(any(thread.is_alive() for thread in threads), "a client hung")
        bad = [(status, body) for status, body in statuses if status != 200]
        print("\n    %d concurrent /readyz answered, %d not 200" % (len(statuses), len(bad)))
        self.assertEqual(bad, [])
        self.assertEqual(len(statuses), CLIENTS * REQUESTS_PER_CLIENT)


if __name__ == "__main__":
    import harness
    harness.main()
