// Backend `onednn`: oneDNN's own normalization primitives, run as a peer in the same harness
// (same inputs, threads and timer as our kernels). BatchNorm is `batch_normalization`, LayerNorm
// `layer_normalization` over the (N, C*H*W) view of x, RMSNorm the same with the `rms_norm` flag,
// GroupNorm `group_normalization`, InstanceNorm `group_normalization` with G = C. The last three
// exist only in newer oneDNN (group normalization since v3.3, the RMS flag later); CMake tests
// the headers for them (NB_ONEDNN_HAS_GROUP_NORMALIZATION, NB_ONEDNN_HAS_RMS_NORM) and only what
// the found oneDNN has is registered.
//
// Primitive descriptors and primitives are created in instantiate() (untimed); run() executes the
// primitive on memory objects that wrap the harness buffers (no copies) and waits for the stream.
// The CSV's impl_info is primitive_desc::impl_info_str(), e.g. "bnorm_jit:avx512_core".
//
// Convention mapping (pure conventions, done in the wrapper as a framework on top of oneDNN does;
// each is O(statistics), not O(numel), and none is timed: run() is the primitive alone):
//   - oneDNN saves the biased variance, the harness saves invstd = 1/sqrt(var + eps): fwd_train
//     converts after the primitive (sync_outputs), bwd converts the given invstd back to the
//     variance oneDNN takes (instantiate; var = 1/invstd^2 - eps, adjusted so that oneDNN's own
//     fp32 1/sqrtf(var + eps) reproduces invstd bit for bit). eps sits inside the square root in
//     both conventions, so nothing else changes.
//   - oneDNN's batch normalization does not keep running statistics (a framework does):
//     fwd_train updates running_mean/running_var with momentum from the batch mean and the
//     unbiased variance var * M / (M - 1), M = N*H*W (CONVENTIONS section 1), in sync_outputs.
//   - Without affine, backward is prop_kind::backward_data (dx only; there is no dgamma).
//
// Threads: the oneDNN wheel used here (onednn-cpu-gomp) is built with the GNU OpenMP runtime and
// shares the harness's libgomp, so it runs omp_get_max_threads() threads like our kernels.
//
// Limits: LayerNorm/RMSNorm of an NHWC image with affine, C > 1 and H*W > 1 is unsupported
// (oneDNN normalises the last logical dimension and takes scale/shift in its memory order, HWC,
// while normalized_shape (C, H, W) is C-major); what oneDNN itself cannot create on this CPU is
// reported with oneDNN's error ("could not create a primitive descriptor ...").
#include <fmt/format.h>
#include <omp.h>

#include <cmath>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "registry.hpp"

