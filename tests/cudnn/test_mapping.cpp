// The problem -> cuDNN tensor mapping (kernels/cudnn/mapping.hpp), without cuDNN or a GPU.
//
// Two kinds of checks:
//  - Layout rules, stated directly: x's strides address every (n, c, h, w) where
//  nb::Problem::offset
//    (our HostTensor layout) does; NHWC has stride 1 for C and C for W; the statistics and
//    parameter shapes of each method (BN 1xCx1x1, LN/RMS Nx1x1x1 with scale 1xCxHxW, IN NxCx1x1,
//    GN NxGx1x1) and where element (n, c or g) lands; which tensors each pass takes and what they
//    are bound to; every tensor spans exactly the harness buffer it is copied from or to; the
//    reordering of LayerNorm/RMSNorm parameters into x's memory order for NHWC.
//  - Semantics: the normalization cuDNN defines on the mapped tensors (statistics over the
//    dimensions where the statistics tensor has size 1, channel groups where it divides C, scale
//    and bias broadcast from their shape), evaluated here in fp64 through the mapped strides, must
//    reproduce the fp64 reference (reference/) in the harness's memory orders: forward y, mean,
//    invstd; backward dx, dgamma, dbeta; BatchNorm inference through NORM_FORWARD inference and
//    through the folded pointwise graph. A wrong stride, shape or binding changes these numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "mapping.hpp"
#include "reference.hpp"

