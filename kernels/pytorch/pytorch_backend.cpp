// Backend `pytorch`: PyTorch's CPU operators as a peer, called through libtorch's C++ API (the
// `torch` wheel's libtorch_cpu.so and headers), so the timed region holds no Python. Each pass
// calls the ATen operator that torch.nn.functional reaches on CPU:
//   batchnorm     native_batch_norm (train: batch statistics, running statistics updated in place
//                 with the unbiased variance; infer: running statistics),
//                 native_batch_norm_backward
//   layernorm     native_layer_norm, native_layer_norm_backward (normalized_shape (C, H, W), or (D)
//                 for (T, D) rows)
//   groupnorm     native_group_norm, native_group_norm_backward
//   instancenorm  what at::instance_norm does: x.contiguous() viewed as (1, N*C, H, W), gamma and
//                 beta repeated N times, native_batch_norm; backward native_batch_norm_backward on
//                 the same view, dgamma/dbeta summed over N (the backward of repeat). fwd_infer
//                 calls at::instance_norm itself. Saved statistics are the (N*C) = (N, C) ones.
//   rmsnorm       _fused_rms_norm (train: y and rstd), rms_norm (infer); backward is autograd
//                 through rms_norm's CPU decomposition (PyTorch has no CPU RMSNorm backward
//                 kernel: _fused_rms_norm_backward is CUDA-only). The graph is recorded in
//                 instantiate() (untimed) and run() is torch::autograd::grad, which uses the
//                 statistics of that recorded forward on the same x rather than the given invstd
//                 (the same numbers up to rounding: both are x's statistics).
// Tensors wrap the harness buffers with at::from_blob (NHWC = channels_last strides, bf16/f16
// dtypes, fp32 parameters and statistics: PyTorch's mixed-dtype CPU path); nothing is copied in
// the timed region. The operators return tensors they allocate, as in eager PyTorch (there is no
// out= variant for most of them); sync_outputs() (untimed) copies those into the harness's
// buffers. PyTorch's own layout handling stays in the timed region: e.g. native_layer_norm makes
// a channels_last x contiguous before normalising, and so does instance_norm.
//
// Allocation: eager PyTorch allocates every output on every call. With glibc malloc an
// allocation above 32 MiB is a fresh mmap each time, so the page faults of first touch would be
// timed as part of the operator. PyTorch's CPU performance guide recommends a reusing allocator
// (jemalloc, tcmalloc) for this reason; this backend installs a small one (ReusingCpuAllocator,
// PyTorch's allocations only, emptied when an instance is destroyed).
//
// No fmt here: the torch wheel's include/ carries its own (newer) fmt headers, which would shadow
// the project's.
//
// Threads: at::set_num_threads(omp_get_max_threads()) in instantiate(). libtorch_cpu.so is
// linked to the process's libgomp (the one the harness uses), so it shares the harness's OpenMP
// runtime and thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <omp.h>
#include <torch/csrc/api/include/torch/version.h>
#include <torch/csrc/autograd/autograd.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "registry.hpp"

namespace nb::pytorch {
namespace {

// ---------------------------------------------------------------------------------------------
// The reusing allocator.

/// A CPU allocator for PyTorch's tensors that keeps freed blocks by size and hands them out
/// again, so that an operator called repeatedly on the same shapes reuses its output memory
/// (as jemalloc or tcmalloc would) instead of faulting in fresh pages on each call.
/// Blocks are 64-byte aligned like c10's default allocator. trim() frees the cached blocks.
class ReusingCpuAllocator final : public c10::Allocator {
 public:
  static ReusingCpuAllocator& instance() {
    static auto* allocator = new ReusingCpuAllocator();  // outlives every tensor: never freed
    return *allocator;
  }

  c10::DataPtr allocate(std::size_t n) override {
    void* p = take(n);
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  /// Frees every cached (not currently used) block.
  void trim() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [size, p] : cached_) {
      size_of_.erase(p);
      std::free(p);
    }
    cached_.clear();
  }