namespace nb::onednn {
namespace {

using dnnl::memory;
using dnnl::normalization_flags;
using dnnl::prop_kind;
using Dims = memory::dims;

std::string version() {
  const dnnl_version_t* v = dnnl_version();
  return fmt::format("{}.{}.{}", v->major, v->minor, v->patch);
}

dnnl::engine& engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

memory::data_type data_type(DType d) {
  switch (d) {
    case DType::f32:
      return memory::data_type::f32;
    case DType::bf16:
      return memory::data_type::bf16;
    case DType::f16:
      return memory::data_type::f16;
  }
  return memory::data_type::undef;
}

/// Memory descriptors of one problem: x/y/dy/dx, gamma/beta, and the saved statistics.
struct Descs {
  memory::desc data, param, stats;
};

Descs descs(const Problem& p) {
  const auto dt = data_type(p.dtype);
  const auto f32 = memory::data_type::f32;
  const auto plain = p.layout == Layout::nchw ? memory::format_tag::nchw : memory::format_tag::nhwc;
  Descs d;
  if (p.is_rows()) {
    // All C*H*W elements of a sample are one row of the (N, C*H*W) matrix (in NHWC that row is
    // in HWC order, which unsupported_reason() allows only where it equals the C-major order).
    d.data = memory::desc({p.n, p.c * p.spatial()}, dt, memory::format_tag::ab);
    d.param = memory::desc({p.c * p.spatial()}, f32, memory::format_tag::a);
    d.stats = memory::desc({p.n}, f32, memory::format_tag::a);
  } else {
    d.data = memory::desc({p.n, p.c, p.h, p.w}, dt, plain);
    d.param = memory::desc({p.c}, f32, memory::format_tag::a);
    d.stats = p.method == Method::batchnorm
                  ? memory::desc({p.c}, f32, memory::format_tag::a)
                  : memory::desc({p.n, p.effective_groups()}, f32, memory::format_tag::ab);
  }
  return d;
}

normalization_flags flags(const Problem& p, bool global_stats) {
  auto f = normalization_flags::none;
  if (p.affine) f |= normalization_flags::use_scale;
  if (p.has_beta()) f |= normalization_flags::use_shift;
  if (global_stats) f |= normalization_flags::use_global_stats;
#ifdef NB_ONEDNN_HAS_RMS_NORM
  if (p.method == Method::rmsnorm) f |= normalization_flags::rms_norm;
#endif
  return f;
}

/// The primitive descriptor that run() executes: the forward one (training or inference), or for
/// bwd the backward one, created with its training forward as the hint oneDNN requires.
dnnl::primitive_desc pass_pd(const Problem& p) {
  const Descs d = descs(p);
  const float eps = static_cast<float>(p.eps);
  const bool infer = p.pass == Pass::fwd_infer;
  const bool bwd = p.pass == Pass::bwd;
  const auto fprop = infer ? prop_kind::forward_inference : prop_kind::forward_training;
  const auto bprop = p.affine ? prop_kind::backward : prop_kind::backward_data;
  const normalization_flags f = flags(p, /*global_stats=*/infer && p.method == Method::batchnorm);
  switch (p.method) {
    case Method::batchnorm: {
      dnnl::batch_normalization_forward::primitive_desc fwd(engine(), fprop, d.data, d.data, eps,
                                                            f);
      if (!bwd) return fwd;
      return dnnl::batch_normalization_backward::primitive_desc(engine(), bprop, d.data, d.data,
                                                                d.data, eps, f, fwd);
    }
    case Method::layernorm:
    case Method::rmsnorm: {
      dnnl::layer_normalization_forward::primitive_desc fwd(engine(), fprop, d.data, d.data,
                                                            d.stats, eps, f);
      if (!bwd) return fwd;
      return dnnl::layer_normalization_backward::primitive_desc(engine(), bprop, d.data, d.data,
                                                                d.data, d.stats, eps, f, fwd);
    }
    case Method::groupnorm:
    case Method::instancenorm: {
#ifdef NB_ONEDNN_HAS_GROUP_NORMALIZATION
      const memory::dim groups = p.effective_groups();
      dnnl::group_normalization_forward::primitive_desc fwd(engine(), fprop, d.data, d.data, groups,
                                                            eps, f);
      if (!bwd) return fwd;
      return dnnl::group_normalization_backward::primitive_desc(engine(), bprop, d.data, d.data,
                                                                d.data, groups, eps, f, fwd);
#else
      break;
#endif
    }
  }
  throw std::logic_error("onednn: method not built in: " + to_repro(p));
}

/// The reason a problem is not handled, else nullopt (creates, but does not run, the pds).
std::optional<std::string> why_unsupported(const Problem& p) {
  if (auto why = validate(p)) return "invalid problem: " + *why;
  if (p.is_rows() && p.layout == Layout::nhwc && p.affine && p.c > 1 && p.spatial() > 1)
    return "oneDNN layer_normalization takes scale/shift in the memory order of the normalized "
           "dimension (HWC for NHWC), not normalized_shape (C, H, W) order";
  try {
    pass_pd(p);
  } catch (const dnnl::error& e) {
    return fmt::format("oneDNN {}: {}", version(), e.what());
  }
  return std::nullopt;
}

/// The variance oneDNN must be given for it to use the saved invstd: var = 1/invstd^2 - eps
/// (in fp64), then moved by a few fp32 ulps, if needed, until oneDNN's own fp32 evaluation
/// 1 / sqrt(var + eps) gives back invstd exactly. Near-degenerate groups (e.g. two elements,
/// where dx is a difference of nearly equal terms) make dx sensitive to a 1-ulp change of invstd,
/// so the round trip has to be exact, not merely close.
float variance_for_invstd(float invstd, double eps) {
  const double s = invstd;
  const float var = static_cast<float>(1.0 / (s * s) - eps);
  const float eps_f = static_cast<float>(eps);
  auto invstd_of = [&](float v) { return 1.0f / std::sqrt(v + eps_f); };
  if (invstd_of(var) == invstd) return var;
  float lo = var, hi = var;
  for (int step = 0; step < 8; ++step) {
    lo = std::nextafter(lo, -INFINITY);
    hi = std::nextafter(hi, INFINITY);
    if (lo >= 0 && invstd_of(lo) == invstd) return lo;
    if (invstd_of(hi) == invstd) return hi;
  }
  return var;
}

/// Whole-memory wrapper of a harness buffer (oneDNN memory objects take non-const handles; the
/// primitive only reads its inputs).
memory wrap(const memory::desc& md, const void* ptr) {
  return memory(md, engine(), const_cast<void*>(ptr));
}

class OneDnnInstance final : public Instance {
 public:
  OneDnnInstance(const Problem& p, const KernelArgs& a) : problem_(p), args_(a), stream_(engine()) {
    const Descs d = descs(p);
    const dnnl::primitive_desc pd = pass_pd(p);
    primitive_ = dnnl::primitive(pd);
    info_ = pd.impl_info_str();
    const bool training = p.pass != Pass::fwd_infer;
    // oneDNN's variance: the primitive's output (fwd_train), its input (bwd), or the running
    // variance (batchnorm fwd_infer); the harness's invstd is converted to or from it.
    if (training) variance_.resize(static_cast<std::size_t>(p.stats_count()));
    // RMSNorm has no mean in the harness; oneDNN may still want a buffer for it.
    if (training && !a.mean) scratch_mean_.resize(static_cast<std::size_t>(p.stats_count()));
    float* mean = a.mean ? a.mean : scratch_mean_.data();

    auto& m = exec_args_;
    if (p.pass == Pass::bwd) {
      m[DNNL_ARG_SRC] = wrap(d.data, a.x);
      m[DNNL_ARG_DIFF_DST] = wrap(d.data, a.dy);
      m[DNNL_ARG_DIFF_SRC] = wrap(d.data, a.dx);
      if (a.dgamma) m[DNNL_ARG_DIFF_SCALE] = wrap(d.param, a.dgamma);
      if (a.dbeta) m[DNNL_ARG_DIFF_SHIFT] = wrap(d.param, a.dbeta);
    } else {
      m[DNNL_ARG_SRC] = wrap(d.data, a.x);
      m[DNNL_ARG_DST] = wrap(d.data, a.y);
    }
    if (a.gamma) m[DNNL_ARG_SCALE] = wrap(d.param, a.gamma);
    if (a.beta && p.pass != Pass::bwd) m[DNNL_ARG_SHIFT] = wrap(d.param, a.beta);
    if (p.pass == Pass::bwd && p.is_rows() && p.has_beta()) {
      // oneDNN's layer normalization backward takes the shift as an input although dx, dgamma
      // and dbeta do not depend on it; the harness gives bwd no beta, so it gets zeros.
      zero_shift_.assign(static_cast<std::size_t>(p.param_count()), 0.0f);
      m[DNNL_ARG_SHIFT] = wrap(d.param, a.beta ? a.beta : zero_shift_.data());
    }
    if (training) {
      if (pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_MEAN).get_size() != 0)
        m[DNNL_ARG_MEAN] = wrap(d.stats, mean);
      m[DNNL_ARG_VARIANCE] = wrap(d.stats, variance_.data());
    } else if (p.method == Method::batchnorm) {
      m[DNNL_ARG_MEAN] = wrap(d.stats, a.running_mean);
      m[DNNL_ARG_VARIANCE] = wrap(d.stats, a.running_var);
    }
    // bwd: the saved statistics in oneDNN's form, as a framework on oneDNN keeps them from the
    // forward (the harness's saved invstd is fixed for the instance).
    if (p.pass == Pass::bwd)
      for (std::size_t i = 0; i < variance_.size(); ++i)
        variance_[i] = variance_for_invstd(a.invstd[i], p.eps);
    const memory::desc ws = pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_WORKSPACE);
    if (ws.get_size() != 0) m[DNNL_ARG_WORKSPACE] = memory(ws, engine());
  }

