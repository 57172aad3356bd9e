// Self-tests of the SIMT emulator (kernels/cuda/emu): it must run correct kernels correctly in
// every scheduling order, and expose the classic bugs: a missing __syncthreads, a read of shared
// memory nobody wrote, a barrier in divergent code or one some threads never reach, a
// warp-synchronous reduction without __syncwarp, a bad shuffle mask, a misaligned 128-bit load.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "common.cuh"

namespace {

using nb_cuda_emu::launch_kernel;
using nbemu::Order;

constexpr Order kOrders[] = {Order::forward, Order::reverse, Order::random};

// ------------------------------------------------------------------ kernels with planted bugs

__global__ void neighbour_sum(const float* in, float* out, bool sync) {
  NB_SHARED(float, s, 64);
  s[threadIdx.x] = in[threadIdx.x];
  if (sync) __syncthreads();
  out[threadIdx.x] = s[threadIdx.x] + s[(threadIdx.x + 1) % blockDim.x];
}

__global__ void off_by_one_fill(float* out, int n) {
  NB_SHARED(float, s, 64);
  if (static_cast<int>(threadIdx.x) < n - 1) s[threadIdx.x] = 1.f;  // bug: leaves s[n-1] unwritten
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (int i = 0; i < n; ++i) t += s[i];
    *out = t;
  }
}

__global__ void barrier_in_branch(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void barrier_after_return(float* out) {
  if (threadIdx.x >= 40) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void warp_tree_sum(const float* in, float* out, bool sync) {
  NB_SHARED(float, s, 32);
  const unsigned lane = threadIdx.x;
  s[lane] = in[lane];
  if (sync) __syncwarp();
  for (unsigned o = 16; o > 0; o /= 2) {
    if (lane < o) s[lane] += s[lane + o];
    if (sync) __syncwarp();
  }
  if (lane == 0) *out = s[0];
}

__global__ void shuffle_half_mask(float* out) {
  // Bug: the mask names lanes 0..15 but every lane calls.
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1.f, 1);
}

__global__ void shuffle_in_branch(float* out) {
  float v = 1.f;
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);  // half the warp never calls
  out[threadIdx.x] = v;
}

__global__ void shuffle_mixed_masks(float* out) {
  const unsigned lane = threadIdx.x % 32;
  const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffffffffu;  // bug: overlapping masks
  out[threadIdx.x] = __shfl_xor_sync(mask, 1.f, 1);
}

__global__ void shuffle_primitives(const float* in, float* out, unsigned* ballot) {
  const unsigned lane = threadIdx.x % 32;
  const float v = in[threadIdx.x];
  const float sum = nb_cuda_emu::warp_sum(v);
  const float down = __shfl_down_sync(0xffffffffu, v, 3);
  const float bcast = __shfl_sync(0xffffffffu, v, 5);
  // Two disjoint half-warp groups exchanging at once.
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  const float half_xor = __shfl_xor_sync(half, v, 2);
  const unsigned b = __ballot_sync(0xffffffffu, v > 0.f);
  out[4 * threadIdx.x + 0] = sum;
  out[4 * threadIdx.x + 1] = down;
  out[4 * threadIdx.x + 2] = bcast;
  out[4 * threadIdx.x + 3] = half_xor;
  if (lane == 0) ballot[threadIdx.x / 32] = b;
}

__global__ void misaligned_pack(const float* in, float* out) {
  const auto p = nb_cuda_emu::load_pack(in + 1);
  out[threadIdx.x] = p.v[0];
}

__global__ void block_reductions(const float* in, float* sums, nb_cuda_emu::Welford* stats) {
  NB_SHARED(float, scratch, 32);
  NB_SHARED(float, wscratch, 96);
  const float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  const float s = nb_cuda_emu::block_sum(v, scratch);
  nb_cuda_emu::Welford w;
  nb_cuda_emu::welford_add(w, v);
  w = nb_cuda_emu::block_welford(w, wscratch);
  if (threadIdx.x == 0) {
    sums[blockIdx.x] = s;
    stats[blockIdx.x] = w;
  }
}

class Simt : public ::testing::TestWithParam<Order> {
 protected:
  void SetUp() override { nbemu::set_schedule({GetParam(), 12345}); }
};