 private:
  void* take(std::size_t n) {
    if (n == 0) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = cached_.find(n); it != cached_.end()) {
      void* p = it->second;
      cached_.erase(it);
      return p;
    }
    void* p = std::aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    size_of_[p] = n;
    return p;
  }
  static void release(void* p) {
    if (!p) return;
    ReusingCpuAllocator& a = instance();
    std::lock_guard<std::mutex> lock(a.mutex_);
    a.cached_.emplace(a.size_of_.at(p), p);
  }

  std::mutex mutex_;
  std::unordered_map<void*, std::size_t> size_of_;  ///< every live or cached block
  std::unordered_multimap<std::size_t, void*> cached_;
};

void install_allocator() {
  static std::once_flag once;
  std::call_once(once, [] { c10::SetCPUAllocator(&ReusingCpuAllocator::instance(), 1); });
}

// ---------------------------------------------------------------------------------------------
// Wrapping the harness's buffers.

at::ScalarType scalar_type(DType d) {
  switch (d) {
    case DType::f32:
      return at::kFloat;
    case DType::bf16:
      return at::kBFloat16;
    case DType::f16:
      return at::kHalf;
  }
  return at::kFloat;
}

/// LayerNorm/RMSNorm rows (H = W = 1) are the (T, D) matrix users have; images are (N, C, H, W).
bool as_matrix(const Problem& p) { return p.is_rows() && p.spatial() == 1; }

/// x, y, dy or dx: (N, C, H, W) with NCHW or channels_last strides, or (T, D).
at::Tensor wrap_data(const Problem& p, const void* ptr) {
  if (!ptr) return {};
  const auto options = at::TensorOptions().dtype(scalar_type(p.dtype));
  void* data = const_cast<void*>(ptr);  // inputs are only read
  if (as_matrix(p)) return at::from_blob(data, {p.n, p.c}, options);
  if (p.layout == Layout::nchw) return at::from_blob(data, {p.n, p.c, p.h, p.w}, options);
  return at::from_blob(data, {p.n, p.c, p.h, p.w}, {p.h * p.w * p.c, 1, p.w * p.c, p.c}, options);
}

/// An fp32 buffer (parameters, statistics) viewed with the given sizes.
at::Tensor wrap_f32(const float* ptr, at::IntArrayRef sizes) {
  if (!ptr) return {};
  return at::from_blob(const_cast<float*>(ptr), sizes, at::TensorOptions().dtype(at::kFloat));
}

/// normalized_shape of LayerNorm/RMSNorm: (D) for rows, (C, H, W) for images.
std::vector<int64_t> normalized_shape(const Problem& p) {
  return as_matrix(p) ? std::vector<int64_t>{p.c} : std::vector<int64_t>{p.c, p.h, p.w};
}

/// Sizes of the saved statistics as each operator takes them.
std::vector<int64_t> stats_sizes(const Problem& p) {
  switch (p.method) {
    case Method::batchnorm:
      return {p.c};
    case Method::layernorm:
    case Method::rmsnorm:
      return as_matrix(p) ? std::vector<int64_t>{p.n, 1} : std::vector<int64_t>{p.n, 1, 1, 1};
    case Method::groupnorm:
      return {p.n, p.groups};
    case Method::instancenorm:
      return {p.n * p.c};
  }
  return {};
}

/// An undefined tensor (a null harness pointer) as None.
std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// ---------------------------------------------------------------------------------------------
// One problem bound to PyTorch.

