// Device building blocks shared by every kernel of the `cuda` backend: the 16-bit storage types
// and their fp32 conversions, 128-bit packs with an aligned-span walk (vector body, scalar head
// and tail), warp and block sums, and the Welford/Chan merge of (count, mean, M2) statistics.
// Everything accumulates in fp32 (CONVENTIONS section 2).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "portable.cuh"

#if defined(__CUDACC__) && !defined(NB_CUDA_EMULATION)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
#include "suites/core/dtype.hpp"
#endif

namespace NB_CUDA_NAMESPACE {

/// Storage types of the 16-bit data (bit patterns; arithmetic is always in fp32).
struct bf16_t {
  std::uint16_t bits;
};
struct f16_t {
  std::uint16_t bits;
};

NB_DEVICE float to_float(float v) { return v; }
NB_DEVICE float to_float(bf16_t v) { return __uint_as_float(static_cast<unsigned>(v.bits) << 16); }
#if defined(__CUDACC__) && !defined(NB_CUDA_EMULATION)
NB_DEVICE float to_float(f16_t v) { return __half2float(__ushort_as_half(v.bits)); }
#else
inline float to_float(f16_t v) { return nb::f16_to_float(v.bits); }
#endif

/// fp32 -> storage type, round to nearest even (as the reference and PyTorch do).
template <class T>
NB_DEVICE T from_float(float v);
template <>
NB_DEVICE float from_float<float>(float v) {
  return v;
}
#if defined(__CUDACC__) && !defined(NB_CUDA_EMULATION)
template <>
NB_DEVICE bf16_t from_float<bf16_t>(float v) {
  return bf16_t{__bfloat16_as_ushort(__float2bfloat16_rn(v))};
}
template <>
NB_DEVICE f16_t from_float<f16_t>(float v) {
  return f16_t{__half_as_ushort(__float2half_rn(v))};
}
#else
template <>
inline bf16_t from_float<bf16_t>(float v) {
  return bf16_t{nb::float_to_bf16(v)};
}
template <>
inline f16_t from_float<f16_t>(float v) {
  return f16_t{nb::float_to_f16(v)};
}
#endif

/// 16 bytes of T: the unit of a 128-bit load or store.
template <class T>
struct alignas(16) Pack {
  static constexpr int size = 16 / static_cast<int>(sizeof(T));
  T v[size];
};

template <class T>
NB_DEVICE Pack<T> load_pack(const T* p) {
  NB_CHECK_ALIGNED(p, 16);
  union {
    uint4 raw;
    Pack<T> pack;
  } u;
  u.raw = *reinterpret_cast<const uint4*>(p);
  return u.pack;
}
template <class T>
NB_DEVICE void store_pack(T* p, const Pack<T>& v) {
  NB_CHECK_ALIGNED(p, 16);
  union {
    uint4 raw;
    Pack<T> pack;
  } u;
  u.pack = v;
  *reinterpret_cast<uint4*>(p) = u.raw;
}

/// Walks elements [0, n) of a span whose element 0 lies at address `base`, split among nthreads
/// threads (this one is `tid`): elements before the first 16-byte boundary and after the last
/// whole pack one by one through scalar(i), the packs in between through pack(i) (i = index of the
/// pack's first element, 16-byte aligned at `base`). With vectorize == false (the tensors of the
/// kernel do not share one alignment) everything goes through scalar(i). Every element is visited
/// exactly once; the split depends only on (base mod 16, n, tid, nthreads).
template <class T, class Scalar, class PackFn>
NB_DEVICE void for_each_aligned(const void* base, std::int64_t n, int tid, int nthreads,
                                bool vectorize, Scalar scalar, PackFn pack) {
  constexpr int kPack = Pack<T>::size;
  std::int64_t head = n;
  if (vectorize) {
    const auto mis = static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(base) % 16);
    head = mis ? (16 - mis) / static_cast<std::int64_t>(sizeof(T)) : 0;
    if (head > n) head = n;
  }
  const std::int64_t packs = (n - head) / kPack;
  for (std::int64_t i = tid; i < head; i += nthreads) scalar(i);
  for (std::int64_t p = tid; p < packs; p += nthreads) pack(head + p * kPack);
  for (std::int64_t i = head + packs * kPack + tid; i < n; i += nthreads) scalar(i);
}

/// True when every pointer has the same address modulo 16 (one for_each_aligned split fits all).
NB_HOST_DEVICE bool same_alignment(const void* a, const void* b) {
  return b == nullptr ||
         (reinterpret_cast<std::uintptr_t>(a) - reinterpret_cast<std::uintptr_t>(b)) % 16 == 0;
}

constexpr unsigned kFullMask = 0xffffffffu;

NB_DEVICE float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

/// Sum over the block (blockDim.x a multiple of 32, all threads call it); every thread gets the
/// same value, summed in a fixed order (deterministic). scratch: 32 floats of shared memory,
/// free again when it returns.
NB_DEVICE float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  const int warps = static_cast<int>(blockDim.x) / 32;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