namespace nb_cudnn {
namespace {

using nb::Layout;
using nb::Method;
using nb::Pass;
using nb::Problem;

Problem problem(Method m, Pass pass, Layout layout, const std::string& shape, bool affine = true) {
  Problem p;
  p.method = m;
  p.pass = pass;
  p.layout = layout;
  p.affine = affine;
  if (m == Method::batchnorm) p.momentum = 0.25;  // validate() rejects it for other methods
  p.eps = 1e-3;
  nb::parse_shape(shape, p);
  return p;
}

std::vector<std::string> shapes_for(Method m) {
  switch (m) {
    case Method::batchnorm:
      return {"n2c3h4w5", "n3c1h2w2", "n1c5h1w3"};
    case Method::layernorm:
    case Method::rmsnorm:
      return {"n2c3h4w5", "t3d7", "n1c2h1w1"};
    case Method::groupnorm:
      return {"n2c6h3w2g3", "n2c6h3w2g1", "n1c4h2w2g4"};
    case Method::instancenorm:
      return {"n2c3h4w5", "n1c1h3w3"};
  }
  return {};
}

/// Every valid problem of the sweep below: all methods, passes, layouts, affine on/off, shapes
/// (only BatchNorm training with N*H*W = 1 is invalid among them).
const std::vector<Problem>& all_problems() {
  static const std::vector<Problem> problems = [] {
    std::vector<Problem> out;
    for (Method m : nb::kAllMethods)
      for (Pass pass : nb::kAllPasses)
        for (Layout l : nb::kAllLayouts)
          for (bool affine : {true, false})
            for (const auto& s : shapes_for(m)) {
              Problem p = problem(m, pass, l, s, affine);
              if (!nb::validate(p)) out.push_back(p);
            }
    return out;
  }();
  return problems;
}

TEST(CudnnMapping, TheSweepCoversEveryMethodPassAndLayout) {
  std::map<std::tuple<Method, Pass, Layout>, int> count;
  for (const Problem& p : all_problems()) ++count[{p.method, p.pass, p.layout}];
  EXPECT_EQ(count.size(), 5u * 3u * 2u);
  for (const auto& [key, n] : count) EXPECT_GE(n, 4) << nb::to_string(std::get<0>(key));
}

// --- Layout rules ---------------------------------------------------------------------------

TEST(CudnnMapping, PackedNchwAndNhwcStrides) {
  const Tensor4d nchw = packed({2, 3, 4, 5}, Layout::nchw);
  EXPECT_EQ(nchw.strides, (std::array<std::int64_t, 4>{60, 20, 5, 1}));
  const Tensor4d nhwc = packed({2, 3, 4, 5}, Layout::nhwc);
  EXPECT_EQ(nhwc.strides[1], 1) << "NHWC: C is the fastest dimension";
  EXPECT_EQ(nhwc.strides[3], 3) << "NHWC: the stride of W is C";
  EXPECT_EQ(nhwc.strides[2], 5 * 3) << "NHWC: the stride of H is W*C";
  EXPECT_EQ(nhwc.strides[0], 4 * 5 * 3) << "NHWC: the stride of N is H*W*C";
  EXPECT_EQ(nchw.span(), 120);
  EXPECT_EQ(nhwc.span(), 120);
  // Per-channel tensors: element c at offset c in both layouts.
  for (Layout l : nb::kAllLayouts) {
    const Tensor4d ch = packed({1, 7, 1, 1}, l);
    for (std::int64_t c = 0; c < 7; ++c) {
      EXPECT_EQ(ch.offset(0, c, 0, 0), c);
    }
    EXPECT_EQ(ch.span(), 7);
  }
}

TEST(CudnnMapping, DataTensorsAddressElementsLikeTheHarness) {
  for (const Problem& p : all_problems()) {
    const NormMapping m = map_problem(p);
    for (Role r : {Role::x, Role::y, Role::dy, Role::dx}) {
      const TensorSpec* t = m.find(r);
      if (!t) continue;
      EXPECT_EQ(t->shape.dims, (std::array<std::int64_t, 4>{p.n, p.c, p.h, p.w}));
      for (std::int64_t n = 0; n < p.n; ++n)
        for (std::int64_t c = 0; c < p.c; ++c)
          for (std::int64_t h = 0; h < p.h; ++h)
            for (std::int64_t w = 0; w < p.w; ++w)
              ASSERT_EQ(t->shape.offset(n, c, h, w), p.offset(n, c, h, w))
                  << nb::to_repro(p) << " " << to_string(r) << " at " << n << c << h << w;
      EXPECT_TRUE(t->data_type);
    }
  }
}

TEST(CudnnMapping, StatisticsShapeAndOrderPerMethod) {
  for (const Problem& p : all_problems()) {
    if (p.pass == Pass::fwd_infer && p.method != Method::batchnorm) continue;  // no statistics
    const NormMapping m = map_problem(p);
    const TensorSpec* inv = m.find(Role::inv_variance);
    ASSERT_NE(inv, nullptr) << nb::to_repro(p);
    const Tensor4d& s = inv->shape;
    std::array<std::int64_t, 4> want{};
    switch (p.method) {
      case Method::batchnorm:
        want = {1, p.c, 1, 1};
        for (std::int64_t c = 0; c < p.c; ++c) {
          EXPECT_EQ(s.offset(0, c, 0, 0), c);
        }
        break;
      case Method::layernorm:
      case Method::rmsnorm:
        want = {p.n, 1, 1, 1};
        for (std::int64_t n = 0; n < p.n; ++n) {
          EXPECT_EQ(s.offset(n, 0, 0, 0), n);
        }
        break;
      case Method::instancenorm:
        want = {p.n, p.c, 1, 1};
        for (std::int64_t n = 0; n < p.n; ++n)
          for (std::int64_t c = 0; c < p.c; ++c) {
            EXPECT_EQ(s.offset(n, c, 0, 0), n * p.c + c);
          }
        break;
      case Method::groupnorm:
        want = {p.n, p.groups, 1, 1};
        for (std::int64_t n = 0; n < p.n; ++n)
          for (std::int64_t g = 0; g < p.groups; ++g)
            EXPECT_EQ(s.offset(n, g, 0, 0), n * p.groups + g);
        break;
    }
    EXPECT_EQ(s.dims, want) << nb::to_repro(p);
    EXPECT_EQ(s.span(), p.stats_count()) << nb::to_repro(p);
    if (const TensorSpec* mean = m.find(Role::mean)) {
      EXPECT_EQ(mean->shape, s);
    }
    EXPECT_EQ(m.find(Role::mean) == nullptr, p.method == Method::rmsnorm) << "RMSNorm has no mean";
  }
}

TEST(CudnnMapping, ParameterShapePerMethod) {
  for (const Problem& p : all_problems()) {
    const NormMapping m = map_problem(p);
    const TensorSpec* scale = m.find(Role::scale);
    ASSERT_NE(scale, nullptr);
    const Tensor4d& s = scale->shape;
    if (p.is_rows()) {
      // normalized_shape (C, H, W): one sample of x, in x's memory order on the device.
      EXPECT_EQ(s.dims, (std::array<std::int64_t, 4>{1, p.c, p.h, p.w}));
      for (std::int64_t c = 0; c < p.c; ++c)
        for (std::int64_t h = 0; h < p.h; ++h)
          for (std::int64_t w = 0; w < p.w; ++w) {
            ASSERT_EQ(s.offset(0, c, h, w), p.offset(0, c, h, w)) << nb::to_repro(p);
          }
      EXPECT_EQ(scale->reordered, p.layout == Layout::nhwc) << nb::to_repro(p);
    } else {
      EXPECT_EQ(s.dims, (std::array<std::int64_t, 4>{1, p.c, 1, 1}));
      for (std::int64_t c = 0; c < p.c; ++c) {
        EXPECT_EQ(s.offset(0, c, 0, 0), c);
      }
      EXPECT_FALSE(scale->reordered);
    }
    EXPECT_EQ(s.span(), p.param_count());
    for (Role r : {Role::bias, Role::dscale, Role::dbias}) {
      if (const TensorSpec* t = m.find(r)) {
        EXPECT_EQ(t->shape, s) << to_string(r);
        EXPECT_EQ(t->reordered, scale->reordered) << to_string(r);
      }
    }
  }
}

TEST(CudnnMapping, ParameterReorderingPlacesHarnessElements) {
  for (Layout l : nb::kAllLayouts) {
    const Problem p = problem(Method::layernorm, Pass::bwd, l, "n2c3h4w5");
    const NormMapping m = map_problem(p);
    const TensorSpec& spec = *m.find(Role::dscale);
    std::vector<float> host(static_cast<std::size_t>(p.param_count()));
    for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i);  // = c*H*W+h*W+w
    const std::vector<float> device = to_device_order(spec, host.data());
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          // x's memory order of one sample: NHWC puts c fastest.
          const std::int64_t at =
              l == Layout::nhwc ? (h * p.w + w) * p.c + c : (c * p.h + h) * p.w + w;
          ASSERT_EQ(device[at], static_cast<float>((c * p.h + h) * p.w + w));
        }
    std::vector<float> back(host.size(), -1.0f);
    from_device_order(spec, device.data(), back.data());
    EXPECT_EQ(back, host);
  }
}

