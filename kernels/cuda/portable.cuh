// Portability layer: one kernel source compiles with nvcc (a real CUDA kernel) and with the host
// C++ compiler (NB_CUDA_EMULATION defined: the kernel runs in the SIMT emulator, emu/simt.hpp).
//
// Kernels use the ordinary CUDA spellings (__global__, threadIdx, __syncthreads, __shfl_xor_sync,
// ...) plus three macros whose CUDA forms need a declaration the emulator cannot give:
//   NB_SHARED(T, name, count)    a static __shared__ T name[count] (name is a T*)
//   NB_DYNAMIC_SHARED(T, name)   the dynamic shared allocation as a T* (16-byte aligned)
//   NB_CHECK_ALIGNED(p, bytes)   emulation: fails unless p is bytes-aligned; nvcc: nothing
//   NB_UNROLL                    #pragma unroll (nvcc only)
// and launch with nb_cuda::launch_kernel (never <<<>>> directly), which checks the launch on the
// GPU and runs the emulator otherwise. No inline PTX in code that the tests cover.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__) && !defined(NB_CUDA_EMULATION)

#include <cuda_runtime.h>

// The namespace of the kernels: the emulated build uses another one, so both can be linked into
// one program.
#define NB_CUDA_NAMESPACE nb_cuda

#include <stdexcept>
#include <string>

#define NB_DEVICE __device__ __forceinline__
#define NB_HOST_DEVICE __host__ __device__ __forceinline__
#define NB_SHARED(T, name, count)                   \
  __shared__ __align__(16) T name##_storage[count]; \
  T* name = name##_storage
#define NB_DYNAMIC_SHARED(T, name)                                    \
  extern __shared__ __align__(16) unsigned char nb_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(nb_dynamic_shared_)
#define NB_CHECK_ALIGNED(p, bytes) ((void)0)
#define NB_UNROLL _Pragma("unroll")

namespace NB_CUDA_NAMESPACE {
using Stream = cudaStream_t;

/// Launches kernel<<<grid, block, shared_bytes, stream>>>(args...) and throws std::runtime_error
/// naming the kernel if the launch is rejected. Dynamic shared memory above 40 KiB is opted in.
template <class... Params, class... Args>
void launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                   std::size_t shared_bytes, Stream stream, Args&&... args) {
  // The default limit (48 KiB) covers static plus dynamic shared memory: opt in with a margin for
  // the kernels' static scratch (a 48 KiB row plus 128 bytes of scratch failed on an H100).
  if (shared_bytes > 40 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(shared_bytes));
    if (e != cudaSuccess)
      throw std::runtime_error(std::string("opting ") + name + " in to " +
                               std::to_string(shared_bytes) + " bytes of shared memory failed: " +
                               cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
  }
  kernel<<<grid, block, shared_bytes, stream>>>(static_cast<Params>(args)...);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("launch of ") + name + " failed: " + cudaGetErrorName(e) +
                             " (" + cudaGetErrorString(e) + ")");
}
}  // namespace NB_CUDA_NAMESPACE

#else  // ---------------------------------------------------------------- SIMT emulation

#include <cmath>
#include <cstring>
#include <string>

#include "emu/simt.hpp"

#ifndef NB_CUDA_EMULATION
#define NB_CUDA_EMULATION 1
#endif
#define NB_CUDA_NAMESPACE nb_cuda_emu

#define __global__ inline  // kernels defined in headers, included by several translation units
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define NB_UNROLL
#define NB_DEVICE inline
#define NB_HOST_DEVICE inline

using nbemu::dim3;
using nbemu::uint3;
using nbemu::uint4;

#define threadIdx (::nbemu::g_thread->thread_idx)
#define blockIdx (::nbemu::g_block->block_idx)
#define blockDim (::nbemu::g_block->block_dim)
#define gridDim (::nbemu::g_block->grid_dim)
#define warpSize 32

#define NB_SHARED(T, name, count)     \
  static char name##_shared_site = 0; \
  T* name = static_cast<T*>(::nbemu::shared_static(&name##_shared_site, sizeof(T) * (count)))
#define NB_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::nbemu::shared_dynamic())
#define NB_CHECK_ALIGNED(p, bytes)                                                              \
  do {                                                                                          \
    if (reinterpret_cast<std::uintptr_t>(p) % (bytes) != 0)                                     \
      ::nbemu::fail("misaligned " #bytes "-byte access to " #p " in " + std::string(__func__)); \
  } while (0)

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  nbemu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  nbemu::syncwarp(mask, file, line);
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return nbemu::shuffle_value(nbemu::ShuffleKind::idx, mask, v, src_lane, width, file, line);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return nbemu::shuffle_value(nbemu::ShuffleKind::xor_, mask, v, lane_mask, width, file, line);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return nbemu::shuffle_value(nbemu::ShuffleKind::down, mask, v, static_cast<int>(delta), width,
                              file, line);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return nbemu::shuffle_value(nbemu::ShuffleKind::up, mask, v, static_cast<int>(delta), width, file,
                              line);
}
inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return nbemu::ballot(mask, predicate != 0, file, line);
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}

namespace NB_CUDA_NAMESPACE {
using Stream = void*;

/// Emulation: runs kernel(args...) for every thread of grid x block in the SIMT emulator.
template <class... Params, class... Args>
void launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                   std::size_t shared_bytes, Stream, Args&&... args) {
  nbemu::launch(name, grid, block, shared_bytes, [&] { kernel(static_cast<Params>(args)...); });
}
}  // namespace NB_CUDA_NAMESPACE

#endif
