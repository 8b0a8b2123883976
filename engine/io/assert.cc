// The failure path of SLUICE_ASSERT: one write(2) of the whole line to stderr (no allocation, no
// stdio locks: the process may be in any state), then abort().
#include "engine/io/assert.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace sluice::io {

void assertion_failed(const char* expression, const char* message, const char* file, int line) {
  char text[1024];
  const int length = std::snprintf(text, sizeof(text), "%s:%d: assertion failed: %s%s%s\n", file, line, expression,
                                   message[0] != '\0' ? ": " : "", message);
  if (length > 0) {
    const size_t size = static_cast<size_t>(length) < sizeof(text) ? static_cast<size_t>(length) : sizeof(text) - 1;
    [[maybe_unused]] const ssize_t written = ::write(STDERR_FILENO, text, size);
  }
  std::abort();
}

}  // namespace sluice::io