  /// The primitive alone: the statistics conversions happen outside the timed region.
  void run() override {
    primitive_.execute(stream_, exec_args_);
    stream_.wait();
  }

  /// fwd_train: oneDNN's variance -> the harness's invstd, and the running statistics a
  /// framework keeps (O(statistics), after the primitive).
  void sync_outputs() override {
    const Problem& p = problem_;
    if (p.pass != Pass::fwd_train) return;
    const double m = static_cast<double>(p.reduction_size());
    for (std::size_t i = 0; i < variance_.size(); ++i) {
      const double var = variance_[i];
      args_.invstd[i] = static_cast<float>(1.0 / std::sqrt(var + p.eps));
      if (p.method != Method::batchnorm) continue;
      const double mom = p.momentum;
      args_.running_mean[i] =
          static_cast<float>((1 - mom) * args_.running_mean[i] + mom * args_.mean[i]);
      args_.running_var[i] =
          static_cast<float>((1 - mom) * args_.running_var[i] + mom * var * m / (m - 1));
    }
  }

  std::string info() const override { return info_; }

 private:
  Problem problem_;
  KernelArgs args_;
  dnnl::stream stream_;
  dnnl::primitive primitive_;
  std::unordered_map<int, memory> exec_args_;
  std::vector<float> variance_, scratch_mean_, zero_shift_;
  std::string info_;
};