std::set<Role> roles(const NormMapping& m) {
  std::set<Role> out;
  for (const auto& t : m.tensors) out.insert(t.role);
  return out;
}

TEST(CudnnMapping, TensorsOfEachPass) {
  using R = Role;
  const auto bn = [](Pass pass) {
    return map_problem(problem(Method::batchnorm, pass, Layout::nhwc, "n2c3h4w5"));
  };
  EXPECT_EQ(roles(bn(Pass::fwd_train)),
            (std::set<R>{R::x, R::y, R::scale, R::bias, R::mean, R::inv_variance,
                         R::running_mean_in, R::running_var_in, R::running_mean_out,
                         R::running_var_out, R::epsilon, R::exp_avg_factor}));
  EXPECT_EQ(roles(bn(Pass::fwd_infer)),
            (std::set<R>{R::x, R::y, R::scale, R::bias, R::mean, R::inv_variance}));
  EXPECT_EQ(roles(bn(Pass::bwd)), (std::set<R>{R::x, R::dy, R::dx, R::scale, R::mean,
                                               R::inv_variance, R::dscale, R::dbias}));
  const auto rms = [](Pass pass) {
    return map_problem(problem(Method::rmsnorm, pass, Layout::nchw, "t3d7"));
  };
  EXPECT_EQ(roles(rms(Pass::fwd_train)),
            (std::set<R>{R::x, R::y, R::scale, R::inv_variance, R::epsilon}));
  EXPECT_EQ(roles(rms(Pass::fwd_infer)), (std::set<R>{R::x, R::y, R::scale, R::epsilon}));
  EXPECT_EQ(roles(rms(Pass::bwd)),
            (std::set<R>{R::x, R::dy, R::dx, R::scale, R::inv_variance, R::dscale}));
  for (Method meth : {Method::layernorm, Method::instancenorm, Method::groupnorm}) {
    const std::string shape = meth == Method::groupnorm ? "n2c6h3w2g3" : "n2c3h4w5";
    EXPECT_EQ(roles(map_problem(problem(meth, Pass::fwd_train, Layout::nchw, shape))),
              (std::set<R>{R::x, R::y, R::scale, R::bias, R::mean, R::inv_variance, R::epsilon}));
    EXPECT_EQ(roles(map_problem(problem(meth, Pass::fwd_infer, Layout::nchw, shape))),
              (std::set<R>{R::x, R::y, R::scale, R::bias, R::epsilon}));
    EXPECT_EQ(
        roles(map_problem(problem(meth, Pass::bwd, Layout::nchw, shape))),
        (std::set<R>{R::x, R::dy, R::dx, R::scale, R::mean, R::inv_variance, R::dscale, R::dbias}));
  }
}

