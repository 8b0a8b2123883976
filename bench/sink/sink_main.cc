// sluice-bench-sink: `sluice-bench sink` as an executable of its own (bench/sink/sink.h).
#include "bench/sink/sink.h"

int main(int argc, char** argv) {
  return sluice::bench::run_sink(argc, argv);
}
