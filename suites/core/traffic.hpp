// The traffic model of CONVENTIONS section 3: the least number of bytes any algorithm must move
// between DRAM and the core for a problem on this machine. Effective bandwidth = bytes / time.
#pragma once

#include <cstdint>
#include <string>

#include "problem.hpp"

namespace nb {

struct Traffic {
  std::uint64_t bytes = 0;       ///< total bytes read + written (tensor traffic + parameters)
  std::uint64_t unit_bytes = 0;  ///< bytes of one reduction unit (x, plus dy for bwd)
  bool unit_fits = false;        ///< unit_bytes <= llc_bytes / (2 * threads): x read once
  int x_reads = 1;               ///< times x (and dy) must be read: 1 if the unit fits, else 2
  std::string model;             ///< e.g. "fwd 2x+params", "bwd 5x+params", for the CSV
};

/// Elements of one reduction unit (the data whose statistics must be complete before its first
/// output can be written): N*H*W (batchnorm NCHW), N*C*H*W (batchnorm NHWC: every row holds every
/// channel), C*H*W (layernorm/rmsnorm row), (C/G)*H*W (groupnorm NCHW), C*H*W (groupnorm NHWC,
/// a sample), H*W (instancenorm NCHW), C*H*W (instancenorm NHWC, a sample).
std::int64_t reduction_unit_elements(const Problem& p);

/// Bytes moved by p with `threads` threads sharing a last-level cache of llc_bytes.
/// Forward: 2*numel*e if the unit fits else 3*numel*e; backward 3 or 5 *numel*e; BatchNorm
/// fwd_infer always 2*numel*e. Plus gamma/beta, saved and running statistics, dgamma/dbeta.
Traffic traffic(const Problem& p, int threads, std::uint64_t llc_bytes);

}  // namespace nb
