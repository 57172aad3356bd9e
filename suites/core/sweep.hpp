// The sweep loop: for every problem of a config and every selected backend, check agreement with
// the reference on every input distribution, time the first distribution through Google
// Benchmark with the paired copy roofline, and append one CSV row per (problem, backend,
// distribution, mode) as soon as it is known.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "agreement.hpp"
#include "config.hpp"

namespace nb {

struct SweepOptions {
  std::vector<std::string>
      backends;                 ///< empty: the config's, else every available one but the reference
  std::vector<Method> methods;  ///< empty: all
  int threads = 0;              ///< 0: OpenMP default
  std::string out_csv = "results/sweep.csv";
  bool resume = false;
  std::string dump_dir;            ///< empty: no dump
  double memory_budget_bytes = 0;  ///< 0: half of physical memory
  bool progress = true;
  int shard_index = 0;  ///< run problems i with i % shard_count == shard_index (0-based)
  int shard_count = 1;
};

struct SweepSummary {
  std::size_t rows = 0, pass = 0, fail = 0, skip = 0, resumed = 0;
};

/// Binds impl to fresh output buffers `out`, runs it once and compares every output with ref.
/// An exception from the implementation becomes a FAIL with the message. On success `inst`
/// holds the bound instance (for timing) and `info` its implementation detail.
Agreement run_and_compare(const Problem& p, Implementation& impl, const CaseInputs& in,
                          const ref::Tensors& ref, CaseOutputs& out,
                          std::unique_ptr<Instance>* inst = nullptr, std::string* info = nullptr);

/// Resolves the backend list: every name must be registered (else std::invalid_argument naming
/// the unknown one and the known ones).
std::vector<std::string> resolve_backends(const std::vector<std::string>& requested);

/// Runs the sweep. Throws std::invalid_argument / std::runtime_error before the results file is
/// opened when the options are wrong; errors of one backend on one case become FAIL rows.
SweepSummary run_sweep(const SweepConfig& cfg, const SweepOptions& opt);

}  // namespace nb