class PyTorchInstance final : public Instance {
 public:
  PyTorchInstance(const Problem& p, const KernelArgs& a) : p_(p), a_(a) {
    install_allocator();
    at::set_num_threads(omp_get_max_threads());
    const std::vector<int64_t> params =
        p.is_rows() ? normalized_shape(p) : std::vector<int64_t>{p.c};
    const std::vector<int64_t> stats = stats_sizes(p);
    t_.x = wrap_data(p, a.x);
    t_.y = wrap_data(p, a.y);
    t_.dy = wrap_data(p, a.dy);
    t_.dx = wrap_data(p, a.dx);
    t_.gamma = wrap_f32(a.gamma, params);
    t_.beta = wrap_f32(a.beta, params);
    t_.dgamma = wrap_f32(a.dgamma, params);
    t_.dbeta = wrap_f32(a.dbeta, params);
    t_.mean = wrap_f32(a.mean, stats);
    t_.invstd = wrap_f32(a.invstd, stats);
    t_.running_mean = wrap_f32(a.running_mean, {p.c});
    t_.running_var = wrap_f32(a.running_var, {p.c});
    if (p.method == Method::layernorm && p.pass == Pass::bwd && p.has_beta())
      // native_layer_norm_backward sizes dbeta from bias, the value of which it does not use; the
      // harness gives bwd no beta.
      t_.beta = at::zeros(params, at::TensorOptions().dtype(at::kFloat));
    if (p.method == Method::rmsnorm && p.pass == Pass::bwd) record_rms_norm_forward();
  }
  ~PyTorchInstance() override {
    t_ = {};
    ReusingCpuAllocator::instance().trim();
  }

  void run() override {
    const Problem& p = p_;
    Tensors& t = t_;
    const std::optional<at::Tensor> gamma = opt(t.gamma), beta = opt(t.beta);
    const std::optional<at::Tensor> running_mean = opt(t.running_mean),
                                    running_var = opt(t.running_var);
    const std::array<bool, 3> mask = {true, p.affine, p.has_beta()};
    const bool train = p.pass == Pass::fwd_train;
    switch (p.method) {
      case Method::batchnorm:
        if (p.pass == Pass::bwd) {
          auto [dx, dgamma, dbeta] =
              at::native_batch_norm_backward(t.dy, t.x, gamma, {}, {}, t.mean, t.invstd,
                                             /*train=*/true, p.eps, mask);
          t.out = {dx, dgamma, dbeta};
        } else {
          auto [y, mean, invstd] = at::native_batch_norm(t.x, gamma, beta, running_mean,
                                                         running_var, train, p.momentum, p.eps);
          t.out = {y, mean, invstd};
        }
        break;
      case Method::layernorm:
        if (p.pass == Pass::bwd) {
          auto [dx, dgamma, dbeta] = at::native_layer_norm_backward(
              t.dy, t.x, normalized_shape(p), t.mean, t.invstd, gamma, beta, mask);
          t.out = {dx, dgamma, dbeta};
        } else {
          auto [y, mean, rstd] =
              at::native_layer_norm(t.x, normalized_shape(p), gamma, beta, p.eps);
          t.out = {y, mean, rstd};
        }
        break;
      case Method::groupnorm: {
        const int64_t hw = p.spatial();
        if (p.pass == Pass::bwd) {
          auto [dx, dgamma, dbeta] = at::native_group_norm_backward(
              t.dy, t.x, t.mean, t.invstd, gamma, p.n, p.c, hw, p.groups, mask);
          t.out = {dx, dgamma, dbeta};
        } else {
          auto [y, mean, rstd] =
              at::native_group_norm(t.x, gamma, beta, p.n, p.c, hw, p.groups, p.eps);
          t.out = {y, mean, rstd};
        }
        break;
      }
      case Method::instancenorm:
        run_instance_norm(mask);
        break;
      case Method::rmsnorm:
        if (p.pass == Pass::bwd) {
          std::vector<at::Tensor> inputs = {t.x_leaf};
          if (p.affine) inputs.push_back(t.gamma_leaf);
          at::AutoGradMode grad_mode(true);
          auto grads = torch::autograd::grad({t.y_recorded}, inputs, {t.dy},
                                             /*retain_graph=*/true);
          t.out = {grads[0], p.affine ? grads[1] : at::Tensor()};
        } else if (train) {
          auto [y, rstd] = at::_fused_rms_norm(t.x, normalized_shape(p), gamma, p.eps);
          t.out = {y, {}, rstd};
        } else {
          t.out = {at::rms_norm(t.x, normalized_shape(p), gamma, p.eps)};
        }
        break;
    }
  }