TEST(CudnnMapping, BindingsFlagsAndUniqueIds) {
  for (const Problem& p : all_problems()) {
    const NormMapping m = map_problem(p);
    std::set<std::int64_t> uids;
    for (const TensorSpec& t : m.tensors) {
      const std::string where = nb::to_repro(p) + " " + to_string(t.role);
      EXPECT_EQ(t.uid, static_cast<std::int64_t>(t.role) + 1) << where;
      EXPECT_TRUE(uids.insert(t.uid).second) << where;
      // Every tensor spans exactly the buffer it is copied from or to.
      if (auto n = binding_elements(t.binding, p)) {
        EXPECT_EQ(t.shape.span(), *n) << where;
      }
      const bool by_value = t.role == Role::epsilon || t.role == Role::exp_avg_factor;
      EXPECT_EQ(t.by_value, by_value) << where;
      EXPECT_EQ(t.binding == Binding::by_value, by_value) << where;
      if (by_value) {
        EXPECT_EQ(t.shape.dims, (std::array<std::int64_t, 4>{1, 1, 1, 1})) << where;
      }
      const bool data =
          t.role == Role::x || t.role == Role::y || t.role == Role::dy || t.role == Role::dx;
      EXPECT_EQ(t.data_type, data) << where;
      const bool output =
          t.role == Role::y || t.role == Role::dx || t.role == Role::dscale ||
          t.role == Role::dbias || t.role == Role::running_mean_out ||
          t.role == Role::running_var_out ||
          (p.pass == Pass::fwd_train && (t.role == Role::mean || t.role == Role::inv_variance));
      EXPECT_EQ(t.output, output) << where;
      switch (t.role) {
        case Role::scale:
          EXPECT_EQ(t.binding, p.affine ? Binding::gamma : Binding::ones) << where;
          break;
        case Role::bias:
          EXPECT_EQ(t.binding, p.affine ? Binding::beta : Binding::zeros) << where;
          break;
        case Role::dscale:
          EXPECT_EQ(t.binding, p.affine ? Binding::dgamma : Binding::scratch) << where;
          break;
        case Role::dbias:
          EXPECT_EQ(t.binding, p.affine ? Binding::dbeta : Binding::scratch) << where;
          break;
        case Role::mean:
          EXPECT_EQ(t.binding, p.pass == Pass::fwd_infer ? Binding::running_mean : Binding::mean);
          break;
        case Role::inv_variance:
          EXPECT_EQ(t.binding,
                    p.pass == Pass::fwd_infer ? Binding::invstd_of_running_var : Binding::invstd);
          break;
        case Role::running_mean_in:
        case Role::running_mean_out:
          EXPECT_EQ(t.binding, Binding::running_mean);
          break;
        case Role::running_var_in:
        case Role::running_var_out:
          EXPECT_EQ(t.binding, Binding::running_var);
          break;
        default:
          break;
      }
    }
    EXPECT_EQ(m.mode, norm_mode(p.method));
    EXPECT_FLOAT_EQ(m.epsilon, static_cast<float>(p.eps));
    const bool momentum = p.method == Method::batchnorm && p.pass == Pass::fwd_train;
    EXPECT_FLOAT_EQ(m.exp_avg_factor, momentum ? static_cast<float>(p.momentum) : 0.0f)
        << "cuDNN's exponentialAverageFactor is our momentum";
    EXPECT_EQ(m.kind, p.pass == Pass::bwd         ? GraphKind::norm_backward
                      : p.pass == Pass::fwd_train ? GraphKind::norm_forward_training
                                                  : GraphKind::norm_forward_inference);
  }
}

TEST(CudnnMapping, ModesAreCudnnsEnumValues) {
  // cudnnBackendNormMode_t (cudnn_graph_v9.h); graph.cpp static_asserts the same against the
  // header.
  EXPECT_EQ(static_cast<int>(norm_mode(Method::layernorm)), 0);
  EXPECT_EQ(static_cast<int>(norm_mode(Method::instancenorm)), 1);
  EXPECT_EQ(static_cast<int>(norm_mode(Method::batchnorm)), 2);
  EXPECT_EQ(static_cast<int>(norm_mode(Method::groupnorm)), 3);
  EXPECT_EQ(static_cast<int>(norm_mode(Method::rmsnorm)), 4);
}

