// The segment preallocator reports its failures with their errno, rate-limited (issue 6,
// section 3): an operator who sees 451s can tell ENOSPC from EMFILE from EACCES.
#include "spool/preallocator.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "spool/spool.h"

namespace sluice::spool {
namespace {

struct Lines {
  std::mutex mutex;
  std::vector<std::string> lines;
  BackgroundLog sink() {
    return [this](std::string_view fields) {
      std::lock_guard lock(mutex);
      lines.emplace_back(fields);
    };
  }
  std::vector<std::string> snapshot() {
    std::lock_guard lock(mutex);
    return lines;
  }
};

TEST(PreallocatorTest, FailureIsLoggedWithErrnoOncePerInterval) {
  Lines log;
  {
    // The shard directory does not exist: every attempt fails with ENOENT.
    SegmentPreallocator preallocator("/nonexistent-sluice-test-dir/shard-0", 0, 1, kMinSegmentBytes, 1, -1, log.sink());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (preallocator.failures() < 3 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_GE(preallocator.failures(), 3u);
    EXPECT_EQ(preallocator.ready(), 0u);
  }
  const std::vector<std::string> lines = log.snapshot();
  ASSERT_EQ(lines.size(), 1u) << "retries within the interval are counted, not logged";
  EXPECT_NE(lines[0].find("event=spool_error"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("op=preallocate"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("errno=ENOENT"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("No such file or directory"), std::string::npos) << lines[0];
}

TEST(PreallocatorTest, IdFloorFailureIsLoggedWithErrno) {
  char dir[] = "/tmp/sluice-prealloc-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const int read_only = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // the floor cannot be written
  ASSERT_GE(read_only, 0);
  Lines log;
  {
    SegmentPreallocator preallocator(dir, 0, 1, kMinSegmentBytes, 1, read_only, log.sink());
    preallocator.note_id_ms(12345);
  }  // persisted (or tried) at the latest when stopping; the fd is closed by it
  bool found = false;
  for (const std::string& line : log.snapshot()) {
    if (line.find("op=persist_id_floor") != std::string::npos) {
      found = true;
      EXPECT_NE(line.find("errno=EBADF"), std::string::npos) << line;
    }
  }
  EXPECT_TRUE(found);
  std::system((std::string("rm -rf ") + dir).c_str());
}

}  // namespace
}  // namespace sluice::spool
