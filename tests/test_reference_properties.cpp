// Properties of the fp64 reference (reference/reference.hpp) that follow from the definitions of
// CONVENTIONS section 1, checked with computations written independently in this file:
//   - without affine, y = xhat has zero mean and biased variance var / (var + eps) in every
//     reduction group (BatchNorm, LayerNorm, GroupNorm, InstanceNorm); RMSNorm's y has mean square
//     ms / (ms + eps); the saved mean/invstd are those of the group, in the documented order;
//   - y does not change when a constant is added to x (all but RMSNorm), also for an offset of 1e4
//     (the cancellation case of CONVENTIONS section 2, which one-pass E[x^2] - E[x]^2 fails);
//   - BatchNorm running statistics: momentum update with the unbiased variance, by hand;
//   - BatchNorm fwd_infer is y = a_c * x + b_c, a_c = gamma_c / sqrt(running_var_c + eps),
//     b_c = beta_c - a_c * running_mean_c; fwd_infer of the other methods is the training y;
//   - wrong tensor sizes, invalid problems and a pass the entry point does not do throw
//     std::invalid_argument.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "reference.hpp"

namespace {

using nb::ref::Tensors;

std::vector<double> random_vector(std::size_t count, std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(count);
  for (double& e : v) e = dist(rng);
  return v;
}

/// Index, in the saved-statistics order, of the reduction group element (n, c, h, w) belongs to.
std::int64_t group_of(const nb::Problem& p, std::int64_t n, std::int64_t c) {
  switch (p.method) {
    case nb::Method::batchnorm:
      return c;
    case nb::Method::layernorm:
    case nb::Method::rmsnorm:
      return n;
    case nb::Method::groupnorm:
      return n * p.groups + c / (p.c / p.groups);
    case nb::Method::instancenorm:
      return n * p.c + c;
  }
  return -1;
}

/// Per-group sums of f(value) over the elements of a logical tensor, with the group counts.
template <typename F>
std::vector<double> group_sums(const nb::Problem& p, const std::vector<double>& v, F f) {
  std::vector<double> sums(static_cast<std::size_t>(p.stats_count()), 0.0);
  for (std::int64_t n = 0; n < p.n; ++n)
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w)
          sums[group_of(p, n, c)] += f(v[p.offset(n, c, h, w)]);
  return sums;
}

/// Fills x (and affine parameters, running statistics) for a forward of p.
Tensors make_inputs(const nb::Problem& p, unsigned seed, double lo = -1.0, double hi = 3.0) {
  std::mt19937_64 rng(seed);
  Tensors t;
  t.x = random_vector(static_cast<std::size_t>(p.numel()), rng, lo, hi);
  if (p.affine) {
    t.gamma = random_vector(static_cast<std::size_t>(p.param_count()), rng, 0.5, 1.5);
    if (p.has_beta())
      t.beta = random_vector(static_cast<std::size_t>(p.param_count()), rng, -0.5, 0.5);
  }
  if (p.method == nb::Method::batchnorm) {
    t.running_mean = random_vector(static_cast<std::size_t>(p.c), rng, -0.5, 0.5);
    t.running_var = random_vector(static_cast<std::size_t>(p.c), rng, 0.5, 2.0);
  }
  return t;
}

