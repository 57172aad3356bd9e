// Problem descriptor: the repro string round-trips, and invalid problems are rejected with a
// one-line reason.
#include <gtest/gtest.h>

#include <stdexcept>

#include "problem.hpp"

namespace nb {
namespace {

TEST(Problem, CanonicalReproRoundTrips) {
  for (const char* s : {"batchnorm:fwd_train:f32:nchw:n50c64h112w112:eps1e-05:mom0.1",
                        "batchnorm:fwd_infer:bf16:nhwc:n1c1h1w1:eps0.001:mom0.3:noaffine",
                        "groupnorm:bwd:f16:nhwc:n2c320h96w96g32:eps1e-05",
                        "instancenorm:fwd_train:f32:nchw:n4c128h64w64:eps1e-05:noaffine",
                        "layernorm:fwd_train:f32:nchw:t256d768:eps1e-05",
                        "layernorm:bwd:bf16:nchw:n2c4h8w8:eps1e-05",
                        "rmsnorm:fwd_infer:bf16:nhwc:t16384d4096:eps1e-06"}) {
    const Problem p = parse_repro(s);
    EXPECT_EQ(to_repro(p), s);
    EXPECT_EQ(parse_repro(to_repro(p)), p);
  }
}

TEST(Problem, EveryCombinationRoundTrips) {
  for (Method m : kAllMethods)
    for (Pass pass : kAllPasses)
      for (DType dt : kAllDTypes)
        for (Layout l : kAllLayouts)
          for (double eps : {1e-5, 1e-6, 0.1, 3.3333333333333e-7}) {
            Problem p;
            p.method = m;
            p.pass = pass;
            p.dtype = dt;
            p.layout = l;
            p.n = 3;
            p.c = 12;
            p.h = 5;
            p.w = 7;
            p.groups = m == Method::groupnorm ? 4 : 1;
            p.eps = eps;
            p.momentum = m == Method::batchnorm ? 0.01 : 0.1;
            p.affine = eps != 0.1;
            ASSERT_FALSE(validate(p)) << *validate(p);
            EXPECT_EQ(parse_repro(to_repro(p)), p) << to_repro(p);
          }
}

TEST(Problem, ShapeShorthands) {
  EXPECT_EQ(to_repro(parse_repro("batchnorm:fwd_train:f32:nchw:n32c64h56")),
            "batchnorm:fwd_train:f32:nchw:n32c64h56w56:eps1e-05:mom0.1");
  const Problem p = parse_repro("rmsnorm:bwd:f32:nchw:n8c512");
  EXPECT_EQ(p.n, 8);
  EXPECT_EQ(p.c, 512);
  EXPECT_EQ(p.h * p.w, 1);
  EXPECT_EQ(to_repro(p), "rmsnorm:bwd:f32:nchw:t8d512:eps1e-05");
}

TEST(Problem, DerivedSizes) {
  const Problem bn = parse_repro("batchnorm:fwd_train:f32:nchw:n2c3h4w5");
  EXPECT_EQ(bn.reduction_size(), 2 * 4 * 5);
  EXPECT_EQ(bn.stats_count(), 3);
  EXPECT_EQ(bn.param_count(), 3);
  const Problem gn = parse_repro("groupnorm:fwd_train:f32:nhwc:n2c6h4w5g3");
  EXPECT_EQ(gn.reduction_size(), 2 * 4 * 5);
  EXPECT_EQ(gn.stats_count(), 6);
  EXPECT_EQ(gn.offset(1, 2, 3, 4), ((1 * 4 + 3) * 5 + 4) * 6 + 2);
  const Problem ln = parse_repro("layernorm:fwd_train:f32:nchw:n2c3h4w5");
  EXPECT_EQ(ln.reduction_size(), 60);
  EXPECT_EQ(ln.param_count(), 60);
  EXPECT_EQ(ln.offset(1, 2, 3, 4), ((1 * 3 + 2) * 4 + 3) * 5 + 4);
  const Problem in = parse_repro("instancenorm:bwd:f32:nchw:n2c3h4w5");
  EXPECT_EQ(in.stats_count(), 6);
  EXPECT_EQ(in.effective_groups(), 3);
}

void expect_rejected(const char* repro, const char* fragment) {
  try {
    parse_repro(repro);
    ADD_FAILURE() << repro << " was accepted";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
  }
}

TEST(Problem, InvalidProblemsAreRejectedWithAReason) {
  expect_rejected("groupnorm:fwd_train:f32:nchw:n2c30h4w4g4", "not divisible by num_groups=4");
  expect_rejected("batchnorm:fwd_train:f32:nchw:n1c8h1w1", "more than 1 value per channel");
  expect_rejected("batchnorm:bwd:f32:nchw:n1c8h1w1", "more than 1 value per channel");
  EXPECT_NO_THROW(parse_repro("batchnorm:fwd_infer:f32:nchw:n1c1h1w1"));
  expect_rejected("batchnorm:fwd_train:f32:nchw:n-2c8h4w4", "sizes must be positive");
  expect_rejected("batchnorm:fwd_train:f32:nchw:n0c8h4w4", "sizes must be positive");
  expect_rejected("batchnorm:fwd_train:f32:nchw:n2c8h4w4:eps0", "eps must be positive");
  expect_rejected("batchnorm:fwd_train:f32:nchw:n2c8h4w4:mom1.5", "momentum must be in [0, 1]");
  expect_rejected("layernorm:fwd_train:f32:nchw:n2c8h4w4:mom0.5", "momentum applies to batchnorm");
  expect_rejected("layernorm:fwd_train:f32:nchw:n2c8h4w4g2", "num_groups applies to groupnorm");
  expect_rejected("batchnorm:fwd_train:f32:nchw:t2d8", "layernorm and rmsnorm only");
  expect_rejected("bnorm:fwd_train:f32:nchw:n2c8h4w4", "unknown method 'bnorm'");
  expect_rejected("batchnorm:forward:f32:nchw:n2c8h4w4", "unknown pass 'forward'");
  expect_rejected("batchnorm:fwd_train:f64:nchw:n2c8h4w4", "unknown dtype 'f64'");
  expect_rejected("batchnorm:fwd_train:f32:nchwc:n2c8h4w4", "unknown layout");
  expect_rejected("batchnorm:fwd_train:f32:nchw:n2x8", "unexpected 'x'");
  expect_rejected("batchnorm:fwd_train:f32:nchw:n2c8:bogus", "unknown option 'bogus'");
  expect_rejected("batchnorm:fwd_train:f32", "expected METHOD:PASS:DTYPE:LAYOUT:SHAPE");
  expect_rejected("batchnorm:fwd_train:f32:nchw:n2c8h4w4:epsx", "not a number");
}

}  // namespace
}  // namespace nb
