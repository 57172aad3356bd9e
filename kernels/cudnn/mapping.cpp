// Problem -> cuDNN tensor mapping (mapping.hpp). Pure C++; every shape rule is stated in the
// header.
#include "mapping.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace nb_cudnn {

const char* to_string(Role r) {
  switch (r) {
    case Role::x:
      return "x";
    case Role::y:
      return "y";
    case Role::dy:
      return "dy";
    case Role::dx:
      return "dx";
    case Role::scale:
      return "scale";
    case Role::bias:
      return "bias";
    case Role::mean:
      return "mean";
    case Role::inv_variance:
      return "inv_variance";
    case Role::running_mean_in:
      return "running_mean_in";
    case Role::running_var_in:
      return "running_var_in";
    case Role::running_mean_out:
      return "running_mean_out";
    case Role::running_var_out:
      return "running_var_out";
    case Role::dscale:
      return "dscale";
    case Role::dbias:
      return "dbias";
    case Role::epsilon:
      return "epsilon";
    case Role::exp_avg_factor:
      return "exp_avg_factor";
  }
  return "?";
}

const char* to_string(Binding b) {
  switch (b) {
    case Binding::x:
      return "x";
    case Binding::y:
      return "y";
    case Binding::dy:
      return "dy";
    case Binding::dx:
      return "dx";
    case Binding::gamma:
      return "gamma";
    case Binding::beta:
      return "beta";
    case Binding::mean:
      return "mean";
    case Binding::invstd:
      return "invstd";
    case Binding::running_mean:
      return "running_mean";
    case Binding::running_var:
      return "running_var";
    case Binding::dgamma:
      return "dgamma";
    case Binding::dbeta:
      return "dbeta";
    case Binding::ones:
      return "ones";
    case Binding::zeros:
      return "zeros";
    case Binding::scratch:
      return "scratch";
    case Binding::invstd_of_running_var:
      return "invstd_of_running_var";
    case Binding::folded_scale:
      return "folded_scale";
    case Binding::by_value:
      return "by_value";
  }
  return "?";
}

std::optional<std::int64_t> binding_elements(Binding b, const nb::Problem& p) {
  switch (b) {
    case Binding::x:
    case Binding::y:
    case Binding::dy:
    case Binding::dx:
      return p.numel();
    case Binding::gamma:
    case Binding::beta:
    case Binding::dgamma:
    case Binding::dbeta:
      return p.param_count();
    case Binding::mean:
    case Binding::invstd:
      return p.stats_count();
    case Binding::running_mean:
    case Binding::running_var:
    case Binding::invstd_of_running_var:
    case Binding::folded_scale:
      return p.c;
    case Binding::by_value:
      return 1;
    case Binding::ones:
    case Binding::zeros:
    case Binding::scratch:
      return std::nullopt;
  }
  return std::nullopt;
}

std::int64_t Tensor4d::span() const {
  std::int64_t last = 0;
  for (int d = 0; d < 4; ++d) last += (dims[d] - 1) * strides[d];
  return last + 1;
}

Tensor4d packed(std::array<std::int64_t, 4> dims, nb::Layout layout) {
  Tensor4d t;
  t.dims = dims;
  const std::int64_t n = dims[0], c = dims[1], h = dims[2], w = dims[3];
  (void)n;
  if (layout == nb::Layout::nchw)
    t.strides = {c * h * w, h * w, w, 1};
  else
    t.strides = {h * w * c, 1, w * c, c};
  return t;
}

NormMode norm_mode(nb::Method m) {
  switch (m) {
    case nb::Method::batchnorm:
      return NormMode::batch;
    case nb::Method::layernorm:
      return NormMode::layer;
    case nb::Method::groupnorm:
      return NormMode::group;
    case nb::Method::instancenorm:
      return NormMode::instance;
    case nb::Method::rmsnorm:
      return NormMode::rms;
  }
  throw std::invalid_argument("unknown method");
}

const TensorSpec* NormMapping::find(Role r) const {
  for (const auto& t : tensors)
    if (t.role == r) return &t;
  return nullptr;
}