TEST(CudnnMapping, FoldedBatchNormInference) {
  for (Layout l : nb::kAllLayouts)
    for (bool affine : {true, false}) {
      const Problem p = problem(Method::batchnorm, Pass::fwd_infer, l, "n2c3h4w5", affine);
      const NormMapping m = map_folded_batchnorm_inference(p);
      EXPECT_EQ(m.kind, GraphKind::folded_affine);
      EXPECT_EQ(roles(m), (std::set<Role>{Role::x, Role::y, Role::scale, Role::bias, Role::mean}));
      EXPECT_EQ(m.find(Role::scale)->binding, Binding::folded_scale);
      EXPECT_EQ(m.find(Role::mean)->binding, Binding::running_mean);
      EXPECT_EQ(m.find(Role::bias)->binding, affine ? Binding::beta : Binding::zeros);
      for (const TensorSpec& t : m.tensors)
        if (auto n = binding_elements(t.binding, p)) {
          EXPECT_EQ(t.shape.span(), *n);
        }
    }
  EXPECT_THROW(map_folded_batchnorm_inference(
                   problem(Method::batchnorm, Pass::fwd_train, Layout::nchw, "n2c3h4w5")),
               std::invalid_argument);
  EXPECT_THROW(map_folded_batchnorm_inference(
                   problem(Method::layernorm, Pass::fwd_infer, Layout::nchw, "t3d7")),
               std::invalid_argument);
}

TEST(CudnnMapping, InvalidProblemsAreRejected) {
  EXPECT_THROW(map_problem(problem(Method::groupnorm, Pass::fwd_train, Layout::nchw, "n2c6h2w2g4")),
               std::invalid_argument);  // C % G != 0
  EXPECT_THROW(map_problem(problem(Method::batchnorm, Pass::fwd_train, Layout::nchw, "n1c3h1w1")),
               std::invalid_argument);  // N*H*W == 1 in training
  EXPECT_THROW(map_legacy_batchnorm(problem(Method::layernorm, Pass::bwd, Layout::nchw, "t3d7")),
               std::invalid_argument);
}

TEST(CudnnMapping, LegacyDescriptorShapes) {
  for (Layout l : nb::kAllLayouts) {
    const Problem p = problem(Method::batchnorm, Pass::bwd, l, "n2c3h4w5");
    const LegacyBatchNormShapes s = map_legacy_batchnorm(p);
    EXPECT_EQ(s.data, map_problem(p).find(Role::x)->shape) << "legacy and graph x agree";
    EXPECT_EQ(s.param.dims, (std::array<std::int64_t, 4>{1, 3, 1, 1}));
    EXPECT_EQ(s.param.strides, (std::array<std::int64_t, 4>{3, 1, 1, 1}))
        << "cudnnDeriveBNTensorDescriptor's packed NCHW";
  }
}

TEST(CudnnMapping, HostConversions) {
  const float var[] = {3.0f, 15.0f, 0.0f};
  const std::vector<float> inv = invstd_of_running_var(var, 3, 1.0);
  EXPECT_FLOAT_EQ(inv[0], 0.5f);
  EXPECT_FLOAT_EQ(inv[1], 0.25f);
  EXPECT_FLOAT_EQ(inv[2], 1.0f);
  const float gamma[] = {2.0f, -4.0f, 3.0f};
  const std::vector<float> a = folded_scale(gamma, var, 3, 1.0);
  EXPECT_FLOAT_EQ(a[0], 1.0f);
  EXPECT_FLOAT_EQ(a[1], -1.0f);
  EXPECT_FLOAT_EQ(a[2], 3.0f);
  EXPECT_EQ(folded_scale(nullptr, var, 3, 1.0), inv) << "no affine: a = invstd";
}

TEST(CudnnMapping, EpsilonMinimumIsAnErrorNotAClamp) {
  Problem p = problem(Method::batchnorm, Pass::fwd_train, Layout::nchw, "n2c3h4w5");
  p.eps = 1e-6;
  EXPECT_FALSE(eps_below_minimum(p, 0.0));
  EXPECT_FALSE(eps_below_minimum(p, 1e-6));
  const auto why = eps_below_minimum(p, 1e-5);
  ASSERT_TRUE(why);
  EXPECT_EQ(*why, "eps 1e-06 is below CUDNN_BN_MIN_EPSILON (1e-05)");
}

// --- Semantics: cuDNN's normalization on the mapped tensors vs. the fp64 reference --------------

