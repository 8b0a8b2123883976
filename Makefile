# The two commands users need: `make run` and `make test`. Both install what is missing first.
BUILD_DIR ?= build
ASAN_DIR ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps test-deps bench-deps configure build build-server build-asan run test test-fast test-asan bench fuzz clean

all: build

deps:
	./deploy/install-deps.sh

test-deps:
	./deploy/install-deps.sh --test

configure: deps
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# `make run` needs the server alone: tests, fuzz drivers and benchmarks are not built for it.
build-server: configure
	cmake --build $(BUILD_DIR) -j $(JOBS) --target sluice

build-asan: deps
	cmake -S . -B $(ASAN_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_SANITIZE=ON $(CMAKE_FLAGS)
	cmake --build $(ASAN_DIR) -j $(JOBS)

run: build-server
	./$(BUILD_DIR)/sluice serve

# Every test in the Release build, then the same suite under ASan+UBSan.
test: test-deps
	$(MAKE) test-fast
	$(MAKE) test-asan

test-fast: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

test-asan: build-asan
	cd $(ASAN_DIR) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j $(JOBS)

bench-deps:
	./deploy/install-deps.sh --bench

bench: bench-deps build
	./$(BUILD_DIR)/sluice-microbench --benchmark_min_time=0.5
	# End to end at a small size: send -> Sluice -> the sink (spool under /var/tmp, not tmpfs).
	./$(BUILD_DIR)/sluice-bench relay --sizes 1k --rcpts 1 --sessions 20 --messages-per-connection 0 \
	  --messages 2000 --json $(BUILD_DIR)/bench-relay.json

fuzz: deps
	cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_FUZZ=ON \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DSLUICE_SANITIZE=ON
	cmake --build build-fuzz -j $(JOBS)

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) build-fuzz
