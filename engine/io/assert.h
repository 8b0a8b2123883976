#pragma once
// Assertions that run (DESIGN.md section 6, issue 6). SLUICE_ASSERT is on in every build: a
// broken invariant of ours is fatal, reported with file:line and the failed expression, then
// abort() so a core dump or the sanitizer's report shows where. SLUICE_DEBUG_ASSERT is for checks
// too costly for the data path (walks over a whole structure); it is on in the sanitizer and
// debug builds (SLUICE_DEBUG_ASSERTS, set by CMake) and compiles to nothing otherwise, though
// its expression is still type-checked.
// Never assert on untrusted input (a client's bytes, a file's contents, a peer's reply): those
// get an SMTP reply or an error value.

namespace sluice::io {

[[noreturn]] void assertion_failed(const char* expression, const char* message, const char* file, int line);

}  // namespace sluice::io

#define SLUICE_ASSERT(condition, ...)                                                 \
  do {                                                                                \
    if (__builtin_expect(!(condition), 0)) {                                          \
      ::sluice::io::assertion_failed(#condition, "" __VA_ARGS__, __FILE__, __LINE__); \
    }                                                                                 \
  } while (0)

#if defined(SLUICE_DEBUG_ASSERTS)
#define SLUICE_DEBUG_ASSERT(condition, ...) SLUICE_ASSERT(condition, __VA_ARGS__)
#else
#define SLUICE_DEBUG_ASSERT(condition, ...) \
  do {                                      \
    if (false) {                            \
      (void)(condition);                    \
    }                                       \
  } while (0)
#endif
