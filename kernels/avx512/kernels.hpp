// Entry points of the avx512 backend and its run-time options. Each entry runs one pass of one
// method on the buffers of nb::KernelArgs (shapes and nullptr rules in suites/core/registry.hpp)
// with omp_get_max_threads() threads. This header is plain C++ (no intrinsics): register.cpp,
// compiled for the baseline ISA, includes it and calls an entry only after checking the CPU.
#pragma once

#include <cstdint>

#include "problem.hpp"
#include "registry.hpp"

namespace nb::avx512 {

/// Run-time switches, read once from the environment, so that the contribution of each technique
/// can be measured (issue 3: "require these, measure each"):
///   NB_AVX512_STREAMING = auto (default) | always | never
///       non-temporal stores for y/dx: auto uses them when the tensors of the pass (x, y, and dy,
///       dx for the backward) exceed streaming_cache_bytes()
///   NB_AVX512_SPLIT     = auto (default) | always | never
///       BatchNorm NCHW training forward and backward: every channel split between the threads
///       (split_channels)
///   NB_AVX512_PREFETCH  = 1 (default) | 0
///       software prefetch of the next reduction unit while the current one is processed, when
///       the tensors come from DRAM (prefetch_next_unit), and of the NHWC rows ahead (rows_ahead)
///   NB_AVX512_BF16      = auto (default) | emulate
///       emulate: narrow fp32 -> bf16 with integer round-to-nearest-even even where the CPU has
///       VCVTNEPS2BF16 (both round the same way except for fp32 subnormals)
/// An unknown value is treated as the default.
struct Options {
  enum class Switch { automatic, always, never };
  Switch streaming = Switch::automatic;
  Switch split = Switch::automatic;
  bool prefetch = true;
  bool emulate_bf16 = false;
};
const Options& options();

/// The most last-level cache one core can count on: 4 MiB, the LLC per core of current server
/// CPUs (AMD Zen 4: 32 MiB per 8-core CCD; Intel Granite Rapids: 504 MB for 128 cores). A
/// virtual machine reports the whole LLC as its own (480 MiB on the 2-vCPU Granite Rapids hosts)
/// though the other tenants' cores share it: there, outputs of 128-256 MiB were written with
/// ordinary stores and 16-bit kernels fell to 0.35-0.67 of the non-temporal copy, against
/// 0.48-1.09 with streaming stores (cpu_roofline bf16, measured back to back).
inline constexpr std::uint64_t kLlcPerCoreCap = std::uint64_t{4} << 20;

/// min(LLC, kLlcPerCoreCap x hardware threads): the cache the streaming decision assumes.
std::uint64_t streaming_cache_bytes();

/// Work below this many elements runs on one thread (a parallel region costs microseconds).
inline constexpr std::int64_t kParallelMinElements = 1 << 15;

/// Whether y/dx of a pass whose tensors total footprint_bytes (bytes read + written) are written
/// with streaming stores: when they exceed streaming_cache_bytes(), so the output would be
/// evicted before it is read again. NB_AVX512_STREAMING=always|never overrides.
bool use_streaming(std::uint64_t footprint_bytes);
/// Whether the NCHW kernels that give each thread whole reduction units (BatchNorm channels,
/// GroupNorm/InstanceNorm (n, g) units) software-pipeline them, or take one unit at a time.
/// Pipelined, y/dx of unit u is written one chunk (kPipelineChunk, simd.hpp) at a time, each chunk
/// followed by the reduction of the same chunk of unit u+1, which was prefetched into L2 while the
/// chunk was written: the DRAM reads of u+1 overlap the streaming writes of u. One unit at a
/// time, a unit's reduction is followed by its write pass, unit u+1 prefetched in step with both.
/// The pipeline runs exactly when y/dx are streamed (use_streaming: the tensors exceed the
/// cache); on a cached tensor there are no DRAM reads to hide and its per-chunk work only costs.
/// Measured on the Intel hosts (hot, interleaved, unit at a time vs pipelined): BatchNorm
/// n2c251h7w7 f32 fwd_train, 1 thread, 18 vs 20 us; InstanceNorm n2c251h7w7 f32 fwd_train,
/// 2 threads, 26 vs 32 us; GroupNorm n4c64h16w16g32 f32 fwd_train 7.1 vs 7.7 us; backward, with
/// neither prefetching (prefetch_next_unit): BatchNorm n2c251h7w7 f32 (1 thread) 11.8 vs 14.7 us,
/// n8c512h7w7 39-40 vs 45-46 us; InstanceNorm n2c251h7w7 21 vs 23.5 us; GroupNorm
/// n2c128h28w28g32 f32 and bf16 the same.
inline bool pipeline_units(bool streaming) { return streaming; }

/// Whether the next reduction unit (unit_bytes of x, plus dy for the backward) is prefetched
/// while the current one is processed: only when the tensors of the pass (footprint_bytes, as
/// for use_streaming) exceed streaming_cache_bytes(), so the next unit comes from DRAM, and two
/// units per thread fit in the thread's share of the last-level cache; never with
/// NB_AVX512_PREFETCH=0. On a tensor that fits the cache the prefetch instructions only cost:
/// measured on the Intel hosts (hot, 2 threads, interleaved runs, with vs without): LayerNorm
/// t1024d768 f32 fwd_train 123 vs 100 us, bf16 bwd 121 vs 114 us; GroupNorm n2c128h28w28g32
/// f32 NCHW fwd_train 17.5 vs 12.6 us, bwd 25 vs 18 us; BatchNorm n8c512h7w7 f32 NCHW
/// fwd_train 47 vs 41 us, bwd 47 vs 43 us.
bool prefetch_next_unit(std::uint64_t footprint_bytes, std::uint64_t unit_bytes, int threads);

/// Whether BatchNorm's NCHW training forward and backward split every channel between the
/// threads instead of giving each thread whole channels (then only the C mod threads leftovers
/// are split): when a channel's x (forward) or x and dy (backward), unit_bytes, are at least half
/// the L2. Both run the chunk pipeline (write channel c chunk by chunk, each chunk followed by the
/// reduction of the same chunk of channel c+1, prefetched meanwhile), which keeps about one unit
/// per thread in L2; a unit of half the L2 or more and the data around it did not stay, and the
/// write pass re-read the slice from the last-level cache, which serves one core at about
/// 20-23 GB/s on the Intel hosts against 144 GB/s from L2 (measured). Split, each thread's part
/// stays in L2, at the cost of one barrier per channel. Measured there (2 threads,
/// n64c256h64w64, interleaved runs, fraction of the paired non-temporal copy): forward f32
/// (1 MiB) 0.72-0.77 split vs 0.67-0.68 whole, bf16 (512 KiB) 0.67 split vs 0.72-0.73 whole;
/// backward f32 (2 MiB) 0.58 vs 0.53-0.54, bf16 (1 MiB) 0.62-0.64 vs 0.54-0.56. Needs
/// channels >= threads > 1.
bool split_channels(std::uint64_t unit_bytes, int64_t channels, int threads);

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
