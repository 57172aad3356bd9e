// Every kernel of the `cuda` backend, run by the SIMT emulator, against the fp64 reference with
// the project's tolerance (run_and_compare): every registered method, pass, dtype and layout, on
// small and awkward shapes (row lengths 1..300, 1000, 1024, 4100; C = 1, 3, 251; tensors off the
// 16-byte boundary; the large-offset input), in the forward, reverse and random scheduling orders.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "emu/emulated_backend.hpp"
#include "emu/simt.hpp"
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
std::string check(const Problem& p, Distribution dist, std::size_t misalign, Order order) {
  const std::string repro = to_repro(p);
  nbemu::set_schedule({order, fnv1a(repro)});
  const CaseInputs in = make_inputs(p, dist, fnv1a(repro), misalign);
  const ref::Tensors ref = reference_outputs(p, in);
  CaseOutputs out = make_outputs(p, in, misalign);
  const Agreement a = run_and_compare(p, emulated(), in, ref, out);
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
      const Problem p = problem(m, pass, dt, Layout::nchw, fmt::format("t{}d{}", 1 + k % 9, d),
                                k % 7 != 3);
      const std::string why = check(p, Distribution::normal, misalign, order);
      EXPECT_EQ(why, "");
    }
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
        shapes = {"t3d1", "t5d17", "t2d1000", "t3d1024", "t2d1025", "t1d4100", "t9d64",
                  "n2c3h5w7", "n3c251h1w1", "n2c1h9w9"};
        break;
      case Method::batchnorm:
        shapes = {"n1c3h5w7", "n2c251h3w3", "n3c1h1w1", "n2c17h1w1", "n4c16h8w8", "n2c33h19w19"};
        break;
      case Method::groupnorm:
        shapes = {"n2c6h5w3g1", "n2c6h5w3g6", "n1c251h3w3g251", "n3c32h7w7g8", "n2c64h1w1g32",
                  "n1c3h17w17g3"};
        break;
      case Method::instancenorm:
        shapes = {"n1c3h5w7", "n2c251h2w2", "n2c4h1w1", "n1c1h9w9", "n2c16h33w3"};
        break;
    }
    for (auto& s : shapes) out.push_back({m, s});
  }
  return out;
}

class CudaEmulatedShapes : public ::testing::TestWithParam<ShapeCase> {};

// Every pass, dtype and layout on one shape; both input distributions; all three orders (the
// order rotates with the dtype so that each (pass, layout) sees every order).
TEST_P(CudaEmulatedShapes, AgreesWithReference) {
  const ShapeCase& sc = GetParam();
  int k = 0;
  for (Pass pass : kPasses)
    for (Layout layout : kAllLayouts)
      for (DType dt : kAllDTypes)
        for (Distribution dist : {Distribution::normal, Distribution::large_offset}) {
          const Problem p = problem(sc.method, pass, dt, layout, sc.shape);
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

// The same case in the three orders must give bit-identical outputs (no float atomics, fixed
// reduction trees).
TEST(CudaEmulated, DeterministicAcrossOrders) {
  for (Method m : implemented()) {
    const std::string shape = m == Method::groupnorm ? "n3c32h7w7g8"
                              : (m == Method::layernorm || m == Method::rmsnorm) ? "t7d1000"
                                                                                  : "n4c16h8w8";
    for (Pass pass : kPasses) {
      const Problem p = problem(m, pass, DType::f32, Layout::nhwc, shape);
      const CaseInputs in = make_inputs(p, Distribution::normal, 5);
      std::vector<std::vector<double>> results;
      for (Order order : kOrders) {
        nbemu::set_schedule({order, 99});
        CaseOutputs out = make_outputs(p, in);
        emulated().run(p, bind(p, in, out));
        results.push_back(pass == Pass::bwd ? out.dx.to_double() : out.y.to_double());
      }
      EXPECT_EQ(results[0], results[1]) << to_repro(p);
      EXPECT_EQ(results[0], results[2]) << to_repro(p);
    }
  }
}

}  // namespace
}  // namespace nb