std::string order_name(const ::testing::TestParamInfo<Order>& info) {
  return info.param == Order::forward   ? "forward"
         : info.param == Order::reverse ? "reverse"
                                        : "random";
}

std::vector<float> iota_floats(std::size_t n) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), 1.f);
  return v;
}

TEST_P(Simt, SyncedNeighbourSumIsCorrect) {
  const auto in = iota_floats(64);
  std::vector<float> out(64);
  launch_kernel("neighbour_sum", neighbour_sum, dim3(1), dim3(64), 0, nullptr, in.data(),
                out.data(), true);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(out[i], in[i] + in[(i + 1) % 64]) << i;
}

TEST_P(Simt, MissingSyncthreadsShowsNaN) {
  const auto in = iota_floats(64);
  std::vector<float> out(64);
  launch_kernel("neighbour_sum", neighbour_sum, dim3(1), dim3(64), 0, nullptr, in.data(),
                out.data(), false);
  int nans = 0;
  for (float v : out) nans += std::isnan(v);
  EXPECT_GT(nans, 0) << "a read of a neighbour's shared value before the barrier went unnoticed";
}

TEST_P(Simt, UnwrittenSharedMemoryIsNaN) {
  float out = 0.f;
  launch_kernel("off_by_one_fill", off_by_one_fill, dim3(3), dim3(64), 0, nullptr, &out, 64);
  EXPECT_TRUE(std::isnan(out));
}

