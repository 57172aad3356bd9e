// The one registry of implementations. Every backend (reference, openmp, avx512, cuda, cudnn,
// onednn, pytorch, ...) registers, for each (method, pass, dtype, layout) it implements, an
// Implementation object. The harness asks it whether the machine can run it at all (available)
// and whether it handles a given problem (supports), binds it to one problem's buffers
// (instantiate, untimed) and then times Instance::run.
//
// Adding a backend = a folder kernels/<name>/ with a CMakeLists.txt calling
// normbench_add_backend(<name> SOURCES ...) and a source file containing NB_REGISTER_BACKEND.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "problem.hpp"

namespace nb {

/// The tensors of one case, as seen by a kernel. All host pointers (a device backend copies them
/// in instantiate() and back in Instance::sync_outputs()).
///   x, y, dy, dx          problem.dtype, shape (N, C, H, W) in problem.layout, N*C*H*W elements
///   gamma, beta           fp32, param_count() elements (C, or C*H*W for layernorm/rmsnorm in
///                         C-major order); nullptr when !affine; beta is nullptr for rmsnorm
///   mean, invstd          fp32, stats_count() elements, ordered (C) batchnorm, (N) layernorm/
///                         rmsnorm, (N, G) groupnorm, (N, C) instancenorm. fwd_train writes them,
///                         bwd reads them (saved by a forward), fwd_infer leaves them nullptr.
///                         rmsnorm has no mean (nullptr); its invstd is 1/sqrt(mean(x^2) + eps).
///   running_mean/var      fp32, C elements, batchnorm only: fwd_train reads and updates them
///                         (unbiased variance, CONVENTIONS section 1), fwd_infer normalises with
///                         them
///   dgamma, dbeta         fp32, param_count() elements, bwd with affine (dbeta nullptr for
///   rmsnorm)
/// Every pointer not used by the problem's pass is nullptr.
struct KernelArgs {
  const void* x = nullptr;
  void* y = nullptr;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  float* mean = nullptr;
  float* invstd = nullptr;
  float* running_mean = nullptr;
  float* running_var = nullptr;
  const void* dy = nullptr;
  void* dx = nullptr;
  float* dgamma = nullptr;
  float* dbeta = nullptr;
};

/// An implementation bound to one problem and its buffers. Created outside the timed region.
class Instance {
 public:
  virtual ~Instance() = default;
  /// Executes the pass once, synchronously. This is what is timed.
  virtual void run() = 0;
  /// Device backends: runs once and returns the device-measured seconds (CUDA events); with
  /// cold, the device's cache (L2) is flushed first, outside the measured interval. Host
  /// backends return nullopt and are timed by wall clock around run().
  virtual std::optional<double> run_device_timed(bool cold) {
    (void)cold;
    return std::nullopt;
  }
  /// True when run_device_timed() measures (device backends); the harness then uses manual time.
  virtual bool device_timed() const { return false; }
  /// Device backends: one device-to-device copy measured now, GB/s (bytes read + written), the
  /// roofline paired with each repetition in place of the host copies.
  virtual std::optional<double> paired_copy_gbps() { return std::nullopt; }
  /// Makes the outputs visible in the KernelArgs host buffers (device backends copy back).
  virtual void sync_outputs() {}
  /// Implementation detail reported in the CSV (e.g. oneDNN's impl_info_str, a cuDNN engine).
  virtual std::string info() const { return {}; }
};

class Implementation {
 public:
  virtual ~Implementation() = default;
  /// Whether this machine can run the implementation at all; the string is the reason it cannot
  /// ("CPU lacks avx512f", "no CUDA device (cudaErrorInsufficientDriver)").
  virtual std::optional<std::string> unavailable_reason() const { return std::nullopt; }
  /// nullopt when the problem is handled, else the reason it is not.
  virtual std::optional<std::string> unsupported_reason(const Problem&) const {
    return std::nullopt;
  }
  /// Binds to one problem. The default binds a host instance whose run() calls run(p, args).
  /// Throws std::runtime_error when resources cannot be set up.
  virtual std::unique_ptr<Instance> instantiate(const Problem& p, const KernelArgs& args);
  /// Host implementations implement this: one execution of p on the buffers of args.
  virtual void run(const Problem& p, const KernelArgs& args);
};

struct Registration {
  std::string backend;
  Method method;
  Pass pass;
  DType dtype;
  Layout layout;
  std::shared_ptr<Implementation> impl;
  /// Test-only backends (deliberately wrong ones) are hidden from `normbench list` and from the
  /// default backend selection of a sweep.
  bool hidden = false;
};

class Registry {
 public:
  static Registry& instance();
  /// Throws std::logic_error if (backend, method, pass, dtype, layout) is already registered.
  void add(Registration r);
  const Registration* find(std::string_view backend, Method m, Pass p, DType dt, Layout l) const;
  const std::vector<Registration>& all() const { return regs_; }
  /// Backend names in registration order with "reference" first; hidden ones only on request.
  std::vector<std::string> backends(bool include_hidden = false) const;
  /// Unavailability of a backend as a whole (that of its first registration).
  std::optional<std::string> backend_unavailable_reason(std::string_view backend) const;

 private:
  std::vector<Registration> regs_;
};

/// Registers impl for every combination of the given methods, passes, dtypes and layouts.
void register_implementation(const std::string& backend, std::shared_ptr<Implementation> impl,
                             std::vector<Method> methods, std::vector<Pass> passes,
                             std::vector<DType> dtypes, std::vector<Layout> layouts,
                             bool hidden = false);

struct BackendRegistrar {
  explicit BackendRegistrar(void (*fn)()) { fn(); }
};

}  // namespace nb

/// Defines a function run once at program start that registers a backend's implementations:
///   NB_REGISTER_BACKEND(openmp) { nb::register_implementation("openmp", ...); }
#define NB_REGISTER_BACKEND(name)                                                 \
  static void nb_register_backend_##name();                                       \
  [[maybe_unused]] static const nb::BackendRegistrar nb_backend_registrar_##name{ \
      &nb_register_backend_##name};                                               \
  static void nb_register_backend_##name()