/// Offset in `small` of the element that logical element idx of `x` reads under cuDNN's
/// broadcasting: a dimension of size 1 is broadcast, an equal one indexed, one that divides x's
/// groups consecutive indices (GROUP norm: channel c belongs to group c / (C / G)).
std::int64_t broadcast_offset(const Tensor4d& small, const Tensor4d& x,
                              const std::array<std::int64_t, 4>& idx) {
  std::int64_t off = 0;
  for (int d = 0; d < 4; ++d) {
    std::int64_t i = 0;
    if (small.dims[d] == x.dims[d])
      i = idx[d];
    else if (small.dims[d] != 1) {
      EXPECT_EQ(x.dims[d] % small.dims[d], 0);
      i = idx[d] / (x.dims[d] / small.dims[d]);
    }
    off += i * small.strides[d];
  }
  return off;
}

template <class F>
void for_each_element(const Tensor4d& x, F f) {
  for (std::int64_t n = 0; n < x.dims[0]; ++n)
    for (std::int64_t c = 0; c < x.dims[1]; ++c)
      for (std::int64_t h = 0; h < x.dims[2]; ++h)
        for (std::int64_t w = 0; w < x.dims[3]; ++w) f(std::array<std::int64_t, 4>{n, c, h, w});
}

std::vector<double> random_values(std::size_t n, double lo, double hi, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

void expect_near_all(const std::vector<double>& got, const std::vector<double>& want, double rel,
                     const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (double v : want) scale = std::max(scale, std::abs(v));
  for (std::size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], rel * std::max(scale, 1e-300)) << what << " at " << i;
}

/// The statistics cuDNN computes for the mapping: mean and invstd over the elements of x that
/// broadcast to each statistics element (RMS: mean 0, invstd from the mean square).
void mapped_statistics(const NormMapping& m, const std::vector<double>& x, bool rms,
                       std::vector<double>& mean, std::vector<double>& invstd) {
  const Tensor4d& X = m.find(Role::x)->shape;
  const Tensor4d& S = m.find(Role::inv_variance)->shape;
  std::vector<double> sum(S.span()), count(S.span()), sq(S.span());
  for_each_element(X, [&](auto i) {
    const auto s = broadcast_offset(S, X, i);
    sum[s] += x[X.offset(i[0], i[1], i[2], i[3])];
    count[s] += 1;
  });
  mean.assign(S.span(), 0.0);
  if (!rms)
    for (std::size_t s = 0; s < sum.size(); ++s) mean[s] = sum[s] / count[s];
  for_each_element(X, [&](auto i) {
    const auto s = broadcast_offset(S, X, i);
    const double d = x[X.offset(i[0], i[1], i[2], i[3])] - mean[s];
    sq[s] += d * d;
  });
  invstd.resize(S.span());
  for (std::size_t s = 0; s < sq.size(); ++s)
    invstd[s] = 1.0 / std::sqrt(sq[s] / count[s] + m.epsilon);
}

/// Reference inputs of p in the harness's orders (x in p.layout, gamma C-major, ...).
nb::ref::Tensors reference_inputs(const Problem& p) {
  nb::ref::Tensors t;
  t.x = random_values(p.numel(), -2.0, 3.0, 1);
  if (p.affine) {
    t.gamma = random_values(p.param_count(), 0.5, 1.5, 2);
    if (p.has_beta()) t.beta = random_values(p.param_count(), -0.5, 0.5, 3);
  }
  if (p.method == Method::batchnorm) {
    t.running_mean = random_values(p.c, -0.5, 0.5, 4);
    t.running_var = random_values(p.c, 0.5, 1.5, 5);
  }
  if (p.pass == Pass::bwd) {
    t.dy = random_values(p.numel(), -1.0, 1.0, 6);
    nb::ref::statistics(p, t.x, t.mean, t.invstd);
  }
  return t;
}

double param_value(const std::vector<double>& v, std::int64_t off, double absent) {
  return v.empty() ? absent : v[off];
}

/// A harness-order (C-major) parameter vector in the device order of spec, as the backend uploads
/// it (to_device_order works on fp32; the values here are exact in fp32 only approximately, so
/// the permutation is applied to indices instead).
std::vector<double> device_order(const TensorSpec& spec, const std::vector<double>& host) {
  if (host.empty()) return host;
  std::vector<float> index(host.size());
  for (std::size_t i = 0; i < host.size(); ++i) index[i] = static_cast<float>(i);
  const std::vector<float> moved = to_device_order(spec, index.data());
  std::vector<double> out(moved.size());
  for (std::size_t i = 0; i < moved.size(); ++i) out[i] = host[static_cast<std::size_t>(moved[i])];
  return out;
}

