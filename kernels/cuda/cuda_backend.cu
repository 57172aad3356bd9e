// Backend `cuda`: the custom kernels of dispatch.cuh on the GPU. instantiate() copies the case's
// host tensors to device buffers (untimed); run() enqueues the pass and waits; run_device_timed()
// measures it with CUDA events; sync_outputs() copies the outputs back. Without a usable device
// the backend reports "no CUDA device (<cuda error name>)".
#include <cstdio>
#include <memory>
#include <mutex>

#include "device.cuh"
#include "dispatch.cuh"

namespace nb_cuda {
namespace {

DeviceLimits device_limits() {
  const DeviceInfo& d = device_info();
  DeviceLimits lim;
  lim.sm_count = d.sm_count;
  lim.max_shared_bytes = d.max_shared_optin;
  return lim;
}

/// Device name and copy bandwidth, measured once per process (the roofline of this run).
const std::string& device_summary() {
  static std::once_flag once;
  static std::string summary;
  std::call_once(once, [] {
    const DeviceInfo& d = device_info();
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s sm_%d%d, device copy %.0f GB/s", d.name.c_str(),
                  d.cc_major, d.cc_minor, device_copy_gbps());
    summary = buf;
  });
  return summary;
}

L2Flusher& flusher() {
  static L2Flusher f;
  return f;
}

class CudaInstance final : public nb::Instance {
 public:
  CudaInstance(const nb::Problem& p, const nb::KernelArgs& host)
      : problem_(p), host_(host), limits_(device_limits()) {
    check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    const std::size_t data = static_cast<std::size_t>(p.numel()) * nb::element_size(p.dtype);
    const std::size_t params = static_cast<std::size_t>(p.param_count()) * sizeof(float);
    const std::size_t stats = static_cast<std::size_t>(p.stats_count()) * sizeof(float);
    const std::size_t channels = static_cast<std::size_t>(p.c) * sizeof(float);
    auto bind = [&](const void* h, DeviceBuffer& b, std::size_t bytes, bool input) -> void* {
      if (!h) return nullptr;
      b = DeviceBuffer(bytes);
      if (input) b.upload(h);
      return b.get();
    };
    const bool bwd = p.pass == nb::Pass::bwd;
    dev_.x = bind(host.x, x_, data, true);
    dev_.y = bind(host.y, y_, data, false);
    dev_.gamma = static_cast<const float*>(bind(host.gamma, gamma_, params, true));
    dev_.beta = static_cast<const float*>(bind(host.beta, beta_, params, true));
    dev_.mean = static_cast<float*>(bind(host.mean, mean_, stats, bwd));
    dev_.invstd = static_cast<float*>(bind(host.invstd, invstd_, stats, bwd));
    dev_.running_mean = static_cast<float*>(bind(host.running_mean, running_mean_, channels, true));
    dev_.running_var = static_cast<float*>(bind(host.running_var, running_var_, channels, true));
    dev_.dy = bind(host.dy, dy_, data, true);
    dev_.dx = bind(host.dx, dx_, data, false);
    dev_.dgamma = static_cast<float*>(bind(host.dgamma, dgamma_, params, false));
    dev_.dbeta = static_cast<float*>(bind(host.dbeta, dbeta_, params, false));
    workspace_ = DeviceBuffer(workspace_bytes(p, limits_));
  }
  ~CudaInstance() override { cudaStreamDestroy(stream_); }

  void run() override {
    run_pass(problem_, dev_, workspace_.get(), limits_, stream_);
    check(cudaStreamSynchronize(stream_), "cuda backend run");
  }
  std::optional<double> run_device_timed(bool cold) override {
    if (cold) flusher().flush(stream_);
    timer_.start(stream_);
    run_pass(problem_, dev_, workspace_.get(), limits_, stream_);
    return timer_.stop_seconds(stream_);
  }
  bool device_timed() const override { return true; }
  std::optional<double> paired_copy_gbps() override {
    return device_copy_gbps(std::size_t{256} << 20, stream_);
  }
  void sync_outputs() override {
    check(cudaStreamSynchronize(stream_), "cuda backend sync");
    auto back = [](void* h, const DeviceBuffer& b) {
      if (h) b.download(h);
    };
    back(host_.y, y_);
    if (problem_.pass == nb::Pass::fwd_train) {
      back(host_.mean, mean_);
      back(host_.invstd, invstd_);
      back(host_.running_mean, running_mean_);
      back(host_.running_var, running_var_);
    }
    back(host_.dx, dx_);
    back(host_.dgamma, dgamma_);
    back(host_.dbeta, dbeta_);
  }
  std::string info() const override { return device_summary(); }

 private:
  nb::Problem problem_;
  nb::KernelArgs host_, dev_;
  DeviceLimits limits_;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer x_, y_, gamma_, beta_, mean_, invstd_, running_mean_, running_var_, dy_, dx_,
      dgamma_, dbeta_, workspace_;
  EventTimer timer_;
};

class CudaNorms final : public nb::Implementation {
 public:
  std::optional<std::string> unavailable_reason() const override {
    static const std::optional<std::string> reason = device_unavailable_reason();
    return reason;
  }
  std::optional<std::string> unsupported_reason(const nb::Problem& p) const override {
    if (auto why = unavailable_reason()) return why;
    return nb_cuda::unsupported_reason(p, device_limits());
  }
  std::unique_ptr<nb::Instance> instantiate(const nb::Problem& p,
                                            const nb::KernelArgs& args) override {
    if (auto why = unsupported_reason(p)) throw std::runtime_error("cuda: " + *why);
    return std::make_unique<CudaInstance>(p, args);
  }
};

}  // namespace
}  // namespace nb_cuda

NB_REGISTER_BACKEND(cuda) {
  std::vector<nb::Method> methods;
  for (nb::Method m : nb::kAllMethods)
    if (nb_cuda::implements(m)) methods.push_back(m);
  nb::register_implementation("cuda", std::make_shared<nb_cuda::CudaNorms>(), methods,
                              {nb::Pass::fwd_train, nb::Pass::fwd_infer, nb::Pass::bwd},
                              {nb::DType::f32, nb::DType::bf16, nb::DType::f16},
                              {nb::Layout::nchw, nb::Layout::nhwc});
}