namespace {

void require_valid_for_cudnn(const nb::Problem& p) {
  if (auto why = nb::validate(p))
    throw std::invalid_argument("cudnn mapping of " + nb::to_repro(p) + ": " + *why);
}

class Builder {
 public:
  explicit Builder(NormMapping& m) : m_(m) {}
  void add(Role role, const Tensor4d& shape, bool data_type, bool output, Binding binding,
           bool by_value = false) {
    TensorSpec t;
    t.role = role;
    t.uid = static_cast<std::int64_t>(role) + 1;
    t.shape = shape;
    t.data_type = data_type;
    t.by_value = by_value;
    t.output = output;
    t.binding = binding;
    m_.tensors.push_back(t);
  }
  /// Marks the parameter tensors of the row methods in NHWC as reordered (mapping.hpp).
  void reorder_params(const nb::Problem& p) {
    if (!p.is_rows() || p.layout != nb::Layout::nhwc) return;
    for (auto& t : m_.tensors)
      if (t.role == Role::scale || t.role == Role::bias || t.role == Role::dscale ||
          t.role == Role::dbias)
        t.reordered = true;
  }
  void finish() {
    std::sort(m_.tensors.begin(), m_.tensors.end(),
              [](const TensorSpec& a, const TensorSpec& b) { return a.role < b.role; });
  }

 private:
  NormMapping& m_;
};

const Tensor4d kScalar{{1, 1, 1, 1}, {1, 1, 1, 1}};

/// Shape of scale/bias/dscale/dbias: one sample of x for the row methods, else per channel.
Tensor4d param_shape(const nb::Problem& p) {
  if (p.is_rows()) return packed({1, p.c, p.h, p.w}, p.layout);
  return packed({1, p.c, 1, 1}, p.layout);
}

/// Shape of mean/inv_variance: size 1 along every reduced dimension.
Tensor4d stats_shape(const nb::Problem& p) {
  switch (p.method) {
    case nb::Method::batchnorm:
      return packed({1, p.c, 1, 1}, p.layout);
    case nb::Method::layernorm:
    case nb::Method::rmsnorm:
      return packed({p.n, 1, 1, 1}, p.layout);
    case nb::Method::instancenorm:
      return packed({p.n, p.c, 1, 1}, p.layout);
    case nb::Method::groupnorm:
      return packed({p.n, p.groups, 1, 1}, p.layout);
  }
  throw std::invalid_argument("unknown method");
}

}  // namespace

NormMapping map_problem(const nb::Problem& p) {
  require_valid_for_cudnn(p);
  NormMapping m;
  m.mode = norm_mode(p.method);
  m.epsilon = static_cast<float>(p.eps);
  Builder b(m);
  const Tensor4d data = packed({p.n, p.c, p.h, p.w}, p.layout);
  const Tensor4d param = param_shape(p);
  const Tensor4d stats = stats_shape(p);
  const bool rms = p.method == nb::Method::rmsnorm;
  const bool bn = p.method == nb::Method::batchnorm;
  const Binding gamma = p.affine ? Binding::gamma : Binding::ones;
  const Binding beta = p.affine ? Binding::beta : Binding::zeros;

  b.add(Role::x, data, true, false, Binding::x);
  switch (p.pass) {
    case nb::Pass::fwd_train:
      m.kind = GraphKind::norm_forward_training;
      b.add(Role::y, data, true, true, Binding::y);
      b.add(Role::scale, param, false, false, gamma);
      if (!rms) b.add(Role::bias, param, false, false, beta);
      if (!rms) b.add(Role::mean, stats, false, true, Binding::mean);
      b.add(Role::inv_variance, stats, false, true, Binding::invstd);
      b.add(Role::epsilon, kScalar, false, false, Binding::by_value, true);
      if (bn) {
        const Tensor4d running = packed({1, p.c, 1, 1}, p.layout);
        m.exp_avg_factor = static_cast<float>(p.momentum);
        b.add(Role::running_mean_in, running, false, false, Binding::running_mean);
        b.add(Role::running_var_in, running, false, false, Binding::running_var);
        b.add(Role::running_mean_out, running, false, true, Binding::running_mean);
        b.add(Role::running_var_out, running, false, true, Binding::running_var);
        b.add(Role::exp_avg_factor, kScalar, false, false, Binding::by_value, true);
      }
      break;
    case nb::Pass::fwd_infer:
      m.kind = GraphKind::norm_forward_inference;
      b.add(Role::y, data, true, true, Binding::y);
      b.add(Role::scale, param, false, false, gamma);
      if (!rms) b.add(Role::bias, param, false, false, beta);
      if (bn) {
        // Normalises with the running statistics: cuDNN takes them as mean and inverse std.
        b.add(Role::mean, stats, false, false, Binding::running_mean);
        b.add(Role::inv_variance, stats, false, false, Binding::invstd_of_running_var);
      } else {
        // BatchNorm inference takes the inverse std, eps already inside (cudnn-frontend's
        // batchnorm_inference node sets no epsilon either).
        b.add(Role::epsilon, kScalar, false, false, Binding::by_value, true);
      }
      break;
    case nb::Pass::bwd:
      m.kind = GraphKind::norm_backward;
      b.add(Role::dy, data, true, false, Binding::dy);
      b.add(Role::dx, data, true, true, Binding::dx);
      b.add(Role::scale, param, false, false, gamma);
      if (!rms) b.add(Role::mean, stats, false, false, Binding::mean);
      b.add(Role::inv_variance, stats, false, false, Binding::invstd);
      b.add(Role::dscale, param, false, true, p.affine ? Binding::dgamma : Binding::scratch);
      if (!rms)
        b.add(Role::dbias, param, false, true, p.affine ? Binding::dbeta : Binding::scratch);
      break;
  }
  b.reorder_params(p);
  b.finish();
  return m;
}