/// Running statistics of a set of values: count, mean and M2 = sum (x - mean)^2.
struct Welford {
  float count = 0.f, mean = 0.f, m2 = 0.f;
};

NB_HOST_DEVICE void welford_add(Welford& w, float x) {
  w.count += 1.f;
  const float d = x - w.mean;
  w.mean += d / w.count;
  w.m2 += d * (x - w.mean);
}

/// Chan et al. merge of two partial statistics (exact in exact arithmetic; no cancellation).
NB_HOST_DEVICE Welford welford_merge(const Welford& a, const Welford& b) {
  const float n = a.count + b.count;
  if (n == 0.f) return a;
  const float d = b.mean - a.mean, fb = b.count / n;
  Welford r;
  r.count = n;
  r.mean = a.mean + d * fb;
  r.m2 = a.m2 + b.m2 + d * d * a.count * fb;
  return r;
}

/// Chan merge of w with lane (lane ^ o) for o = first, first/2, ..., 1: a butterfly over aligned
/// groups of 2*first lanes. Partners merge in lane order, so both compute the same bits and every
/// lane of the group ends with the same result (fixed order: deterministic).
NB_DEVICE Welford butterfly_welford(Welford w, int first) {
  for (int o = first; o > 0; o /= 2) {
    Welford other;
    other.count = __shfl_xor_sync(kFullMask, w.count, o);
    other.mean = __shfl_xor_sync(kFullMask, w.mean, o);
    other.m2 = __shfl_xor_sync(kFullMask, w.m2, o);
    w = (threadIdx.x & static_cast<unsigned>(o)) ? welford_merge(other, w)
                                                 : welford_merge(w, other);
  }
  return w;
}

NB_DEVICE Welford warp_welford(Welford w) { return butterfly_welford(w, 16); }

/// Welford merge over the block (same contract as block_sum); scratch: 96 floats of shared
/// memory (count, mean, m2 of each warp; plain floats, as __shared__ arrays cannot have
/// initialisers), free again when it returns.
NB_DEVICE Welford block_welford(Welford w, float* scratch) {
  w = warp_welford(w);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  if (lane == 0) {
    scratch[warp] = w.count;
    scratch[32 + warp] = w.mean;
    scratch[64 + warp] = w.m2;
  }
  __syncthreads();
  Welford total;
  const int warps = static_cast<int>(blockDim.x) / 32;
  for (int i = 0; i < warps; ++i) {
    Welford part;
    part.count = scratch[i];
    part.mean = scratch[32 + i];
    part.m2 = scratch[64 + i];
    total = welford_merge(total, part);
  }
  __syncthreads();
  return total;
}

/// Teams: `team` consecutive threads that cooperate on one reduction, either a power of two
/// <= 32 (aligned within a warp; every thread of the warp calls, as the shuffles use the full
/// mask) or the whole block (team == blockDim.x, every thread of the block calls). Every member
/// gets the same result, merged in a fixed order. scratch: 96 floats of shared memory.
NB_DEVICE Welford team_welford(Welford w, int team, float* scratch) {
  if (team == static_cast<int>(blockDim.x) && team > 32) return block_welford(w, scratch);
  return butterfly_welford(w, team / 2);
}

/// Sums of a and b over a team (contract of team_welford).
NB_DEVICE void team_sum2(float& a, float& b, int team, float* scratch) {
  if (team == static_cast<int>(blockDim.x) && team > 32) {
    a = block_sum(a, scratch);
    b = block_sum(b, scratch);
    return;
  }
  for (int o = team / 2; o > 0; o /= 2) {
    a += __shfl_xor_sync(kFullMask, a, o);
    b += __shfl_xor_sync(kFullMask, b, o);
  }
}

/// Statistics of n values (n <= 8, e.g. one 128-bit pack) by a local two pass: exact mean of the
/// few values, then sum (v - mean)^2; merged into a running Welford with one division per pack.
NB_DEVICE Welford welford_of(const float* v, int n) {
  float s = 0.f;
  for (int k = 0; k < n; ++k) s += v[k];
  Welford w;
  w.count = static_cast<float>(n);
  w.mean = s / w.count;
  for (int k = 0; k < n; ++k) {
    const float d = v[k] - w.mean;
    w.m2 += d * d;
  }
  return w;
}

NB_HOST_DEVICE std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

/// Smallest power of two >= v, at most 32 (team sizes).
NB_HOST_DEVICE int pow2_at_least(std::int64_t v) {
  int t = 1;
  while (t < v && t < 32) t *= 2;
  return t;
}

/// What a launcher needs to know about the device (the emulator fakes one).
struct DeviceLimits {
  int sm_count = 132;
  std::size_t max_shared_bytes = 227 * 1024;  ///< per block, with opt-in
};

}  // namespace NB_CUDA_NAMESPACE
