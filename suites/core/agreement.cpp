#include "agreement.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace nb {

std::string_view to_string(Output o) {
  switch (o) {
    case Output::y:
      return "y";
    case Output::mean:
      return "mean";
    case Output::invstd:
      return "invstd";
    case Output::running_mean:
      return "running_mean";
    case Output::running_var:
      return "running_var";
    case Output::dx:
      return "dx";
    case Output::dgamma:
      return "dgamma";
    case Output::dbeta:
      return "dbeta";
  }
  return "?";
}

std::string_view to_string(Status s) {
  switch (s) {
    case Status::pass:
      return "PASS";
    case Status::fail:
      return "FAIL";
    case Status::skip:
      return "SKIP";
  }
  return "?";
}

std::vector<Output> outputs_of(const Problem& p) {
  std::vector<Output> o;
  if (p.pass == Pass::bwd) {
    o.push_back(Output::dx);
    if (p.affine) o.push_back(Output::dgamma);
    if (p.has_beta()) o.push_back(Output::dbeta);
    return o;
  }
  o.push_back(Output::y);
  if (p.pass == Pass::fwd_train) {
    if (p.method != Method::rmsnorm) o.push_back(Output::mean);
    o.push_back(Output::invstd);
    if (p.method == Method::batchnorm) {
      o.push_back(Output::running_mean);
      o.push_back(Output::running_var);
    }
  }
  return o;
}

double conditioning(const Problem& p, const CaseInputs& in, const ref::Tensors& ref) {
  if (p.method == Method::rmsnorm) return 1.0;
  std::vector<double> mean, invstd;
  if (p.pass == Pass::bwd) {
    mean = in.mean.to_double();
    invstd = in.invstd.to_double();
  } else if (p.pass == Pass::fwd_train) {
    mean = ref.mean;
    invstd = ref.invstd;
  } else {
    ref::statistics(p, in.x.to_double(), mean, invstd);
  }
  double k = 1.0;
  for (std::size_t i = 0; i < mean.size(); ++i) k = std::max(k, std::abs(mean[i]) * invstd[i]);
  return k;
}

double tolerance(DType out, std::int64_t reduction_size, double kappa) {
  return 4.0 * unit_roundoff(out) + 8.0 * unit_roundoff(DType::f32) * (1.0 + kappa) *
                                        std::log2(2.0 + static_cast<double>(reduction_size));
}