NormMapping map_folded_batchnorm_inference(const nb::Problem& p) {
  require_valid_for_cudnn(p);
  if (p.method != nb::Method::batchnorm || p.pass != nb::Pass::fwd_infer)
    throw std::invalid_argument("folded inference graph is for batchnorm fwd_infer, not " +
                                nb::to_repro(p));
  NormMapping m;
  m.kind = GraphKind::folded_affine;
  m.mode = NormMode::batch;
  m.epsilon = static_cast<float>(p.eps);
  Builder b(m);
  const Tensor4d data = packed({p.n, p.c, p.h, p.w}, p.layout);
  const Tensor4d channel = packed({1, p.c, 1, 1}, p.layout);
  b.add(Role::x, data, true, false, Binding::x);
  b.add(Role::y, data, true, true, Binding::y);
  b.add(Role::scale, channel, false, false, Binding::folded_scale);
  b.add(Role::bias, channel, false, false, p.affine ? Binding::beta : Binding::zeros);
  b.add(Role::mean, channel, false, false, Binding::running_mean);
  b.finish();
  return m;
}

std::vector<float> invstd_of_running_var(const float* running_var, std::int64_t channels,
                                         double eps) {
  std::vector<float> out(static_cast<std::size_t>(channels));
  for (std::int64_t c = 0; c < channels; ++c)
    out[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps));
  return out;
}

std::vector<float> folded_scale(const float* gamma, const float* running_var, std::int64_t channels,
                                double eps) {
  std::vector<float> out(static_cast<std::size_t>(channels));
  for (std::int64_t c = 0; c < channels; ++c) {
    const double g = gamma ? static_cast<double>(gamma[c]) : 1.0;
    out[c] = static_cast<float>(g / std::sqrt(static_cast<double>(running_var[c]) + eps));
  }
  return out;
}

std::vector<float> to_device_order(const TensorSpec& spec, const float* host) {
  const auto& d = spec.shape.dims;
  std::vector<float> device(static_cast<std::size_t>(spec.shape.span()));
  for (std::int64_t c = 0; c < d[1]; ++c)
    for (std::int64_t h = 0; h < d[2]; ++h)
      for (std::int64_t w = 0; w < d[3]; ++w)
        device[spec.shape.offset(0, c, h, w)] = host[(c * d[2] + h) * d[3] + w];
  return device;
}

void from_device_order(const TensorSpec& spec, const float* device, float* host) {
  const auto& d = spec.shape.dims;
  for (std::int64_t c = 0; c < d[1]; ++c)
    for (std::int64_t h = 0; h < d[2]; ++h)
      for (std::int64_t w = 0; w < d[3]; ++w)
        host[(c * d[2] + h) * d[3] + w] = device[spec.shape.offset(0, c, h, w)];
}

LegacyBatchNormShapes map_legacy_batchnorm(const nb::Problem& p) {
  require_valid_for_cudnn(p);
  if (p.method != nb::Method::batchnorm)
    throw std::invalid_argument("cudnn_legacy implements batchnorm only, not " + nb::to_repro(p));
  LegacyBatchNormShapes s;
  s.data = packed({p.n, p.c, p.h, p.w}, p.layout);
  s.param = packed({1, p.c, 1, 1}, nb::Layout::nchw);
  return s;
}

std::optional<std::string> eps_below_minimum(const nb::Problem& p, double min_epsilon) {
  if (p.eps >= min_epsilon) return std::nullopt;
  char buf[128];
  std::snprintf(buf, sizeof buf, "eps %g is below CUDNN_BN_MIN_EPSILON (%g)", p.eps, min_epsilon);
  return std::string(buf);
}

}  // namespace nb_cudnn