TEST_P(Simt, BarrierInDivergentBranchIsReported) {
  std::vector<float> out(64);
  try {
    launch_kernel("barrier_in_branch", barrier_in_branch, dim3(2), dim3(64), 0, nullptr,
                  out.data());
    FAIL() << "no error";
  } catch (const nbemu::Error& e) {
    EXPECT_NE(std::string(e.what()).find("different barriers"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("kernel barrier_in_branch: block ("), std::string::npos)
        << e.what();
  }
}

TEST_P(Simt, BarrierSomeThreadsNeverReachIsReported) {
  std::vector<float> out(64);
  try {
    launch_kernel("barrier_after_return", barrier_after_return, dim3(1), dim3(64), 0, nullptr,
                  out.data());
    FAIL() << "no error";
  } catch (const nbemu::Error& e) {
    EXPECT_NE(std::string(e.what()).find("never reach"), std::string::npos) << e.what();
  }
}

TEST_P(Simt, WarpTreeWithSyncwarpIsCorrect) {
  const auto in = iota_floats(32);
  float out = 0.f;
  launch_kernel("warp_tree_sum", warp_tree_sum, dim3(1), dim3(32), 0, nullptr, in.data(), &out,
                true);
  EXPECT_EQ(out, 528.f);
}

TEST(SimtOrder, WarpTreeWithoutSyncwarpIsWrong) {
  // Lanes run until their next synchronisation point: without __syncwarp lane 0 reads partial
  // sums of lanes that have not run yet (forward and random orders; the reverse order happens to
  // run every producer before its consumer).
  const auto in = iota_floats(32);
  for (Order order : {Order::forward, Order::random}) {
    nbemu::set_schedule({order, 7});
    float out = 0.f;
    launch_kernel("warp_tree_sum", warp_tree_sum, dim3(1), dim3(32), 0, nullptr, in.data(), &out,
                  false);
    EXPECT_NE(out, 528.f) << "order " << static_cast<int>(order);
  }
}

TEST_P(Simt, ShuffleMaskWithoutCallerIsReported) {
  std::vector<float> out(32);
  try {
    launch_kernel("shuffle_half_mask", shuffle_half_mask, dim3(1), dim3(32), 0, nullptr,
                  out.data());
    FAIL() << "no error";
  } catch (const nbemu::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not in mask"), std::string::npos) << e.what();
  }
}

TEST_P(Simt, ShuffleInDivergentBranchIsReported) {
  std::vector<float> out(64);
  try {
    launch_kernel("shuffle_in_branch", shuffle_in_branch, dim3(1), dim3(64), 0, nullptr,
                  out.data());
    FAIL() << "no error";
  } catch (const nbemu::Error& e) {
    // The lanes outside the branch exit (reported on exit) or are named as exited on arrival.
    EXPECT_NE(std::string(e.what()).find("exited"), std::string::npos) << e.what();
  }
}

TEST_P(Simt, ShuffleMismatchedMasksAreReported) {
  std::vector<float> out(32);
  try {
    launch_kernel("shuffle_mixed_masks", shuffle_mixed_masks, dim3(1), dim3(32), 0, nullptr,
                  out.data());
    FAIL() << "no error";
  } catch (const nbemu::Error& e) {
    EXPECT_NE(std::string(e.what()).find("mask"), std::string::npos) << e.what();
  }
}

TEST_P(Simt, ShufflePrimitivesAreCorrect) {
  std::vector<float> in(64);
  for (int i = 0; i < 64; ++i) in[i] = (i % 3 == 0) ? -1.f - i : 1.f + i;
  std::vector<float> out(4 * 64);
  std::vector<unsigned> ballot(2);
  launch_kernel("shuffle_primitives", shuffle_primitives, dim3(1), dim3(64), 0, nullptr, in.data(),
                out.data(), ballot.data());
  for (int w = 0; w < 2; ++w) {
    float sum = 0.f;
    unsigned b = 0;
    for (int l = 0; l < 32; ++l) {
      sum += in[32 * w + l];
      if (in[32 * w + l] > 0.f) b |= 1u << l;
    }
    EXPECT_EQ(ballot[w], b);
    for (int l = 0; l < 32; ++l) {
      const int t = 32 * w + l;
      EXPECT_EQ(out[4 * t + 0], sum) << t;
      EXPECT_EQ(out[4 * t + 1], l + 3 < 32 ? in[t + 3] : in[t]) << t;
      EXPECT_EQ(out[4 * t + 2], in[32 * w + 5]) << t;
      EXPECT_EQ(out[4 * t + 3], in[32 * w + (l ^ 2)]) << t;
    }
  }
}

TEST_P(Simt, MisalignedPackLoadIsReported) {
  alignas(16) float in[8] = {};
  float out[32];
  try {
    launch_kernel("misaligned_pack", misaligned_pack, dim3(1), dim3(32), 0, nullptr, in, out);
    FAIL() << "no error";
  } catch (const nbemu::Error& e) {
    EXPECT_NE(std::string(e.what()).find("misaligned"), std::string::npos) << e.what();
  }
}

TEST_P(Simt, BlockReductionsAreExactAndDeterministic) {
  const int threads = 96, blocks = 3;
  std::vector<float> in(threads * blocks);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = 1e4f + static_cast<float>(i % 7);
  std::vector<float> sums(blocks);
  std::vector<nb_cuda_emu::Welford> stats(blocks);
  launch_kernel("block_reductions", block_reductions, dim3(blocks), dim3(threads), 0, nullptr,
                in.data(), sums.data(), stats.data());
  for (int b = 0; b < blocks; ++b) {
    double mean = 0, m2 = 0;
    for (int i = 0; i < threads; ++i) mean += in[b * threads + i];
    mean /= threads;
    for (int i = 0; i < threads; ++i)
      m2 += (in[b * threads + i] - mean) * (in[b * threads + i] - mean);
    EXPECT_NEAR(sums[b], mean * threads, 1.0);
    EXPECT_EQ(stats[b].count, threads);
    EXPECT_NEAR(stats[b].mean, mean, 1e-3);
    EXPECT_NEAR(stats[b].m2, m2, 1e-3 * m2);
  }
}

TEST(SimtLaunch, InvalidConfigurationsAreRejected) {
  float out = 0.f;
  EXPECT_THROW(
      launch_kernel("off_by_one_fill", off_by_one_fill, dim3(1), dim3(2048), 0, nullptr, &out, 4),
      nbemu::Error);
  EXPECT_THROW(launch_kernel("off_by_one_fill", off_by_one_fill, dim3(1), dim3(32), 300000, nullptr,
                             &out, 4),
               nbemu::Error);
}

INSTANTIATE_TEST_SUITE_P(Orders, Simt, ::testing::ValuesIn(kOrders), order_name);

}  // namespace