namespace {

const HostTensor& got_tensor(const CaseOutputs& g, Output o) {
  switch (o) {
    case Output::y:
      return g.y;
    case Output::mean:
      return g.mean;
    case Output::invstd:
      return g.invstd;
    case Output::running_mean:
      return g.running_mean;
    case Output::running_var:
      return g.running_var;
    case Output::dx:
      return g.dx;
    case Output::dgamma:
      return g.dgamma;
    case Output::dbeta:
      return g.dbeta;
  }
  return g.y;
}

const std::vector<double>& ref_tensor(const ref::Tensors& r, Output o) {
  switch (o) {
    case Output::y:
      return r.y;
    case Output::mean:
      return r.mean;
    case Output::invstd:
      return r.invstd;
    case Output::running_mean:
      return r.running_mean;
    case Output::running_var:
      return r.running_var;
    case Output::dx:
      return r.dx;
    case Output::dgamma:
      return r.dgamma;
    case Output::dbeta:
      return r.dbeta;
  }
  return r.y;
}

OutputAgreement compare_one(Output o, const HostTensor& got, const std::vector<double>& ref,
                            double threshold) {
  // A correctly rounded value in the dtype's subnormal range is off by up to half the subnormal
  // spacing in absolute terms, whatever its relative error: that much is not counted.
  const double tiny = 0.5 * std::ldexp(1.0, -(got.dtype() == DType::f16    ? 24
                                              : got.dtype() == DType::bf16 ? 133
                                                                           : 149));
  OutputAgreement a{o, 0, 0, threshold, -1, {}};
  if (got.numel() != ref.size()) {
    a.failure =
        fmt::format("{} has {} elements, reference {}", to_string(o), got.numel(), ref.size());
    return a;
  }
  const std::size_t n = ref.size();
  double sumsq = 0;
  for (double v : ref) sumsq += v * v;
  const double rms = n ? std::sqrt(sumsq / static_cast<double>(n)) : 0.0;
  std::size_t got_zeros = 0, ref_zeros = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double g = got.get(i), r = ref[i];
    if (!std::isfinite(g) && std::isfinite(r)) {
      a.failure = fmt::format("{}[{}] = {} where the reference is {}", to_string(o), i, g, r);
      a.max_abs_err = a.max_rel_err = INFINITY;
      a.worst_index = static_cast<std::int64_t>(i);
      return a;
    }
    got_zeros += g == 0.0;
    ref_zeros += std::abs(r) <= tiny;  // zero once rounded to the dtype
    const double abs_err = std::abs(g - r);
    const double floor = std::max(std::abs(r), rms);
    const double counted = std::max(0.0, abs_err - tiny);
    const double rel_err = floor > 0 ? counted / floor : counted;
    a.max_abs_err = std::max(a.max_abs_err, abs_err);
    if (rel_err > a.max_rel_err || a.worst_index < 0) {
      a.max_rel_err = rel_err;
      a.worst_index = static_cast<std::int64_t>(i);
    }
  }
  if (n >= 8 && got_zeros > ref_zeros + n / 2) {
    a.failure = fmt::format("{} is mostly zeros ({} of {}) where the reference is not",
                            to_string(o), got_zeros, n);
  } else if (!(a.max_rel_err <= threshold)) {
    a.failure = fmt::format(
        "{} error {:.3g} > threshold {:.3g} at index {} (got {:.9g}, want {:.9g})", to_string(o),
        a.max_rel_err, threshold, a.worst_index, got.get(static_cast<std::size_t>(a.worst_index)),
        ref[static_cast<std::size_t>(a.worst_index)]);
  }
  return a;
}

double rms(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return v.empty() ? 0.0 : std::sqrt(s / static_cast<double>(v.size()));
}

}  // namespace

double backward_cancellation(const Problem& p, const CaseInputs& in, const ref::Tensors& ref) {
  if (p.pass != Pass::bwd) return 0.0;
  double max_gamma = 1.0, max_invstd = 0.0;
  if (!in.gamma.empty()) {
    max_gamma = 0.0;
    for (double g : in.gamma.to_double()) max_gamma = std::max(max_gamma, std::abs(g));
  }
  for (double v : in.invstd.to_double()) max_invstd = std::max(max_invstd, v);
  const double terms = rms(in.dy.to_double()) * max_gamma * max_invstd;
  const double out = rms(ref.dx);
  if (!(out > 0)) return 0.0;
  return std::max(1.0, terms / out);
}

Agreement compare(const Problem& p, const CaseInputs& in, const CaseOutputs& got,
                  const ref::Tensors& ref) {
  Agreement ag;
  const double kappa = conditioning(p, in, ref);
  double worst_ratio = -1;
  for (Output o : outputs_of(p)) {
    const DType out_dt = (o == Output::y || o == Output::dx) ? p.dtype : DType::f32;
    // Saved statistics and running statistics come from a reduction over M elements as well;
    // dgamma/dbeta sum over N * (elements per parameter), bounded by numel.
    const std::int64_t m =
        (o == Output::dgamma || o == Output::dbeta) ? p.numel() : p.reduction_size();
    const double k = o == Output::dx ? kappa + backward_cancellation(p, in, ref) : kappa;
    OutputAgreement a =
        compare_one(o, got_tensor(got, o), ref_tensor(ref, o), tolerance(out_dt, m, k));
    const double ratio = a.failure.empty() ? a.max_rel_err / a.threshold : INFINITY;
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      ag.worst_output = std::string(to_string(o));
      ag.max_abs_err = a.max_abs_err;
      ag.max_rel_err = a.max_rel_err;
      ag.threshold = a.threshold;
    }
    if (!a.failure.empty() && ag.reason.empty()) ag.reason = a.failure;
    ag.outputs.push_back(std::move(a));
  }
  ag.status = ag.reason.empty() ? Status::pass : Status::fail;
  return ag;
}

}  // namespace nb
