// SIMT emulation layer: runs CUDA kernels written against kernels/cuda/portable.cuh on the CPU,
// so that the kernels are tested where no GPU exists.
//
// Model. A launch runs its blocks one at a time, in the order of the current Schedule. Every CUDA
// thread of a block is a fiber (Boost.Context fcontext; switches announced to AddressSanitizer);
// the scheduler resumes runnable fibers in the schedule's order, and a fiber runs until it reaches
// a synchronisation point (__syncthreads, a warp-synchronous intrinsic) or returns. Before every
// block, all of its shared memory (static NB_SHARED arrays and the dynamic allocation) is filled
// with bytes 0xFF, a NaN for fp32, so reading shared memory no thread wrote shows up as NaN.
//
// Checked, each as an nbemu::Error naming the kernel, the block and the thread:
//  - __syncthreads: threads waiting at barriers of different call sites (a barrier inside a
//    divergent branch); a thread that exits while others wait at a barrier, or a barrier reached
//    after some threads exited (a barrier some threads never reach);
//  - __shfl_sync, __shfl_xor_sync, __shfl_down_sync, __ballot_sync, __syncwarp: the calling
//    lane not in the mask, a mask naming a lane that does not exist or has exited, lanes of one
//    exchange with different masks or different intrinsics, a shuffle reading a lane outside the
//    mask;
//  - deadlock (no thread can run, some are still waiting), with where each thread waits;
//  - a 128-bit load or store that is not 16-byte aligned (nb_cuda::load_pack / store_pack);
//  - shared memory beyond 227 KiB per block, more than 1024 threads per block.
// Not checked (see kernels/cuda/README.md): races between blocks, non-atomic read-modify-write of
// shared memory by several threads between two barriers, missing memory fences, out-of-bounds
// global accesses (AddressSanitizer catches those in the sanitizer build).
//
// The emulator is single-threaded: one launch at a time per process (a concurrent launch from
// another OS thread throws Error).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace nbemu {

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

/// An error found while emulating a kernel (also kernel exceptions, re-thrown with context).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Order { forward, reverse, random };
/// Order in which blocks are run and, within a block, runnable threads are resumed.
struct Schedule {
  Order order = Order::forward;
  std::uint64_t seed = 1;
};
void set_schedule(Schedule s);
Schedule schedule();

/// Per-thread and per-block state the kernel sees (threadIdx, blockIdx, blockDim, gridDim).
struct ThreadView {
  uint3 thread_idx;
};
struct BlockView {
  uint3 block_idx;
  dim3 block_dim, grid_dim;
};
// Process-wide (not thread_local: cheaper, and GCC's TLS wrappers across translation units
// misbehaved under the sanitizers); launch() refuses a second launch while one is running.
inline ThreadView* g_thread = nullptr;
inline BlockView* g_block = nullptr;

/// Runs body once per CUDA thread of every block of grid x block. Throws Error on a violation.
/// dynamic_shared_bytes: the size of the NB_DYNAMIC_SHARED allocation.
void launch(const char* kernel_name, dim3 grid, dim3 block, std::size_t dynamic_shared_bytes,
            const std::function<void()>& body);

/// Number of kernel launches and blocks run since program start (tests check coverage).
std::uint64_t launches_run();

void syncthreads(const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
enum class ShuffleKind { idx, xor_, down, up };
std::uint64_t shuffle(ShuffleKind kind, unsigned mask, std::uint64_t bits, int param, int width,
                      const char* file, int line);
unsigned ballot(unsigned mask, bool predicate, const char* file, int line);

/// Shared memory of the running block: a static array identified by its site (the address of a
/// static object unique to the declaration), and the dynamic allocation.
void* shared_static(const void* site, std::size_t bytes);
void* shared_dynamic();

/// Throws Error naming the current kernel, block and thread; used by checks in portable code.
[[noreturn]] void fail(const std::string& what);

template <class T>
T shuffle_value(ShuffleKind kind, unsigned mask, T v, int param, int width, const char* file,
                int line) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shuffle(kind, mask, bits, param, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace nbemu