std::string test_name(const testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

/// "METHOD:PASS:f32:LAYOUT:SHAPE" for the four mean-subtracting methods in both layouts.
std::vector<std::string> centred_problems(const std::string& pass) {
  std::vector<std::string> out;
  for (const char* layout : {"nchw", "nhwc"})
    for (const char* ms : {"batchnorm:{}:n3c4h2w3", "layernorm:{}:n3c4h2w3", "layernorm:{}:t4d9",
                           "groupnorm:{}:n2c6h3w2g3", "instancenorm:{}:n2c3h4w3"}) {
      std::string s = ms;
      s.replace(s.find("{}"), 2, pass + ":f32:" + layout);
      out.push_back(s);
    }
  return out;
}

// ---------------------------------------------------------------------------------------------

class ReferenceProperties : public testing::TestWithParam<std::string> {};

TEST_P(ReferenceProperties, NormalizedOutputHasZeroMeanAndUnitVariance) {
  nb::Problem p = nb::parse_repro(GetParam() + ":noaffine");
  Tensors t = make_inputs(p, 1);
  nb::ref::forward(p, t);

  const auto count = group_sums(p, t.x, [](double) { return 1.0; });
  const auto sum_x = group_sums(p, t.x, [](double v) { return v; });
  std::vector<double> mean_x(count.size()), var_x(count.size());
  for (std::size_t g = 0; g < count.size(); ++g) {
    EXPECT_EQ(count[g], static_cast<double>(p.reduction_size()));
    mean_x[g] = sum_x[g] / count[g];
  }
  // Biased variance of x per group, by a second pass written here.
  std::vector<double> sq(count.size(), 0.0);
  for (std::int64_t n = 0; n < p.n; ++n)
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const double d = t.x[p.offset(n, c, h, w)] - mean_x[group_of(p, n, c)];
          sq[group_of(p, n, c)] += d * d;
        }
  for (std::size_t g = 0; g < count.size(); ++g) var_x[g] = sq[g] / count[g];

  const auto sum_y = group_sums(p, t.y, [](double v) { return v; });
  const auto sum_y2 = group_sums(p, t.y, [](double v) { return v * v; });
  ASSERT_EQ(t.mean.size(), count.size());
  ASSERT_EQ(t.invstd.size(), count.size());
  for (std::size_t g = 0; g < count.size(); ++g) {
    const double mean_y = sum_y[g] / count[g];
    EXPECT_NEAR(mean_y, 0.0, 1e-14) << "group " << g;
    // Var(xhat) = var / (var + eps): eps sits inside the square root, variance is biased.
    EXPECT_NEAR(sum_y2[g] / count[g] - mean_y * mean_y, var_x[g] / (var_x[g] + p.eps), 1e-13)
        << "group " << g;
    EXPECT_NEAR(t.mean[g], mean_x[g], 1e-14 * std::abs(mean_x[g]) + 1e-15) << "group " << g;
    EXPECT_NEAR(t.invstd[g], 1.0 / std::sqrt(var_x[g] + p.eps), 1e-14 * t.invstd[g])
        << "group " << g;
  }
}

