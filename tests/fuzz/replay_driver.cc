// Runs a libFuzzer target without libFuzzer: feeds it deterministic pseudo-random inputs built
// from a small alphabet of protocol-significant bytes, so ordinary builds (and the sanitizer
// build) exercise every fuzz target on every `make test`.
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 10000;
  static constexpr char kAlphabet[] =
      "\r\n.\r\n \t:<>@=\x80\xff\x00"
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::mt19937_64 rng(0x5107CE);
  std::string input;
  for (long i = 0; i < iterations; ++i) {
    const size_t length = rng() % (i % 100 == 0 ? 8192 : 600);
    input.resize(length);
    const bool raw = (i % 3) == 0;
    for (auto& c : input) {
      c = raw ? static_cast<char>(rng()) : kAlphabet[rng() % (sizeof(kAlphabet) - 1)];
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  }
  return 0;
}
