// The agreement check catches wrong implementations: deliberately wrong BatchNorm backends are
// registered here (hidden from normal listings) and each must be reported FAIL, naming the
// output that disagrees; a correct one must PASS on both input distributions.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "agreement.hpp"
#include "case_data.hpp"
#include "registry.hpp"
#include "sweep.hpp"

namespace nb {
namespace {

enum class Defect { none, one_pass_variance, unbiased_normalisation, biased_running_var };

// BatchNorm fwd_train, f32 NCHW, computed in fp32 the way a fast kernel would, with one defect.
class DefectiveBatchNorm final : public Implementation {
 public:
  explicit DefectiveBatchNorm(Defect d) : d_(d) {}
  void run(const Problem& p, const KernelArgs& a) override {
    const auto* x = static_cast<const float*>(a.x);
    auto* y = static_cast<float*>(a.y);
    const std::int64_t m = p.n * p.spatial();
    for (std::int64_t c = 0; c < p.c; ++c) {
      float sum = 0, sumsq = 0;
      for (std::int64_t n = 0; n < p.n; ++n)
        for (std::int64_t s = 0; s < p.spatial(); ++s) sum += x[(n * p.c + c) * p.spatial() + s];
      const float mean = sum / static_cast<float>(m);
      float var;
      if (d_ == Defect::one_pass_variance) {
        for (std::int64_t n = 0; n < p.n; ++n)
          for (std::int64_t s = 0; s < p.spatial(); ++s) {
            const float v = x[(n * p.c + c) * p.spatial() + s];
            sumsq += v * v;
          }
        var = sumsq / static_cast<float>(m) - mean * mean;  // E[x^2] - E[x]^2: cancels
      } else {
        for (std::int64_t n = 0; n < p.n; ++n)
          for (std::int64_t s = 0; s < p.spatial(); ++s) {
            const float v = x[(n * p.c + c) * p.spatial() + s] - mean;
            sumsq += v * v;
          }
        var = sumsq / static_cast<float>(m);
      }
      const float unbiased = sumsq / static_cast<float>(m - 1);
      const float norm_var = d_ == Defect::unbiased_normalisation ? unbiased : var;
      const float invstd = 1.0f / std::sqrt(norm_var + static_cast<float>(p.eps));
      a.mean[c] = mean;
      a.invstd[c] = invstd;
      const float mom = static_cast<float>(p.momentum);
      a.running_mean[c] = (1 - mom) * a.running_mean[c] + mom * mean;
      const float run_var = d_ == Defect::biased_running_var ? var : var * m / (m - 1);
      a.running_var[c] = (1 - mom) * a.running_var[c] + mom * run_var;
      for (std::int64_t n = 0; n < p.n; ++n)
        for (std::int64_t s = 0; s < p.spatial(); ++s) {
          const std::int64_t i = (n * p.c + c) * p.spatial() + s;
          y[i] = (x[i] - mean) * invstd * a.gamma[c] + a.beta[c];
        }
    }
  }