TEST_P(ReferenceProperties, InvariantToConstantOffset) {
  const nb::Problem p = nb::parse_repro(GetParam());
  const Tensors base = make_inputs(p, 2);
  Tensors t0 = base;
  nb::ref::forward(p, t0);
  for (const double offset : {3.7, -12.25, 1e4}) {
    SCOPED_TRACE("offset " + std::to_string(offset));
    Tensors t = base;
    for (double& v : t.x) v += offset;
    nb::ref::forward(p, t);
    // x + offset is rounded (at most 1e-12 for 1e4) and that error is scaled by invstd ~ 1; a
    // one-pass E[x^2] - E[x]^2 variance is off by ~1e-8 relative at offset 1e4 and fails this.
    for (std::size_t i = 0; i < t.y.size(); ++i)
      ASSERT_NEAR(t.y[i], t0.y[i], 1e-10) << "y[" << i << "]";
    for (std::size_t g = 0; g < t.invstd.size(); ++g) {
      EXPECT_NEAR(t.invstd[g], t0.invstd[g], 1e-10 * t0.invstd[g]) << "invstd[" << g << "]";
      EXPECT_NEAR(t.mean[g], t0.mean[g] + offset, 1e-10 * std::max(1.0, std::abs(offset)));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, ReferenceProperties,
                         testing::ValuesIn(centred_problems("fwd_train")), test_name);

TEST(ReferencePropertiesRmsNorm, UnitMeanSquareAndNoMean) {
  for (const char* repro : {"rmsnorm:fwd_train:f32:nchw:n3c4h2w3:eps1e-06:noaffine",
                            "rmsnorm:fwd_train:f32:nhwc:n3c4h2w3:eps1e-06:noaffine",
                            "rmsnorm:fwd_train:f32:nchw:t4d9:eps1e-05:noaffine"}) {
    SCOPED_TRACE(repro);
    const nb::Problem p = nb::parse_repro(repro);
    Tensors t = make_inputs(p, 4);
    t.mean = {1.0};  // must be cleared: RMSNorm saves no mean
    nb::ref::forward(p, t);
    EXPECT_TRUE(t.mean.empty());
    const auto count = group_sums(p, t.x, [](double) { return 1.0; });
    const auto ms_x = group_sums(p, t.x, [](double v) { return v * v; });
    const auto ms_y = group_sums(p, t.y, [](double v) { return v * v; });
    ASSERT_EQ(t.invstd.size(), count.size());
    for (std::size_t g = 0; g < count.size(); ++g) {
      const double ms = ms_x[g] / count[g];
      EXPECT_NEAR(ms_y[g] / count[g], ms / (ms + p.eps), 1e-14) << "sample " << g;
      EXPECT_NEAR(t.invstd[g], 1.0 / std::sqrt(ms + p.eps), 1e-14 * t.invstd[g]);
    }
    // RMSNorm is not shift invariant but it is scale invariant (up to eps).
    Tensors scaled = make_inputs(p, 4);
    for (double& v : scaled.x) v *= 1e3;
    nb::ref::forward(p, scaled);
    for (std::size_t i = 0; i < t.y.size(); ++i) EXPECT_NEAR(scaled.y[i], t.y[i], 1e-5);
  }
}

TEST(ReferencePropertiesInference, NonBatchNormEqualsTrainingOutput) {
  std::vector<std::string> problems = centred_problems("fwd_train");
  problems.push_back("rmsnorm:fwd_train:f32:nhwc:n2c3h2w2:eps1e-06");
  problems.push_back("rmsnorm:fwd_train:f32:nchw:t4d9:eps1e-06:noaffine");
  for (const std::string& repro : problems) {
    if (repro.starts_with("batchnorm")) continue;  // normalises with running statistics instead
    SCOPED_TRACE(repro);
    const nb::Problem train = nb::parse_repro(repro);
    nb::Problem infer = train;
    infer.pass = nb::Pass::fwd_infer;
    const Tensors base = make_inputs(train, 3);
    Tensors a = base, b = base;
    nb::ref::forward(train, a);
    nb::ref::forward(infer, b);
    EXPECT_EQ(a.y, b.y);
    EXPECT_TRUE(b.mean.empty()) << "fwd_infer saves no statistics";
    EXPECT_TRUE(b.invstd.empty());
  }
}

// ---------------------------------------------------------------------------------------------
// BatchNorm running statistics and inference.

class ReferencePropertiesBatchNorm : public testing::TestWithParam<std::string> {};

TEST_P(ReferencePropertiesBatchNorm, RunningStatisticsByHand) {
  // N = 2, C = 2, H = 1, W = 2, so M = 4 values per channel:
  //   channel 0: 1, 2, 3, 6   mean 3, biased var (4 + 1 + 0 + 9) / 4 = 3.5, unbiased 14 / 3
  //   channel 1: -1, -1, 1, 1 mean 0, biased var 1,                         unbiased 4 / 3
  nb::Problem p = nb::parse_repro("batchnorm:fwd_train:f32:nchw:n2c2h1w2:eps1e-05:mom0.1");
  p.layout = nb::parse_layout(GetParam());
  const double channel[2][4] = {{1, 2, 3, 6}, {-1, -1, 1, 1}};
  for (const double momentum : {0.1, 0.3, 0.0, 1.0}) {
    SCOPED_TRACE("momentum " + std::to_string(momentum));
    p.momentum = momentum;
    Tensors t;
    t.x.resize(8);
    for (std::int64_t n = 0; n < 2; ++n)
      for (std::int64_t c = 0; c < 2; ++c)
        for (std::int64_t w = 0; w < 2; ++w) t.x[p.offset(n, c, 0, w)] = channel[c][n * 2 + w];
    t.gamma = {1.0, 1.0};
    t.beta = {0.0, 0.0};
    t.running_mean = {0.5, -2.0};
    t.running_var = {2.0, 0.25};
    nb::ref::forward(p, t);
    const double m = momentum;
    EXPECT_DOUBLE_EQ(t.running_mean[0], (1 - m) * 0.5 + m * 3.0);
    EXPECT_DOUBLE_EQ(t.running_mean[1], (1 - m) * -2.0 + m * 0.0);
    EXPECT_DOUBLE_EQ(t.running_var[0], (1 - m) * 2.0 + m * 14.0 / 3.0);
    EXPECT_DOUBLE_EQ(t.running_var[1], (1 - m) * 0.25 + m * 4.0 / 3.0);
    // The saved statistics are the batch ones with the biased variance.
    EXPECT_DOUBLE_EQ(t.mean[0], 3.0);
    EXPECT_DOUBLE_EQ(t.mean[1], 0.0);
    EXPECT_DOUBLE_EQ(t.invstd[0], 1.0 / std::sqrt(3.5 + 1e-5));
    EXPECT_DOUBLE_EQ(t.invstd[1], 1.0 / std::sqrt(1.0 + 1e-5));
  }
}

TEST_P(ReferencePropertiesBatchNorm, InferenceIsAffinePerChannel) {
  nb::Problem p = nb::parse_repro("batchnorm:fwd_infer:f32:nchw:n3c5h2w3:eps0.001:mom0.1");
  p.layout = nb::parse_layout(GetParam());
  const Tensors base = make_inputs(p, 6);
  Tensors t = base;
  nb::ref::forward(p, t);
  EXPECT_EQ(t.running_mean, base.running_mean) << "fwd_infer must not update running stats";
  EXPECT_EQ(t.running_var, base.running_var);
  EXPECT_TRUE(t.mean.empty());
  EXPECT_TRUE(t.invstd.empty());
  for (std::int64_t c = 0; c < p.c; ++c) {
    const double a = base.gamma[c] / std::sqrt(base.running_var[c] + p.eps);
    const double b = base.beta[c] - a * base.running_mean[c];
    for (std::int64_t n = 0; n < p.n; ++n)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          EXPECT_NEAR(t.y[i], a * base.x[i] + b, 1e-14 * std::max(1.0, std::abs(t.y[i])));
        }
  }
  // N*H*W == 1 is fine in inference (no batch statistics).
  nb::Problem one = nb::parse_repro("batchnorm:fwd_infer:f32:nchw:n1c3h1w1:eps1e-05:mom0.1");
  one.layout = nb::parse_layout(GetParam());
  Tensors t1 = make_inputs(one, 7);
  EXPECT_NO_THROW(nb::ref::forward(one, t1));
}

INSTANTIATE_TEST_SUITE_P(Layouts, ReferencePropertiesBatchNorm, testing::Values("nchw", "nhwc"),
                         test_name);

// ---------------------------------------------------------------------------------------------
// Errors.

/// A complete, valid bwd case of p (forward statistics saved, dy set).
Tensors make_backward_inputs(const nb::Problem& p) {
  nb::Problem train = p;
  train.pass = nb::Pass::fwd_train;
  Tensors t = make_inputs(train, 8);
  nb::ref::forward(train, t);
  t.dy = t.x;
  return t;
}

TEST(ReferencePropertiesErrors, ForwardRejectsWrongSizes) {
  const nb::Problem p = nb::parse_repro("layernorm:fwd_train:f32:nhwc:n2c3h2w2");
  const Tensors good = make_inputs(p, 9);
  {
    Tensors t = good;
    EXPECT_NO_THROW(nb::ref::forward(p, t));
  }
  Tensors t = good;
  t.x.pop_back();
  EXPECT_THROW(nb::ref::forward(p, t), std::invalid_argument);
  t = good;
  t.gamma.resize(3);  // per channel instead of normalized_shape (C, H, W)
  EXPECT_THROW(nb::ref::forward(p, t), std::invalid_argument);
  t = good;
  t.beta.clear();  // affine needs beta too
  EXPECT_THROW(nb::ref::forward(p, t), std::invalid_argument);

  nb::Problem noaffine = p;
  noaffine.affine = false;
  EXPECT_THROW(nb::ref::forward(noaffine, t = good), std::invalid_argument)
      << "gamma given but affine off";

  const nb::Problem rms = nb::parse_repro("rmsnorm:fwd_train:f32:nchw:t2d4");
  Tensors r = make_inputs(rms, 10);
  EXPECT_NO_THROW(nb::ref::forward(rms, r));
  r.beta.assign(4, 0.0);
  EXPECT_THROW(nb::ref::forward(rms, r), std::invalid_argument) << "rmsnorm has no beta";

  const nb::Problem bn = nb::parse_repro("batchnorm:fwd_train:f32:nchw:n2c3h2w2");
  Tensors b = make_inputs(bn, 11);
  b.running_var.clear();
  EXPECT_THROW(nb::ref::forward(bn, b), std::invalid_argument);
  b = make_inputs(bn, 11);
  b.running_mean.push_back(0.0);
  EXPECT_THROW(nb::ref::forward(bn, b), std::invalid_argument);
}

TEST(ReferencePropertiesErrors, BackwardRejectsWrongSizes) {
  for (const char* repro : {"batchnorm:bwd:f32:nchw:n2c3h2w2", "groupnorm:bwd:f32:nhwc:n2c6h2w2g3",
                            "instancenorm:bwd:f32:nchw:n2c3h2w2", "rmsnorm:bwd:f32:nchw:t3d4"}) {
    SCOPED_TRACE(repro);
    const nb::Problem p = nb::parse_repro(repro);
    const Tensors good = make_backward_inputs(p);
    Tensors t = good;
    EXPECT_NO_THROW(nb::ref::backward(p, t));
    t = good;
    t.dy.pop_back();
    EXPECT_THROW(nb::ref::backward(p, t), std::invalid_argument);
    t = good;
    t.x.push_back(0.0);
    EXPECT_THROW(nb::ref::backward(p, t), std::invalid_argument);
    t = good;
    t.invstd.pop_back();
    EXPECT_THROW(nb::ref::backward(p, t), std::invalid_argument);
    t = good;
    t.gamma.pop_back();
    EXPECT_THROW(nb::ref::backward(p, t), std::invalid_argument);
    if (p.method != nb::Method::rmsnorm) {
      t = good;
      t.mean.clear();
      EXPECT_THROW(nb::ref::backward(p, t), std::invalid_argument);
    }
  }
}

TEST(ReferencePropertiesErrors, RejectsInvalidProblemsAndPasses) {
  nb::Problem gn = nb::parse_repro("groupnorm:fwd_train:f32:nchw:n2c6h2w2g3");
  gn.groups = 4;  // C % G != 0
  Tensors t = make_inputs(gn, 12);
  EXPECT_THROW(nb::ref::forward(gn, t), std::invalid_argument);
  std::vector<double> mean, invstd;
  EXPECT_THROW(nb::ref::statistics(gn, t.x, mean, invstd), std::invalid_argument);

  // BatchNorm training with one value per channel (PyTorch: "Expected more than 1 value per
  // channel when training").
  nb::Problem one = nb::parse_repro("batchnorm:fwd_infer:f32:nchw:n1c3h1w1");
  Tensors t1 = make_inputs(one, 13);
  one.pass = nb::Pass::fwd_train;
  EXPECT_THROW(nb::ref::forward(one, t1), std::invalid_argument);

  // Each entry point does its own passes only.
  const nb::Problem ln_bwd = nb::parse_repro("layernorm:bwd:f32:nchw:t3d4");
  Tensors b = make_backward_inputs(ln_bwd);
  EXPECT_THROW(nb::ref::forward(ln_bwd, b), std::invalid_argument);
  nb::Problem ln_fwd = ln_bwd;
  ln_fwd.pass = nb::Pass::fwd_train;
  EXPECT_THROW(nb::ref::backward(ln_fwd, b), std::invalid_argument);
  EXPECT_NO_THROW(nb::ref::run(ln_bwd, b));

  // statistics() checks x.
  const nb::Problem ln = nb::parse_repro("layernorm:fwd_train:f32:nchw:t3d4");
  EXPECT_THROW(nb::ref::statistics(ln, std::vector<double>(11), mean, invstd),
               std::invalid_argument);
}

}  // namespace