/// The inverse of device_order, as the backend downloads dgamma/dbeta.
std::vector<double> harness_order(const TensorSpec& spec, const std::vector<double>& device) {
  std::vector<float> index(device.size()), where(device.size());
  for (std::size_t i = 0; i < device.size(); ++i) index[i] = static_cast<float>(i);
  from_device_order(spec, index.data(), where.data());
  std::vector<double> out(device.size());
  for (std::size_t i = 0; i < device.size(); ++i)
    out[i] = device[static_cast<std::size_t>(where[i])];
  return out;
}

TEST(CudnnMappingSemantics, ForwardTrainingReproducesTheReference) {
  for (const Problem& p : all_problems()) {
    if (p.pass != Pass::fwd_train) continue;
    const std::string where = nb::to_repro(p);
    // The reference stores eps as a double; cuDNN's is fp32: use the fp32 value on both sides.
    Problem pf = p;
    pf.eps = static_cast<float>(p.eps);
    const NormMapping m = map_problem(pf);
    nb::ref::Tensors ref = reference_inputs(pf);
    nb::ref::forward(pf, ref);
    const bool rms = p.method == Method::rmsnorm;
    std::vector<double> mean, invstd;
    mapped_statistics(m, ref.x, rms, mean, invstd);
    expect_near_all(invstd, ref.invstd, 1e-12, where + " invstd");
    if (!rms) expect_near_all(mean, ref.mean, 1e-12, where + " mean");

    const Tensor4d& X = m.find(Role::x)->shape;
    const Tensor4d& Y = m.find(Role::y)->shape;
    const Tensor4d& S = m.find(Role::inv_variance)->shape;
    const TensorSpec& scale = *m.find(Role::scale);
    const Tensor4d& P = scale.shape;
    const std::vector<double> gamma = device_order(scale, ref.gamma);
    const std::vector<double> beta = device_order(scale, ref.beta);
    std::vector<double> y(ref.y.size());
    for_each_element(X, [&](auto i) {
      const auto s = broadcast_offset(S, X, i);
      const auto q = broadcast_offset(P, X, i);
      const double xhat = (ref.x[X.offset(i[0], i[1], i[2], i[3])] - mean[s]) * invstd[s];
      y[Y.offset(i[0], i[1], i[2], i[3])] =
          xhat * param_value(gamma, q, 1.0) + param_value(beta, q, 0.0);
    });
    expect_near_all(y, ref.y, 1e-12, where + " y");
  }
}

TEST(CudnnMappingSemantics, BackwardReproducesTheReference) {
  for (const Problem& p : all_problems()) {
    if (p.pass != Pass::bwd) continue;
    const std::string where = nb::to_repro(p);
    const NormMapping m = map_problem(p);
    nb::ref::Tensors ref = reference_inputs(p);
    nb::ref::backward(p, ref);
    const bool rms = p.method == Method::rmsnorm;
    const Tensor4d& X = m.find(Role::x)->shape;
    const Tensor4d& DY = m.find(Role::dy)->shape;
    const Tensor4d& DX = m.find(Role::dx)->shape;
    const Tensor4d& S = m.find(Role::inv_variance)->shape;
    const TensorSpec& dscale = *m.find(Role::dscale);
    const Tensor4d& P = dscale.shape;
    EXPECT_EQ(m.find(Role::scale)->shape, P);
    const std::vector<double> gamma = device_order(dscale, ref.gamma);
    // The saved statistics cuDNN reads, laid out by the mapping (= the reference's order).
    const std::vector<double>& inv = ref.invstd;
    const std::vector<double> mean = rms ? std::vector<double>(inv.size(), 0.0) : ref.mean;
    std::vector<double> a(S.span()), b(S.span()), count(S.span());
    std::vector<double> dgamma(P.span()), dbeta(P.span()), dx(ref.dx.size());
    auto xhat_at = [&](auto i, std::int64_t s) {
      return (ref.x[X.offset(i[0], i[1], i[2], i[3])] - mean[s]) * inv[s];
    };
    for_each_element(X, [&](auto i) {
      const auto s = broadcast_offset(S, X, i), q = broadcast_offset(P, X, i);
      const double dy = ref.dy[DY.offset(i[0], i[1], i[2], i[3])];
      const double gdy = param_value(gamma, q, 1.0) * dy;
      a[s] += gdy;
      b[s] += gdy * xhat_at(i, s);
      count[s] += 1;
      dgamma[q] += dy * xhat_at(i, s);
      dbeta[q] += dy;
    });
    for_each_element(X, [&](auto i) {
      const auto s = broadcast_offset(S, X, i), q = broadcast_offset(P, X, i);
      const double gdy = param_value(gamma, q, 1.0) * ref.dy[DY.offset(i[0], i[1], i[2], i[3])];
      const double mean_a = rms ? 0.0 : a[s] / count[s];
      dx[DX.offset(i[0], i[1], i[2], i[3])] =
          inv[s] * (gdy - mean_a - xhat_at(i, s) * b[s] / count[s]);
    });
    expect_near_all(dx, ref.dx, 1e-10, where + " dx");
    if (p.affine) {
      expect_near_all(harness_order(dscale, dgamma), ref.dgamma, 1e-12, where + " dgamma");
      if (!rms) expect_near_all(harness_order(dscale, dbeta), ref.dbeta, 1e-12, where + " dbeta");
    }
  }
}