  void sync_outputs() override {
    Tensors& t = t_;
    auto copy = [](at::Tensor& dst, const at::Tensor& src) {
      if (dst.defined() && src.defined()) dst.copy_(src.reshape(dst.sizes()));
    };
    if (p_.pass == Pass::bwd) {
      copy(t.dx, t.out.at(0));
      if (t.out.size() > 1) copy(t.dgamma, t.out[1]);
      if (t.out.size() > 2) copy(t.dbeta, t.out[2]);
    } else {
      copy(t.y, t.out.at(0));
      if (t.out.size() > 1) copy(t.mean, t.out[1]);
      if (t.out.size() > 2) copy(t.invstd, t.out[2]);
    }
  }

  std::string info() const override { return "torch " TORCH_VERSION " " + operator_name(); }

 private:
  /// The harness's buffers as tensors, PyTorch's outputs of the last run, and the recorded
  /// autograd graph of rmsnorm bwd.
  struct Tensors {
    at::Tensor x, y, dy, dx, gamma, beta, dgamma, dbeta, mean, invstd, running_mean, running_var;
    std::vector<at::Tensor> out;
    at::Tensor x_leaf, gamma_leaf, y_recorded;
  };

  /// at::instance_norm's own steps (aten/src/ATen/native/Normalization.cpp), so that fwd_train
  /// can keep the saved statistics and bwd can start from them as autograd would.
  void run_instance_norm(const std::array<bool, 3>& mask) {
    const Problem& p = p_;
    Tensors& t = t_;
    const std::vector<int64_t> as_batch = {1, p.n * p.c, p.h, p.w};
    const std::optional<at::Tensor> gamma =
        t.gamma.defined() ? opt(t.gamma.repeat({p.n})) : std::nullopt;
    if (p.pass == Pass::fwd_infer) {
      t.out = {at::instance_norm(t.x, opt(t.gamma), opt(t.beta), {}, {}, /*use_input_stats=*/true,
                                 p.momentum, p.eps, /*cudnn_enabled=*/false)};
    } else if (p.pass == Pass::fwd_train) {
      const std::optional<at::Tensor> beta =
          t.beta.defined() ? opt(t.beta.repeat({p.n})) : std::nullopt;
      auto [y, mean, invstd] = at::native_batch_norm(t.x.contiguous().view(as_batch), gamma, beta,
                                                     {}, {}, true, p.momentum, p.eps);
      t.out = {y.view(t.x.sizes()), mean, invstd};
    } else {
      auto [dx, dgamma, dbeta] = at::native_batch_norm_backward(
          t.dy.contiguous().view(as_batch), t.x.contiguous().view(as_batch), gamma, {}, {}, t.mean,
          t.invstd, /*train=*/true, p.eps, mask);
      t.out = {dx.view(t.x.sizes()), dgamma.defined() ? dgamma.view({p.n, p.c}).sum(0) : dgamma,
               dbeta.defined() ? dbeta.view({p.n, p.c}).sum(0) : dbeta};
    }
  }

  /// rmsnorm bwd: the forward whose graph run() differentiates, recorded on the harness's x.
  void record_rms_norm_forward() {
    at::AutoGradMode grad_mode(true);
    Tensors& t = t_;
    t.x_leaf = t.x.detach().requires_grad_(true);
    if (p_.affine) t.gamma_leaf = t.gamma.detach().requires_grad_(true);
    t.y_recorded = at::rms_norm(t.x_leaf, normalized_shape(p_), opt(t.gamma_leaf), p_.eps);
  }

  std::string operator_name() const {
    const bool bwd = p_.pass == Pass::bwd;
    switch (p_.method) {
      case Method::batchnorm:
        return bwd ? "aten::native_batch_norm_backward" : "aten::native_batch_norm";
      case Method::layernorm:
        return bwd ? "aten::native_layer_norm_backward" : "aten::native_layer_norm";
      case Method::groupnorm:
        return bwd ? "aten::native_group_norm_backward" : "aten::native_group_norm";
      case Method::instancenorm:
        return p_.pass == Pass::fwd_infer ? "aten::instance_norm"
               : bwd ? "aten::native_batch_norm_backward (instance_norm as batch_norm)"
                     : "aten::native_batch_norm (instance_norm as batch_norm)";
      case Method::rmsnorm:
        return bwd                          ? "autograd of aten::rms_norm"
               : p_.pass == Pass::fwd_train ? "aten::_fused_rms_norm"
                                            : "aten::rms_norm";
    }
    return {};
  }

