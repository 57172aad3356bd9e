// Entry points of the avx512 backend and its run-time options. Each entry runs one pass of one
// method on the buffers of nb::KernelArgs (shapes and nullptr rules in suites/core/registry.hpp)
// with omp_get_max_threads() threads. This header is plain C++ (no intrinsics): register.cpp,
// compiled for the baseline ISA, includes it and calls an entry only after checking the CPU.
#pragma once

#include "problem.hpp"
#include "registry.hpp"

namespace nb::avx512 {

/// Run-time switches, read once from the environment, so that the contribution of each technique
/// can be measured (issue 3: "require these, measure each"):
///   NB_AVX512_STREAMING = auto (default) | always | never
///       non-temporal stores for y/dx: auto uses them when the tensors of the pass (x, y, and dy,
///       dx for the backward) exceed the last-level cache
///   NB_AVX512_PREFETCH  = 1 (default) | 0
///       software prefetch of the next reduction unit while the current one is written
///   NB_AVX512_BF16      = auto (default) | emulate
///       emulate: narrow fp32 -> bf16 with integer round-to-nearest-even even where the CPU has
///       VCVTNEPS2BF16 (both round the same way except for fp32 subnormals)
/// An unknown value is treated as the default.
struct Options {
  enum class Streaming { automatic, always, never };
  Streaming streaming = Streaming::automatic;
  bool prefetch = true;
  bool emulate_bf16 = false;
};
const Options& options();

/// Whether y/dx of a pass whose tensors total footprint_bytes are written with streaming stores.
bool use_streaming(std::uint64_t footprint_bytes);
/// Whether the next reduction unit (unit_bytes of x, plus dy for the backward) is prefetched:
/// two units per thread must fit in the thread's share of the last-level cache.
bool prefetch_next_unit(std::uint64_t unit_bytes, int threads);

/// Training-mode backward of any method and layout in fp64, serially (degenerate.cpp): for
/// reduction units of at most 2 elements, where the vector kernels' fp32 coefficients cancel.
void degenerate_backward(const Problem& p, const KernelArgs& args);

/// One namespace per compilation of the kernels: `base` for f32, f16 and bf16 with emulated
/// narrowing (AVX512F/BW/VL/DQ, F16C, FMA), `bf16hw` for bf16 with VCVTNEPS2BF16 (AVX512-BF16 in
/// addition; its entries throw std::logic_error for another dtype).
#define NB_AVX512_DECLARE_ENTRIES                           \
  void batchnorm(const Problem& p, const KernelArgs& args); \
  void layernorm(const Problem& p, const KernelArgs& args); \
  void rmsnorm(const Problem& p, const KernelArgs& args);   \
  void groupnorm(const Problem& p, const KernelArgs& args); \
  void instancenorm(const Problem& p, const KernelArgs& args);
namespace base {
NB_AVX512_DECLARE_ENTRIES
}
namespace bf16hw {
NB_AVX512_DECLARE_ENTRIES
}
#undef NB_AVX512_DECLARE_ENTRIES

}  // namespace nb::avx512