TEST(CudnnMappingSemantics, InferenceReproducesTheReference) {
  for (const Problem& p : all_problems()) {
    if (p.pass != Pass::fwd_infer) continue;
    const std::string where = nb::to_repro(p);
    Problem pf = p;
    pf.eps = static_cast<float>(p.eps);
    nb::ref::Tensors ref = reference_inputs(pf);
    nb::ref::forward(pf, ref);
    std::vector<NormMapping> mappings{map_problem(pf)};
    if (p.method == Method::batchnorm) mappings.push_back(map_folded_batchnorm_inference(pf));
    for (const NormMapping& m : mappings) {
      const Tensor4d& X = m.find(Role::x)->shape;
      const Tensor4d& Y = m.find(Role::y)->shape;
      const Tensor4d& P = m.find(Role::scale)->shape;
      std::vector<double> y(ref.y.size());
      if (p.method == Method::batchnorm) {
        // Running statistics, converted on the host as the backend does (fp32 results).
        std::vector<float> rv(ref.running_var.begin(), ref.running_var.end());
        std::vector<float> g(ref.gamma.begin(), ref.gamma.end());
        const std::vector<float> inv = invstd_of_running_var(rv.data(), p.c, pf.eps);
        const std::vector<float> a =
            folded_scale(p.affine ? g.data() : nullptr, rv.data(), p.c, pf.eps);
        const Tensor4d& M = m.find(Role::mean)->shape;
        const bool folded = m.kind == GraphKind::folded_affine;
        for_each_element(X, [&](auto i) {
          const auto c = broadcast_offset(M, X, i), q = broadcast_offset(P, X, i);
          const double centred = ref.x[X.offset(i[0], i[1], i[2], i[3])] - ref.running_mean[c];
          y[Y.offset(i[0], i[1], i[2], i[3])] =
              folded ? centred * a[q] + param_value(ref.beta, q, 0.0)
                     : centred * inv[c] * param_value(ref.gamma, q, 1.0) +
                           param_value(ref.beta, q, 0.0);
        });
        expect_near_all(y, ref.y, 1e-6, where + (folded ? " folded y" : " y"));  // fp32 a, invstd
      } else {
        std::vector<double> mean, invstd;
        NormMapping train = map_problem([&] {
          Problem t = pf;
          t.pass = Pass::fwd_train;
          return t;
        }());
        mapped_statistics(train, ref.x, p.method == Method::rmsnorm, mean, invstd);
        const Tensor4d& S = train.find(Role::inv_variance)->shape;
        const std::vector<double> gamma = device_order(*m.find(Role::scale), ref.gamma);
        const std::vector<double> beta = device_order(*m.find(Role::scale), ref.beta);
        for_each_element(X, [&](auto i) {
          const auto s = broadcast_offset(S, X, i), q = broadcast_offset(P, X, i);
          const double xhat = (ref.x[X.offset(i[0], i[1], i[2], i[3])] - mean[s]) * invstd[s];
          y[Y.offset(i[0], i[1], i[2], i[3])] =
              xhat * param_value(gamma, q, 1.0) + param_value(beta, q, 0.0);
        });
        expect_near_all(y, ref.y, 1e-12, where + " y");
      }
    }
  }
}

}  // namespace
}  // namespace nb_cudnn