  Problem p_;
  KernelArgs a_;
  Tensors t_;
};

// ---------------------------------------------------------------------------------------------
// Registration.

/// A small problem of the given kind, to ask PyTorch whether it runs such a pass at all.
Problem probe_problem(Method m, Pass pass, DType dt, Layout l) {
  Problem p;
  p.method = m;
  p.pass = pass;
  p.dtype = dt;
  p.layout = l;
  p.n = 2;
  p.c = 4;
  p.h = p.w = 3;
  if (m == Method::groupnorm) p.groups = 2;
  return p;
}

/// Runs the probe problem once on zero-filled buffers; nullopt when PyTorch ran it, else its
/// error message (e.g. an operator with no kernel for the dtype).
std::optional<std::string> probe(const Problem& p) {
  const std::size_t numel = static_cast<std::size_t>(p.numel());
  const std::size_t bytes = numel * element_size(p.dtype);
  std::vector<unsigned char> x(bytes), y(bytes), dy(bytes), dx(bytes);
  std::vector<float> gamma(static_cast<std::size_t>(p.param_count()), 1.0f), beta(gamma.size()),
      dgamma(gamma.size()), dbeta(gamma.size()), mean(static_cast<std::size_t>(p.stats_count())),
      invstd(mean.size(), 1.0f), running_mean(static_cast<std::size_t>(p.c)),
      running_var(running_mean.size(), 1.0f);
  KernelArgs a;
  a.x = x.data();
  a.gamma = gamma.data();
  if (p.has_beta()) a.beta = beta.data();
  if (p.pass == Pass::bwd) {
    a.dy = dy.data();
    a.dx = dx.data();
    a.dgamma = dgamma.data();
    if (p.has_beta()) a.dbeta = dbeta.data();
  } else {
    a.y = y.data();
  }
  if (p.pass != Pass::fwd_infer) {
    if (p.method != Method::rmsnorm) a.mean = mean.data();
    a.invstd = invstd.data();
  }
  if (p.method == Method::batchnorm && p.pass != Pass::bwd) {
    a.running_mean = running_mean.data();
    a.running_var = running_var.data();
  }
  try {
    PyTorchInstance instance(p, a);
    instance.run();
    instance.sync_outputs();
  } catch (const c10::Error& e) {
    return "PyTorch " TORCH_VERSION ": " + first_line(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return "PyTorch " TORCH_VERSION ": " + first_line(e.what());
  }
  return std::nullopt;
}

/// One (method, pass, dtype, layout) of PyTorch; available when the probe problem runs (asked
/// once, lazily).
class PyTorchImplementation final : public Implementation {
 public:
  explicit PyTorchImplementation(Problem probe) : probe_(probe) {}

  std::optional<std::string> unavailable_reason() const override {
    std::call_once(probed_, [&] {
      if (auto why = probe(probe_)) unavailable_ = *why + " (on " + to_repro(probe_) + ")";
    });
    return unavailable_;
  }
  std::optional<std::string> unsupported_reason(const Problem& p) const override {
    if (auto why = validate(p)) return "invalid problem: " + *why;
    return std::nullopt;
  }
  std::unique_ptr<Instance> instantiate(const Problem& p, const KernelArgs& a) override {
    return std::make_unique<PyTorchInstance>(p, a);
  }

 private:
  Problem probe_;
  mutable std::once_flag probed_;
  mutable std::optional<std::string> unavailable_;
};

}  // namespace
}  // namespace nb::pytorch

NB_REGISTER_BACKEND(pytorch) {
  using namespace nb;
  for (Method m : kAllMethods)
    for (Pass p : kAllPasses)
      for (DType dt : kAllDTypes)
        for (Layout l : kAllLayouts)
          register_implementation(
              "pytorch",
              std::make_shared<pytorch::PyTorchImplementation>(pytorch::probe_problem(m, p, dt, l)),
              {m}, {p}, {dt}, {l});
}
