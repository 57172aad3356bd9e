// Every kernel of the `cuda` backend, run by the SIMT emulator, against the fp64 reference with
// the project's tolerance (run_and_compare): every registered method, pass, dtype and layout, on
// small and awkward shapes (row lengths 1..300, 1000, 1024, 4100; C = 1, 2, 3, 5, 6, 9, 12, 24,
// 251; H*W = 1; N = 1; G = 1 and G = C; tensors off the 16-byte boundary; the large-offset input;
// affine and not), in the forward, reverse and random scheduling orders. BatchNorm, GroupNorm and
// InstanceNorm run on emulated devices of 1, 3 and 64 SMs, which moves shapes between the fused
// and the two-stage paths; ChannelPlanCoverage checks that the shapes used reach every path, team
// size and column plan of channel_norms.cuh.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "channel_norms.cuh"
#include "emu/emulated_backend.hpp"
#include "emu/simt.hpp"
#include "rows.cuh"
#include "suites/core/agreement.hpp"
#include "suites/core/case_data.hpp"
#include "suites/core/sweep.hpp"

namespace nb {
namespace {

using nbemu::Order;
constexpr Order kOrders[] = {Order::forward, Order::reverse, Order::random};
constexpr Pass kPasses[] = {Pass::fwd_train, Pass::fwd_infer, Pass::bwd};

std::string_view order_name(Order o) {
  return o == Order::forward ? "forward" : o == Order::reverse ? "reverse" : "random";
}

Implementation& emulated() {
  static auto impl = nb_cuda_emu::make_emulated_cuda(3);
  return *impl;
}

/// An emulated device with sm_count SMs: the launch plans fill 2 blocks per SM, so 64 SMs split
/// the units of small shapes over blocks (two-stage paths) and 1 SM keeps them whole (fused).
Implementation& emulated_with(int sm_count) {
  static std::map<int, std::shared_ptr<Implementation>> impls;
  auto& impl = impls[sm_count];
  if (!impl) impl = nb_cuda_emu::make_emulated_cuda(sm_count);
  return *impl;
}

/// The agreement policy (suites/core/agreement.hpp) has no allowance for f16 underflow: a dx of
/// a unit of M <= 2 elements is ~ eps * invstd^2 * dy (1e-6 .. 1e-10), which f16 stores as a
/// subnormal or zero. Such a failure is accepted here when dx is the correctly rounded f16 of the
/// reference (within one subnormal step) and every other output passes.
bool f16_underflow_only(const Problem& p, const Agreement& a, const CaseOutputs& out,
                        const ref::Tensors& ref) {
  if (p.dtype != DType::f16 || p.pass != Pass::bwd || p.reduction_size() > 2) return false;
  for (const auto& o : a.outputs)
    if (!o.failure.empty() && o.output != Output::dx) return false;
  for (std::size_t i = 0; i < ref.dx.size(); ++i) {
    const double rounded = f16_to_float(float_to_f16(static_cast<float>(ref.dx[i])));
    const double step = std::max(std::abs(rounded) * 0x1p-10, 0x1p-24);
    if (std::abs(out.dx.get(i) - rounded) > step) return false;
  }
  return true;
}

/// Runs p in the emulator under `order`; returns an empty string when it agrees, else why not.
std::string check(const Problem& p, Distribution dist, std::size_t misalign, Order order,
                  Implementation& impl = emulated()) {
  const std::string repro = to_repro(p);
  nbemu::set_schedule({order, fnv1a(repro)});
  const CaseInputs in = make_inputs(p, dist, fnv1a(repro), misalign);
  const ref::Tensors ref = reference_outputs(p, in);
  CaseOutputs out = make_outputs(p, in, misalign);
  const Agreement a = run_and_compare(p, impl, in, ref, out);
  if (a.status == Status::pass) return {};
  if (f16_underflow_only(p, a, out, ref)) return {};
  return fmt::format("{} dist={} misalign={} order={}: {} (worst {} rel {:.3g} > {:.3g})", repro,
                     to_string(dist), misalign, order_name(order), a.reason, a.worst_output,
                     a.max_rel_err, a.threshold);
}

Problem problem(Method m, Pass pass, DType dt, Layout l, const std::string& shape,
                bool affine = true) {
  Problem p;
  p.method = m;
  p.pass = pass;
  p.dtype = dt;
  p.layout = l;
  p.affine = affine;
  if (m == Method::rmsnorm) p.eps = 1e-6;
  parse_shape(shape, p);
  return p;
}

std::vector<Method> implemented() {
  std::vector<Method> out;
  for (Method m : kAllMethods)
    if (nb_cuda_emu::emulated_implements(m)) out.push_back(m);
  return out;
}

// Row lengths 1..300 for LayerNorm and RMSNorm: each length once, cycling through pass, dtype,
// scheduling order, misalignment and the affine flag so that every combination appears.
TEST(CudaEmulated, RowLengths1To300) {
  int k = 0;
  for (Method m : {Method::layernorm, Method::rmsnorm}) {
    if (!nb_cuda_emu::emulated_implements(m)) continue;
    for (int d = 1; d <= 300; ++d, ++k) {
      const Pass pass = kPasses[k % 3];
      const DType dt = kAllDTypes[(k / 3) % 3];
      const Order order = kOrders[(k / 2) % 3];
      const std::size_t misalign = element_size(dt) * static_cast<std::size_t>(k % 4);
      const Problem p =
          problem(m, pass, dt, Layout::nchw, fmt::format("t{}d{}", 1 + k % 9, d), k % 7 != 3);
      const std::string why = check(p, Distribution::normal, misalign, order);
      EXPECT_EQ(why, "");
    }
  }
}

// The register-resident row kernels (rows_regs_config): every plan they have (warp or block per
// row, packs per thread, forward and backward, 32- and 16-bit types) is reached by these row
// lengths and agrees with the reference; 5 rows, so that a block of 4 warp-rows has a partial
// last block and the backward's warps merge their dgamma/dbeta in shared memory. Lengths whose
// rows are not 16-byte multiples in a dtype take the shared-memory kernels and are checked too.
TEST(CudaEmulated, RowsRegisterPlans) {
  std::set<std::string> seen;
  int k = 0;
  for (Method m : {Method::layernorm, Method::rmsnorm})
    for (Pass pass : {Pass::fwd_train, Pass::bwd})
      for (DType dt : kAllDTypes)
        for (int d : {64, 132, 264, 400, 1000, 2056, 4100, 8192, 16400}) {
          const Problem p = problem(m, pass, dt, Layout::nchw, fmt::format("t5d{}", d), k % 5 != 4);
          const auto c = nb_cuda_emu::rows_regs_config(p, nb_cuda_emu::DeviceLimits{});
          if (c)
            seen.insert(fmt::format("{} {} {} {}", pass == Pass::bwd ? "bwd" : "fwd",
                                    element_size(dt) * 8, c->warp_per_row ? "warp" : "block",
                                    c->packs));
          const Distribution dist = k % 2 ? Distribution::large_offset : Distribution::normal;
          EXPECT_EQ(check(p, dist, 0, kOrders[k % 3]), "");
          ++k;
        }
  const std::set<std::string> want = {
      "fwd 32 warp 1",  "fwd 32 warp 2", "fwd 32 warp 4", "fwd 32 warp 8", "fwd 32 block 4",
      "fwd 32 block 8", "fwd 16 warp 1", "fwd 16 warp 2", "fwd 16 warp 4", "fwd 16 block 2",
      "fwd 16 block 4", "bwd 32 warp 1", "bwd 32 warp 2", "bwd 32 warp 4", "bwd 32 block 4",
      "bwd 16 warp 1",  "bwd 16 warp 2", "bwd 16 block 2"};
  EXPECT_EQ(seen, want);
}

// A misaligned tensor, a permuted gamma (LayerNorm of an NHWC image) and rows too long for the
// registers take the shared-memory kernels; NB_CUDA_ROWS=shared forces them.
TEST(CudaEmulated, RowsRegisterFallbacks) {
  const nb_cuda_emu::DeviceLimits lim;
  Problem p = problem(Method::layernorm, Pass::bwd, DType::f32, Layout::nchw, "t2d8196");
  EXPECT_FALSE(nb_cuda_emu::rows_regs_config(p, lim));  // 2049 packs > 512 threads x 4
  p = problem(Method::layernorm, Pass::fwd_train, DType::f32, Layout::nhwc, "n2c8h2w2");
  EXPECT_FALSE(nb_cuda_emu::rows_regs_config(p, lim));
  p.affine = false;
  EXPECT_TRUE(nb_cuda_emu::rows_regs_config(p, lim));
  p = problem(Method::rmsnorm, Pass::fwd_train, DType::bf16, Layout::nchw, "t2d132");
  EXPECT_FALSE(nb_cuda_emu::rows_regs_config(p, lim));  // 264-byte rows
  p = problem(Method::rmsnorm, Pass::fwd_train, DType::f32, Layout::nchw, "t2d132");
  EXPECT_TRUE(nb_cuda_emu::rows_regs_config(p, lim));
  KernelArgs a;
  alignas(16) float buf[8] = {};
  a.x = buf;
  a.y = buf;
  EXPECT_TRUE(nb_cuda_emu::rows_regs_aligned(a));
  a.y = buf + 1;
  EXPECT_FALSE(nb_cuda_emu::rows_regs_aligned(a));
  ::setenv("NB_CUDA_ROWS", "shared", 1);
  EXPECT_FALSE(nb_cuda_emu::rows_regs_config(p, lim));
  EXPECT_EQ(check(p, Distribution::normal, 0, Order::forward), "");
  ::unsetenv("NB_CUDA_ROWS");
  EXPECT_TRUE(nb_cuda_emu::rows_regs_config(p, lim));
}

// dgamma/dbeta from many partial rows (column_sum_kernel's slices each take several parts): 100
// rows on an emulated device of 64 SMs give 25-100 blocks of partials, for the register kernels
// (aligned) and the shared-memory ones (misaligned by one element).
TEST(CudaEmulated, RowsManyPartials) {
  int k = 0;
  for (Method m : {Method::layernorm, Method::rmsnorm})
    for (DType dt : kAllDTypes)
      for (const char* shape : {"t100d64", "t100d1000"})
        for (std::size_t misalign : {std::size_t{0}, element_size(dt)}) {
          const Problem p = problem(m, Pass::bwd, dt, Layout::nchw, shape);
          EXPECT_EQ(check(p, Distribution::normal, misalign, kOrders[k++ % 3], emulated_with(64)),
                    "");
        }
}

struct ShapeCase {
  Method method;
  std::string shape;
};

std::vector<ShapeCase> awkward_shapes() {
  std::vector<ShapeCase> out;
  for (Method m : implemented()) {
    std::vector<std::string> shapes;
    switch (m) {
      case Method::layernorm:
      case Method::rmsnorm:
        shapes = {"t3d1",    "t5d17", "t2d1000",  "t3d1024",    "t2d1025",
                  "t1d4100", "t9d64", "n2c3h5w7", "n3c251h1w1", "n2c1h9w9"};
        break;
      case Method::batchnorm:
        shapes = {"n1c3h5w7",   "n2c251h3w3", "n3c1h1w1",  "n2c17h1w1",  "n4c16h8w8", "n2c33h19w19",
                  "n300c5h1w1", "n3c12h4w4",  "n2c24h3w3", "n3c2h64w64", "n5c6h1w1"};
        break;
      case Method::groupnorm:
        shapes = {"n2c6h5w3g1",   "n2c6h5w3g6",  "n1c251h3w3g251", "n3c32h7w7g8", "n2c64h1w1g32",
                  "n1c3h17w17g3", "n2c12h9w9g3", "n1c8h40w40g2",   "n3c6h1w1g3",  "n2c10h3w3g1"};
        break;
      case Method::instancenorm:
        shapes = {"n1c3h5w7",   "n2c251h2w2", "n2c4h1w1", "n1c1h9w9",
                  "n2c16h33w3", "n1c7h48w48", "n2c9h4w4", "n3c5h1w1"};
        break;
    }
    for (auto& s : shapes) out.push_back({m, s});
  }
  return out;
}

class CudaEmulatedShapes : public ::testing::TestWithParam<ShapeCase> {};

// Every pass, dtype and layout on one shape; both input distributions; affine and not; all three
// orders (the order rotates with the dtype so that each (pass, layout) sees every order).
TEST_P(CudaEmulatedShapes, AgreesWithReference) {
  const ShapeCase& sc = GetParam();
  int k = 0;
  for (Pass pass : kPasses)
    for (Layout layout : kAllLayouts)
      for (DType dt : kAllDTypes)
        for (Distribution dist : {Distribution::normal, Distribution::large_offset})
          for (bool affine : {true, false}) {
            const Problem p = problem(sc.method, pass, dt, layout, sc.shape, affine);
            if (validate(p)) continue;
            const Order order = kOrders[k++ % 3];
            const std::size_t misalign = dist == Distribution::normal ? 0 : element_size(dt);
            EXPECT_EQ(check(p, dist, misalign, order), "");
          }
}

std::string shape_name(const ::testing::TestParamInfo<ShapeCase>& info) {
  return fmt::format("{}_{}", to_string(info.param.method), info.param.shape);
}

INSTANTIATE_TEST_SUITE_P(Awkward, CudaEmulatedShapes, ::testing::ValuesIn(awkward_shapes()),
                         shape_name);

// BatchNorm, GroupNorm and InstanceNorm shapes run on emulated devices of 1 and 64 SMs.
std::vector<std::pair<Method, std::string>> channel_path_cases() {
  return {{Method::batchnorm, "n3c5h6w6"},      {Method::batchnorm, "n64c3h1w1"},
          {Method::batchnorm, "n2c9h33w33"},    {Method::groupnorm, "n2c12h6w6g4"},
          {Method::groupnorm, "n2c8h20w20g2"},  {Method::groupnorm, "n4c6h1w1g2"},
          {Method::instancenorm, "n2c5h20w20"}, {Method::instancenorm, "n3c12h3w3"}};
}
constexpr int kPathDevices[] = {1, 64};

struct PathCase {
  Problem problem;
  int sm_count;
  Distribution dist;
  std::size_t misalign;
  Order order;
};

/// The cases of ChannelPathsAgree: every shape of channel_path_cases() on both devices, every
/// pass, layout and dtype; affine and not, both distributions, misaligned by 0..3 elements, the
/// three orders, eps 1e-3 and momentum 0.25 instead of the defaults, each in rotation.
std::vector<PathCase> path_cases() {
  std::vector<PathCase> out;
  int k = 0;
  for (int sm : kPathDevices)
    for (const auto& [m, shape] : channel_path_cases()) {
      if (!nb_cuda_emu::emulated_implements(m)) continue;
      for (Pass pass : kPasses)
        for (Layout layout : kAllLayouts)
          for (DType dt : kAllDTypes) {
            ++k;
            Problem p = problem(m, pass, dt, layout, shape, k % 2 == 0);
            if (k % 5 == 0) {  // options other than the defaults
              p.eps = 1e-3;
              if (m == Method::batchnorm) p.momentum = 0.25;
            }
            if (validate(p)) continue;
            out.push_back({p, sm, (k / 2) % 2 ? Distribution::large_offset : Distribution::normal,
                           element_size(dt) * static_cast<std::size_t>((k / 3) % 4),
                           kOrders[k % 3]});
          }
    }
  return out;
}

// The same shapes on a 1-SM device (units kept whole: fused kernels) and a 64-SM device (units
// split over blocks: partials, second stage, apply).
TEST(CudaEmulated, ChannelPathsAgree) {
  for (const PathCase& c : path_cases())
    EXPECT_EQ(check(c.problem, c.dist, c.misalign, c.order, emulated_with(c.sm_count)), "")
        << "on an emulated device of " << c.sm_count << " SMs";
}

// The shapes of the tests above reach every path of channel_norms.cuh: fused and two-stage
// forward and backward (BatchNorm channels, GroupNorm plane by plane, planes), every team size,
// units split inside and at the boundaries of segments, NHWC column plans with packs (aligned and
// with a scalar head), scalar columns, several slot blocks, row splits. Guards the tests against
// a change of the launch heuristics that would leave a path untested.
TEST(CudaEmulated, ChannelPlanCoverage) {
  std::set<std::string> seen;
  auto note = [&](const Problem& p, int sm, std::size_t misalign) {
    nb_cuda_emu::DeviceLimits lim;
    lim.sm_count = sm;
    const auto* x = reinterpret_cast<const void*>(std::uintptr_t{4096} + misalign);
    const nb_cuda_emu::ChannelPlan c = nb_cuda_emu::channel_plan(p, lim, x, true);
    if (c.infer_bn) {
      seen.insert(c.nhwc ? "nhwc_infer" : "nchw_infer");
      return;
    }
    if (c.nhwc) {
      const auto& w = c.col_reduce;
      if (w.packs > 0) seen.insert(w.head > 0 ? "nhwc_packs_with_head" : "nhwc_packs_aligned");
      if (w.packs == 0) seen.insert("nhwc_scalar_columns");
      if (w.splits > 1) seen.insert("nhwc_row_splits");
      if (w.slot_blocks > 1) seen.insert("nhwc_slot_blocks");
      if (w.bx < 32) seen.insert("nhwc_narrow_block");
      if (w.bx * w.by < nb_cuda_emu::kChannelThreads) seen.insert("nhwc_small_block");
      return;
    }
    const bool bwd = p.pass == Pass::bwd;
    std::string path = std::string(bwd ? "bwd_" : "fwd_") + (c.fused ? "fused" : "two_stage");
    if (bwd && c.fused)
      path += c.per_segment_sums ? "_per_plane" : (p.method == Method::batchnorm ? "_bn" : "_unit");
    seen.insert(path);
    auto team = [](int t) {
      return t == 1 ? "1" : t < 32 ? "sub_warp" : t == 32 ? "warp" : "block";
    };
    seen.insert(std::string("team_") + team(c.reduce.team));
    seen.insert(std::string("map_team_") + team(c.map.team));
    if (c.map.splits > 1) seen.insert("map_splits");
    if (!c.fused && c.reduce.segments > 1)
      seen.insert(c.reduce.chunk % c.reduce.seg_len ? "split_inside_segments"
                                                    : "split_at_segments");
  };
  for (const ShapeCase& sc : awkward_shapes())  // as run by CudaEmulatedShapes
    for (Pass pass : kPasses)
      for (Layout layout : kAllLayouts)
        for (DType dt : kAllDTypes) {
          const Problem p = problem(sc.method, pass, dt, layout, sc.shape);
          if (p.is_rows() || validate(p)) continue;
          note(p, 3, 0);
          note(p, 3, element_size(dt));
        }
  for (const PathCase& c : path_cases()) note(c.problem, c.sm_count, c.misalign);
  for (const char* key : {"nchw_infer",
                          "nhwc_infer",
                          "fwd_fused",
                          "fwd_two_stage",
                          "bwd_fused_bn",
                          "bwd_fused_per_plane",
                          "bwd_fused_unit",
                          "bwd_two_stage",
                          "team_1",
                          "team_sub_warp",
                          "team_warp",
                          "team_block",
                          "map_team_1",
                          "map_team_sub_warp",
                          "map_team_warp",
                          "map_team_block",
                          "map_splits",
                          "split_inside_segments",
                          "split_at_segments",
                          "nhwc_packs_with_head",
                          "nhwc_packs_aligned",
                          "nhwc_scalar_columns",
                          "nhwc_row_splits",
                          "nhwc_slot_blocks",
                          "nhwc_narrow_block",
                          "nhwc_small_block"})
    EXPECT_TRUE(seen.count(key)) << "no test shape reaches " << key;
}

// The same case in the three orders must give bit-identical outputs, every one of them (no float
// atomics, fixed reduction trees). Channel methods on the 64-SM device: the two-stage paths.
TEST(CudaEmulated, DeterministicAcrossOrders) {
  for (Method m : implemented()) {
    const std::string shape = m == Method::groupnorm                             ? "n3c32h7w7g8"
                              : (m == Method::layernorm || m == Method::rmsnorm) ? "t7d1000"
                                                                                 : "n4c16h8w8";
    Implementation& impl = nb_cuda_emu::is_channel_method(m) ? emulated_with(64) : emulated();
    for (Pass pass : kPasses)
      for (Layout layout : kAllLayouts) {
        const Problem p = problem(m, pass, DType::f32, layout, shape);
        const CaseInputs in = make_inputs(p, Distribution::normal, 5);
        std::vector<std::vector<double>> results;
        for (Order order : kOrders) {
          nbemu::set_schedule({order, 99});
          CaseOutputs out = make_outputs(p, in);
          impl.run(p, bind(p, in, out));
          std::vector<double> all;
          for (const HostTensor* t : {&out.y, &out.mean, &out.invstd, &out.running_mean,
                                      &out.running_var, &out.dx, &out.dgamma, &out.dbeta}) {
            const std::vector<double> v = t->empty() ? std::vector<double>{} : t->to_double();
            all.insert(all.end(), v.begin(), v.end());
          }
          results.push_back(std::move(all));
        }
        EXPECT_FALSE(results[0].empty()) << to_repro(p);
        EXPECT_EQ(results[0], results[1]) << to_repro(p);
        EXPECT_EQ(results[0], results[2]) << to_repro(p);
      }
  }
}

}  // namespace
}  // namespace nb
