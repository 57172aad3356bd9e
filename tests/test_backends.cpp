// Every registered backend (but the reference it is checked against and the hidden test-only
// ones) x method x pass x dtype x layout, against the fp64 reference on small and awkward shapes:
// C = 1, 3, 251; N = 1 where legal; H = W = 1; sizes that are not a multiple of any vector width;
// tensors that do not start on a 64-byte boundary; G = 1 and G = C; the large-offset input; a
// constant input (variance 0); neighbouring units with far-apart means (unit_offsets).
//
// Peers (onednn, pytorch, cudnn, cudnn_legacy) are run the same way, but they are not ours to fix:
// a numerical disagreement of a peer is printed here and reported as a FAIL row by every sweep
// (README, "Peers"); only an error of our wrapper around it (an exception, a missing output) fails
// the test.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <iostream>
#include <string>
#include <vector>

#include "agreement.hpp"
#include "case_data.hpp"
#include "registry.hpp"
#include "sweep.hpp"

namespace nb {
namespace {

std::vector<const Registration*> registrations() {
  std::vector<const Registration*> out;
  for (const auto& r : Registry::instance().all())
    if (!r.hidden && r.backend != "reference") out.push_back(&r);
  return out;
}

bool is_peer(const std::string& backend) {
  return backend == "onednn" || backend == "pytorch" || backend == "cudnn" ||
         backend == "cudnn_legacy";
}

std::vector<std::string> shapes_for(Method m) {
  switch (m) {
    case Method::batchnorm:
      return {"n1c3h5w7",  "n2c251h3w3", "n3c1h1w1",    "n2c17h1w1",
              "n4c16h8w8", "n3c50h7w7",  "n4c50h13w13", "n2c33h19w19"};
    case Method::layernorm:
    case Method::rmsnorm:
      return {"t3d1", "t5d17", "t2d1000", "t1d4100", "t7d64", "n2c3h5w7"};
    case Method::groupnorm:
      return {"n2c6h5w3g1",  "n2c6h5w3g6",   "n1c251h3w3g251",
              "n3c32h7w7g8", "n2c64h1w1g32", "n1c3h17w17g3"};
    case Method::instancenorm:
      return {"n1c3h5w7", "n2c251h2w2", "n2c4h1w1", "n1c1h9w9", "n2c16h33w3"};
  }
  return {};
}

/// The registration's method, pass, dtype and layout on a shape string ("n2c3h5w7", "t5d17").
Problem problem_for(const Registration& r, const std::string& shape) {
  Problem p;
  p.method = r.method;
  p.pass = r.pass;
  p.dtype = r.dtype;
  p.layout = r.layout;
  parse_shape(shape, p);
  return p;
}

/// normal: N(0, 1); large_offset: offset + N(0, 1) (CONVENTIONS section 2; the offset per dtype
/// in case_data.cpp); constant: 0.75 everywhere (variance 0); unit_offsets: N(0, 1) plus 0, L,
/// -L/8 or 3 (L: that large offset) by reduction unit (BatchNorm channel, LayerNorm/RMSNorm
/// sample, GroupNorm (n, group), InstanceNorm (n, c)), so neighbouring units have means many
/// standard deviations apart and a kernel that centers a unit's statistics on the previous
/// unit's mean must notice that the guess is wrong.
enum class Input { normal, large_offset, constant, unit_offsets };

std::string input_name(Input i) {
  switch (i) {
    case Input::normal:
      return "normal";
    case Input::large_offset:
      return "large_offset";
    case Input::constant:
      return "constant";
    case Input::unit_offsets:
      return "unit_offsets";
  }
  return "?";
}

/// Adds the unit_offsets pattern to x (logical index (n, c) from the layout).
void add_unit_offsets(const Problem& p, HostTensor& x) {
  const double big = distribution_offset(Distribution::large_offset, p.dtype);
  const double offsets[] = {0.0, big, -big / 8, 3.0};
  const std::int64_t s = p.spatial();
  for (std::size_t i = 0; i < x.numel(); ++i) {
    const auto k = static_cast<std::int64_t>(i);
    const std::int64_t n = k / (p.c * s);
    const std::int64_t c = p.layout == Layout::nchw ? k / s % p.c : k % p.c;
    const std::int64_t g = p.effective_groups();
    const std::int64_t unit = p.method == Method::batchnorm ? c : n * g + c / (p.c / g);
    x.set(i, x.get(i) + offsets[unit % 4]);
  }
}

/// The inputs of a case; the backward's saved statistics are those of the final x.
CaseInputs make_test_inputs(const Problem& p, Input input, std::size_t misalign) {
  const Distribution dist =
      input == Input::large_offset ? Distribution::large_offset : Distribution::normal;
  CaseInputs in = make_inputs(p, dist, fnv1a(to_repro(p)), misalign);
  if (input == Input::constant)
    for (std::size_t i = 0; i < in.x.numel(); ++i) in.x.set(i, 0.75);
  if (input == Input::unit_offsets) add_unit_offsets(p, in.x);
  if ((input == Input::constant || input == Input::unit_offsets) && p.pass == Pass::bwd) {
    std::vector<double> mean, invstd;
    ref::statistics(p, in.x.to_double(), mean, invstd);
    if (!in.mean.empty()) in.mean.assign(mean);
    in.invstd.assign(invstd);
  }
  return in;
}

class BackendAgreement : public ::testing::TestWithParam<const Registration*> {};

TEST_P(BackendAgreement, MatchesReferenceOnAwkwardShapes) {
  const Registration& r = *GetParam();
  if (auto why = r.impl->unavailable_reason()) GTEST_SKIP() << "unavailable: " << *why;
  int checked = 0;
  for (const auto& shape : shapes_for(r.method))
    for (Input input : {Input::normal, Input::large_offset, Input::constant, Input::unit_offsets})
      for (std::size_t misalign : {std::size_t{0}, element_size(r.dtype)}) {
        if ((input == Input::constant || input == Input::unit_offsets) && misalign) continue;
        const Problem p = problem_for(r, shape);
        if (validate(p)) continue;  // e.g. batchnorm training with N*H*W == 1
        if (r.impl->unsupported_reason(p)) continue;
        CaseInputs in = make_test_inputs(p, input, misalign);
        const ref::Tensors ref = reference_outputs(p, in);
        CaseOutputs out = make_outputs(p, in, misalign);
        const Agreement a = run_and_compare(p, *r.impl, in, ref, out);
        if (is_peer(r.backend) && a.status == Status::fail && a.reason.rfind("error:", 0) != 0) {
          std::cout << "peer disagreement (a FAIL row in sweeps): " << to_repro(p)
                    << " input=" << input_name(input) << ": " << a.reason << "\n";
          ++checked;
          continue;
        }
        EXPECT_EQ(a.status, Status::pass) << to_repro(p) << " input=" << input_name(input)
                                          << " misalign=" << misalign << ": " << a.reason;
        ++checked;
      }
  // A peer may support none of these shapes (cuDNN 9 has no GroupNorm engine, nor an NCHW
  // BatchNorm inference one): that is its SKIP rows, not a failure. Ours must support some.
  if (is_peer(r.backend) && checked == 0) GTEST_SKIP() << "the peer supports none of these shapes";
  EXPECT_GT(checked, 0) << "no shape was supported";
}

/// Shapes above the CPU backends' one-thread limit (avx512 kParallelMinElements = 32768), with
/// units that do not divide between 2 threads (C = 5, N = 3, N*C = 15, T = 33), so the threaded
/// paths run: whole units per thread, the leftover units split between the threads with merged
/// partials, and (with NB_AVX512_SPLIT=always, CTest avx512_forced_paths) every BatchNorm NCHW
/// backward channel split. The later shapes give each of 2 threads two units (BatchNorm NCHW
/// channels, GroupNorm/InstanceNorm NHWC samples) of more than one pipeline chunk (avx512: 16 KiB
/// of x, 128 KiB NHWC blocks, in every dtype), so the pipelines that write unit u while reducing
/// unit u+1 chunk by chunk run; n2c5h200w200 has H*W above the f32 chunk (chunks are pieces of one
/// segment), n2c8h150w150g2 GroupNorm NCHW units (n, g) of several chunks. C = 1030 (rows of one
/// pattern period, walked in 64-channel tiles with a masked last vector) has NHWC samples (and a
/// BatchNorm NHWC tensor) of several statistics blocks (avx512 rows_per_moment_block: 127 rows in
/// f32, 128 in 16-bit), whose centers come from the previous block or sample and are checked.
std::vector<std::string> threaded_shapes_for(Method m) {
  switch (m) {
    case Method::batchnorm:
      return {"n3c5h53w53", "n5c5h120w120", "n2c5h200w200", "n5c1030h12w12"};
    case Method::instancenorm:
      return {"n3c5h53w53", "n5c5h120w120", "n5c1030h12w12"};
    case Method::layernorm:
    case Method::rmsnorm:
      return {"t33d1031"};
    case Method::groupnorm:
      return {"n3c12h53w53g4", "n5c12h75w75g4", "n2c8h150w150g2", "n5c1030h12w12g10"};
  }
  return {};
}

/// Our CPU backends (the threaded shapes are theirs: the awkward shapes cover the others).
std::vector<const Registration*> cpu_registrations() {
  std::vector<const Registration*> out;
  for (const Registration* r : registrations())
    if (r->backend == "openmp" || r->backend == "avx512") out.push_back(r);
  return out;
}

class CpuBackendAgreement : public ::testing::TestWithParam<const Registration*> {};

TEST_P(CpuBackendAgreement, MatchesReferenceOnThreadedShapes) {
  const Registration& r = *GetParam();
  if (auto why = r.impl->unavailable_reason()) GTEST_SKIP() << "unavailable: " << *why;
  for (const auto& shape : threaded_shapes_for(r.method))
    for (Input input : {Input::normal, Input::large_offset, Input::unit_offsets}) {
      const Problem p = problem_for(r, shape);
      ASSERT_FALSE(validate(p)) << shape;
      ASSERT_GE(p.numel(), 32768) << shape;
      CaseInputs in = make_test_inputs(p, input, 0);
      const ref::Tensors ref = reference_outputs(p, in);
      CaseOutputs out = make_outputs(p, in, 0);
      const Agreement a = run_and_compare(p, *r.impl, in, ref, out);
      EXPECT_EQ(a.status, Status::pass)
          << to_repro(p) << " input=" << input_name(input) << ": " << a.reason;
    }
}

std::string param_name(const ::testing::TestParamInfo<const Registration*>& info) {
  const Registration& r = *info.param;
  return fmt::format("{}_{}_{}_{}_{}", r.backend, to_string(r.method), to_string(r.pass),
                     to_string(r.dtype), to_string(r.layout));
}

INSTANTIATE_TEST_SUITE_P(AllRegistered, BackendAgreement, ::testing::ValuesIn(registrations()),
                         param_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(BackendAgreement);
INSTANTIATE_TEST_SUITE_P(Cpu, CpuBackendAgreement, ::testing::ValuesIn(cpu_registrations()),
                         param_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CpuBackendAgreement);

}  // namespace
}  // namespace nb