 private:
  Defect d_;
};

NB_REGISTER_BACKEND(test_defects) {
  const std::pair<const char*, Defect> all[] = {
      {"test_correct_fp32", Defect::none},
      {"test_one_pass_variance", Defect::one_pass_variance},
      {"test_unbiased_normalisation", Defect::unbiased_normalisation},
      {"test_biased_running_var", Defect::biased_running_var}};
  for (const auto& [name, d] : all)
    register_implementation(name, std::make_shared<DefectiveBatchNorm>(d), {Method::batchnorm},
                            {Pass::fwd_train}, {DType::f32}, {Layout::nchw}, /*hidden=*/true);
}

Agreement check(const char* backend, const char* repro, Distribution dist) {
  const Problem p = parse_repro(repro);
  const auto* reg = Registry::instance().find(backend, p.method, p.pass, p.dtype, p.layout);
  EXPECT_NE(reg, nullptr) << backend;
  const CaseInputs in = make_inputs(p, dist, 1234);
  const ref::Tensors ref = reference_outputs(p, in);
  CaseOutputs out = make_outputs(p, in);
  return run_and_compare(p, *reg->impl, in, ref, out);
}

constexpr const char* kSmall = "batchnorm:fwd_train:f32:nchw:n2c8h2w2:eps1e-05:mom0.1";
constexpr const char* kLarge = "batchnorm:fwd_train:f32:nchw:n8c4h16w16:eps1e-05:mom0.1";

TEST(Agreement, CorrectFp32KernelPassesBothDistributions) {
  for (auto repro : {kSmall, kLarge})
    for (auto dist : {Distribution::normal, Distribution::large_offset}) {
      const Agreement a = check("test_correct_fp32", repro, dist);
      EXPECT_EQ(a.status, Status::pass) << repro << " " << to_string(dist) << ": " << a.reason;
    }
}

TEST(Agreement, OnePassVarianceFailsOnLargeOffset) {
  const Agreement a = check("test_one_pass_variance", kLarge, Distribution::large_offset);
  EXPECT_EQ(a.status, Status::fail);
  EXPECT_TRUE(a.reason.rfind("y", 0) == 0 || a.reason.rfind("invstd", 0) == 0) << a.reason;
}

TEST(Agreement, UnbiasedNormalisationFailsNamingY) {
  const Agreement a = check("test_unbiased_normalisation", kSmall, Distribution::normal);
  EXPECT_EQ(a.status, Status::fail);
  EXPECT_EQ(a.reason.rfind("y ", 0), 0u) << a.reason;
  // invstd disagrees too: both are listed as failing outputs.
  bool invstd_fails = false;
  for (const auto& o : a.outputs) invstd_fails |= o.output == Output::invstd && !o.failure.empty();
  EXPECT_TRUE(invstd_fails);
}

TEST(Agreement, BiasedRunningVarianceFailsNamingRunningVar) {
  const Agreement a = check("test_biased_running_var", kSmall, Distribution::normal);
  EXPECT_EQ(a.status, Status::fail);
  EXPECT_EQ(a.reason.rfind("running_var ", 0), 0u) << a.reason;
  for (const auto& o : a.outputs) {
    if (o.output != Output::running_var) {
      EXPECT_TRUE(o.failure.empty()) << o.failure;
    }
  }
}

TEST(Agreement, NonFiniteAndZeroOutputsFail) {
  const Problem p = parse_repro(kSmall);
  const CaseInputs in = make_inputs(p, Distribution::normal, 7);
  const ref::Tensors ref = reference_outputs(p, in);
  CaseOutputs out = make_outputs(p, in);
  const auto* reg = Registry::instance().find("reference", p.method, p.pass, p.dtype, p.layout);
  ASSERT_EQ(run_and_compare(p, *reg->impl, in, ref, out).status, Status::pass);
  CaseOutputs nan_out = make_outputs(p, in);
  run_and_compare(p, *reg->impl, in, ref, nan_out);
  nan_out.y.set(3, NAN);
  Agreement a = compare(p, in, nan_out, ref);
  EXPECT_EQ(a.status, Status::fail);
  EXPECT_NE(a.reason.find("y[3] = nan"), std::string::npos) << a.reason;
  CaseOutputs zero_out = make_outputs(p, in);  // y never written: all zeros
  run_and_compare(p, *reg->impl, in, ref, zero_out);
  for (std::size_t i = 0; i < zero_out.y.numel(); ++i) zero_out.y.set(i, 0.0);
  a = compare(p, in, zero_out, ref);
  EXPECT_EQ(a.status, Status::fail);
  EXPECT_NE(a.reason.find("mostly zeros"), std::string::npos) << a.reason;
}

TEST(Agreement, ToleranceScalesWithDtypeAndConditioning) {
  EXPECT_GT(tolerance(DType::bf16, 1000, 1), 4 * tolerance(DType::f16, 1000, 1));
  EXPECT_GT(tolerance(DType::f16, 1000, 1), 8 * tolerance(DType::f32, 1000, 1));
  EXPECT_GT(tolerance(DType::f32, 1000, 1e4), 1000 * tolerance(DType::f32, 1000, 1));
  EXPECT_LT(tolerance(DType::f32, 1 << 20, 1), 2e-5);
}

}  // namespace
}  // namespace nb
