#pragma once
// `sluice-bench relay` and `sluice-bench compare`: a matrix of cells (sizes x recipients x
// sessions x messages per connection), each run through a list of relays under test built from
// factories (relay: Sluice; compare: the limit, Sluice and the peer, so that every ratio comes
// from one run on one box), a table on stdout and the figures as JSON.
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/relay/cell.h"
#include "bench/relay/plot.h"
#include "bench/relay/relay_under_test.h"

namespace sluice::bench {

struct MatrixOptions {
  std::string sluice_binary;  // empty: beside this executable
  std::vector<uint64_t> sizes = {1024, 100 * 1024};
  std::vector<uint32_t> rcpts = {1, 10};
  std::vector<uint32_t> sessions = {50};
  std::vector<uint32_t> messages_per_connection = {1, 100};
  uint64_t messages = 1000;  // per cell
  CellOptions cell;
  std::string json_path;
  std::string peer = "postfix";  // compare: "postfix" or "none"
  std::string plot_path;         // compare and relay: --plot FILE.svg
};

struct RelayFactory {
  std::string name;
  std::function<std::unique_ptr<RelayUnderTest>()> make;
};

// One cell's spec and its result through each relay, in the order of the factories.
struct MatrixCell {
  CellSpec spec;
  std::vector<CellResult> results;
  const CellResult* find(std::string_view relay) const;
};

std::vector<CellSpec> matrix_specs(const MatrixOptions& options);
// Ends the matrix after the current cell (SIGINT). Async-signal-safe.
void request_matrix_stop();
std::vector<MatrixCell> run_matrix(const MatrixOptions& options, const std::vector<RelayFactory>& relays);

std::string matrix_table(const std::vector<MatrixCell>& cells, bool with_ratios);
std::string matrix_json(std::string_view command, const MatrixOptions& options, const std::vector<MatrixCell>& cells);
// The --plot picture's input: one PlotCell per matrix cell, one series per relay.
std::vector<PlotCell> plot_cells(const std::vector<MatrixCell>& cells);
bool matrix_clean(const std::vector<MatrixCell>& cells);  // every cell completed, nothing lost

int run_relay_command(int argc, char** argv);    // argv[0] is "relay"
int run_compare_command(int argc, char** argv);  // argv[0] is "compare"

}  // namespace sluice::bench
