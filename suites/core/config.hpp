// Sweep configs (TOML, read with toml++). Format, documented with examples in README.md:
//
//   [sweep]                       # all optional
//   name = "quick"
//   backends = ["reference", "openmp"]   # default: every registered backend
//   repetitions = 5               # Google Benchmark repetitions per case
//   min_time = 0.05               # seconds per repetition
//   modes = ["hot"]               # "hot" and/or "cold"
//   distributions = ["normal", "large_offset"]  # agreement inputs; the first one is timed
//   seed = 1
//
//   [[cases]]                     # a block: the cartesian product of its axes
//   methods = ["batchnorm"]       # required
//   passes = ["fwd_train", "fwd_infer", "bwd"]  # default: all three
//   dtypes = ["f32"]              # default ["f32"]
//   layouts = ["nchw"]            # default ["nchw"]
//   n = [1, 2, 4] | n = { start = 1, stop = 256, mul = 2 } | { start = .., stop = .., add = .. }
//   c = [...]; h = [...]; w = [...]; hw = [...] (square, sets h and w)   # image axes
//   shapes = ["c64h112w112", "n2c251h28w28", "t256d768"]  # explicit shapes (repro SHAPE
//                                 # grammar); a shape without n is crossed with the n axis
//   groups = [32]                 # num_groups, groupnorm only
//   eps = [1e-5]; momentum = 0.1 (batchnorm only); affine = true
// Every axis accepts a scalar, a list or (integers) a range table. Unknown keys, wrong types,
// empty axes and invalid problems are errors naming the file and the key.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "case_data.hpp"
#include "problem.hpp"
#include "timing.hpp"

namespace nb {

struct SweepSettings {
  std::string name = "sweep";
  std::vector<std::string> backends;  ///< empty: all visible backends
  int repetitions = 5;
  double min_time_s = 0.05;
  std::vector<TimingMode> modes = {TimingMode::hot};
  std::vector<Distribution> distributions = {Distribution::normal, Distribution::large_offset};
  std::uint64_t seed = 1;
};

struct SweepConfig {
  std::string source;  ///< file name, or "<default>" for the embedded config
  SweepSettings settings;
  std::vector<Problem> problems;  ///< in config order, duplicates removed
};

/// A config problem; what() is one line: "FILE: KEY: what was expected, what was found".
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Parses TOML text. source names it in errors. Throws ConfigError.
SweepConfig parse_config(const std::string& text, const std::string& source);
/// Reads and parses a file. Throws ConfigError (also when the file cannot be read).
SweepConfig load_config(const std::string& path);

}  // namespace nb