/// A small problem of the given kind, to ask oneDNN whether it has such a primitive at all.
Problem probe_problem(Method m, Pass pass, DType dt, Layout l) {
  Problem p;
  p.method = m;
  p.pass = pass;
  p.dtype = dt;
  p.layout = l;
  p.n = 2;
  p.c = 16;
  p.h = p.w = 4;
  if (m == Method::groupnorm) p.groups = 4;
  if (p.is_rows()) p.h = p.w = 1;
  return p;
}

/// One (method, pass, dtype, layout) of oneDNN. Available when oneDNN can create its primitive
/// on this CPU (asked once, lazily: oneDNN has, e.g., no f16 normalization without AVX512-FP16).
class OneDnnImplementation final : public Implementation {
 public:
  explicit OneDnnImplementation(Problem probe) : probe_(probe) {}

  std::optional<std::string> unavailable_reason() const override {
    std::call_once(probed_, [&] {
      try {
        if (auto why = why_unsupported(probe_))
          unavailable_ = *why + " (on " + to_repro(probe_) + ")";
      } catch (const std::exception& e) {
        unavailable_ = std::string("oneDNN: ") + e.what();
      }
    });
    return unavailable_;
  }
  std::optional<std::string> unsupported_reason(const Problem& p) const override {
    return why_unsupported(p);
  }
  std::unique_ptr<Instance> instantiate(const Problem& p, const KernelArgs& a) override {
    return std::make_unique<OneDnnInstance>(p, a);
  }

 private:
  Problem probe_;
  mutable std::once_flag probed_;
  mutable std::optional<std::string> unavailable_;
};

}  // namespace
}  // namespace nb::onednn

NB_REGISTER_BACKEND(onednn) {
  using namespace nb;
  std::vector<Method> methods = {Method::batchnorm, Method::layernorm};
#ifdef NB_ONEDNN_HAS_RMS_NORM
  methods.push_back(Method::rmsnorm);
#endif
#ifdef NB_ONEDNN_HAS_GROUP_NORMALIZATION
  methods.push_back(Method::groupnorm);
  methods.push_back(Method::instancenorm);
#endif
  for (Method m : methods)
    for (Pass p : kAllPasses)
      for (DType dt : kAllDTypes)
        for (Layout l : kAllLayouts)
          register_implementation(
              "onednn",
              std::make_shared<onednn::OneDnnImplementation>(onednn::probe_problem(m, p, dt, l)),
              {m}, {p}, {dt}, {l});
}
