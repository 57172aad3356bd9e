// Backend `cudnn_legacy`: BatchNorm through cuDNN's legacy (pre-graph) calls, deprecated in cuDNN 9
// but still what many frameworks reach: cudnnBatchNormalizationForwardTraining,
// cudnnBatchNormalizationForwardInference and cudnnBatchNormalizationBackward with
// CUDNN_BATCHNORM_SPATIAL (statistics per channel over N, H, W; cudnn_ops library reference).
//
// Descriptors: x/y/dy/dx share one cudnnSetTensor4dDescriptorEx descriptor, (N, C, H, W) with the
// strides of the layout (mapping.hpp, map_legacy_batchnorm); scale, bias, means and variances the
// (1, C, 1, 1) fp32 descriptor cuDNN derives (cudnnDeriveBNTensorDescriptor).
//
// Conventions (CONVENTIONS section 1): cuDNN's exponentialAverageFactor is our momentum
// (running = (1 - factor) * running + factor * batch, cudnn_ops.h); resultSaveMean /
// resultSaveInvVariance are the saved mean and invstd = 1/sqrt(var + eps), which backward takes;
// fwd_infer passes running_mean, running_var and eps as they are (cuDNN computes
// 1/sqrt(var + eps)); eps must be >= CUDNN_BN_MIN_EPSILON. The running statistics are updated in
// place, as in a training step: each run() updates them again, and the agreement check uses the
// first run. Without affine, scale is a device buffer of ones and bias of zeros; dgamma and dbeta
// go to scratch buffers.
//
// Support: cuDNN answers whether it implements a data type and layout only when called. For
// fwd_train and bwd, unsupported_reason() asks cudnnGetBatchNormalizationForwardTrainingEx- /
// BackwardExWorkspaceSize for the same mode, descriptors and CUDNN_BATCHNORM_OPS_BN, which run
// cuDNN's parameter checks, and reports their NOT_SUPPORTED status; fwd_infer has no such query,
// so an unsupported combination shows as a failed row with cuDNN's status text.
#include <memory>
#include <stdexcept>

#include "context.hpp"
#include "descriptors.hpp"
#include "mapping.hpp"
#include "registry.hpp"

namespace nb_cudnn {
namespace {

const char* call_name(nb::Pass pass) {
  switch (pass) {
    case nb::Pass::fwd_train:
      return "cudnnBatchNormalizationForwardTraining";
    case nb::Pass::fwd_infer:
      return "cudnnBatchNormalizationForwardInference";
    case nb::Pass::bwd:
      return "cudnnBatchNormalizationBackward";
  }
  return "?";
}

/// The descriptors of one problem: data (x, y, dy, dx) and the derived per-channel descriptor.
struct LegacyDescriptors {
  explicit LegacyDescriptors(const nb::Problem& p) {
    const LegacyBatchNormShapes shapes = map_legacy_batchnorm(p);
    data.set_4d(data_type(p.dtype), shapes.data, "x/y/dy/dx");
    param.derive_batchnorm(data);
  }
  LegacyTensorDescriptor data, param;
};

/// cuDNN's answer to the workspace query of the pass: nullopt, or the NOT_SUPPORTED status text.
std::optional<std::string> legacy_support(const nb::Problem& p) {
  const cudnnHandle_t h = context().handle;
  LegacyDescriptors d(p);
  std::size_t bytes = 0;
  cudnnStatus_t s = CUDNN_STATUS_SUCCESS;
  std::string what;
  if (p.pass == nb::Pass::fwd_train) {
    what = "cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize";
    s = cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(
        h, CUDNN_BATCHNORM_SPATIAL, CUDNN_BATCHNORM_OPS_BN, d.data.get(), nullptr, d.data.get(),
        d.param.get(), nullptr, &bytes);
  } else if (p.pass == nb::Pass::bwd) {
    what = "cudnnGetBatchNormalizationBackwardExWorkspaceSize";
    s = cudnnGetBatchNormalizationBackwardExWorkspaceSize(
        h, CUDNN_BATCHNORM_SPATIAL, CUDNN_BATCHNORM_OPS_BN, d.data.get(), nullptr, d.data.get(),
        nullptr, d.data.get(), d.param.get(), nullptr, &bytes);
  }
  if (s == CUDNN_STATUS_SUCCESS) return std::nullopt;
  const CudnnError e(s, what + ": " + status_text(s));
  if (e.not_supported()) return std::string("cuDNN: ") + e.what();
  throw e;
}

class LegacyInstance final : public nb::Instance {
 public:
  LegacyInstance(const nb::Problem& p, const nb::KernelArgs& host)
      : problem_(p), host_(host), ctx_(context()), desc_(p) {
    const std::size_t data = static_cast<std::size_t>(p.numel()) * nb::element_size(p.dtype);
    const std::size_t channels = static_cast<std::size_t>(p.c) * sizeof(float);
    const std::vector<float> ones(static_cast<std::size_t>(p.c), 1.0f),
        zeros(static_cast<std::size_t>(p.c), 0.0f);
    auto input = [](nb_cuda::DeviceBuffer& b, std::size_t bytes, const void* h, const char* name) {
      if (!h) throw std::logic_error(std::string("cudnn_legacy: KernelArgs.") + name + " is null");
      b = nb_cuda::DeviceBuffer(bytes);
      b.upload(h);
    };
    auto output = [](nb_cuda::DeviceBuffer& b, std::size_t bytes) {
      b = nb_cuda::DeviceBuffer(bytes);
      nb_cuda::check(cudaMemset(b.get(), 0xff, bytes), "cudaMemset (NaN fill)");
    };
    input(x_, data, host.x, "x");
    input(scale_, channels, p.affine ? static_cast<const void*>(host.gamma) : ones.data(), "gamma");
    switch (p.pass) {
      case nb::Pass::fwd_train:
        output(y_, data);
        input(bias_, channels, p.affine ? static_cast<const void*>(host.beta) : zeros.data(),
              "beta");
        input(running_mean_, channels, host.running_mean, "running_mean");
        input(running_var_, channels, host.running_var, "running_var");
        output(mean_, channels);
        output(invstd_, channels);
        break;
      case nb::Pass::fwd_infer:
        output(y_, data);
        input(bias_, channels, p.affine ? static_cast<const void*>(host.beta) : zeros.data(),
              "beta");
        input(running_mean_, channels, host.running_mean, "running_mean");
        input(running_var_, channels, host.running_var, "running_var");
        break;
      case nb::Pass::bwd:
        input(dy_, data, host.dy, "dy");
        output(dx_, data);
        input(mean_, channels, host.mean, "mean");
        input(invstd_, channels, host.invstd, "invstd");
        output(dgamma_, channels);
        output(dbeta_, channels);
        break;
    }
  }

  void run() override {
    launch();
    nb_cuda::check(cudaStreamSynchronize(ctx_.stream), "cudnn_legacy run");
  }
  std::optional<double> run_device_timed(bool cold) override {
    if (cold) l2_flusher().flush(ctx_.stream);
    timer_.start(ctx_.stream);
    launch();
    return timer_.stop_seconds(ctx_.stream);
  }
  bool device_timed() const override { return true; }
  std::optional<double> paired_copy_gbps() override {
    return nb_cuda::device_copy_gbps(std::size_t{256} << 20, ctx_.stream);
  }
  void sync_outputs() override {
    nb_cuda::check(cudaStreamSynchronize(ctx_.stream), "cudnn_legacy sync");
    auto back = [](void* h, const nb_cuda::DeviceBuffer& b) {
      if (h && b.get()) b.download(h);
    };
    switch (problem_.pass) {
      case nb::Pass::fwd_train:
        back(host_.y, y_);
        back(host_.mean, mean_);
        back(host_.invstd, invstd_);
        back(host_.running_mean, running_mean_);
        back(host_.running_var, running_var_);
        break;
      case nb::Pass::fwd_infer:
        back(host_.y, y_);
        break;
      case nb::Pass::bwd:
        back(host_.dx, dx_);
        back(host_.dgamma, dgamma_);  // nullptr without affine: dgamma_ stays scratch
        back(host_.dbeta, dbeta_);
        break;
    }
  }
  std::string info() const override {
    return std::string("cuDNN legacy ") + call_name(problem_.pass) +
           " (CUDNN_BATCHNORM_SPATIAL); " + device_summary();
  }

 private:
  void launch() {
    const float one = 1.0f, zero = 0.0f;
    const cudnnTensorDescriptor_t xd = desc_.data.get(), pd = desc_.param.get();
    cudnnStatus_t s = CUDNN_STATUS_SUCCESS;
    switch (problem_.pass) {
      case nb::Pass::fwd_train:
        s = cudnnBatchNormalizationForwardTraining(
            ctx_.handle, CUDNN_BATCHNORM_SPATIAL, &one, &zero, xd, x_.get(), xd, y_.get(), pd,
            scale_.get(), bias_.get(), problem_.momentum, running_mean_.get(), running_var_.get(),
            problem_.eps, mean_.get(), invstd_.get());
        break;
      case nb::Pass::fwd_infer:
        s = cudnnBatchNormalizationForwardInference(
            ctx_.handle, CUDNN_BATCHNORM_SPATIAL, &one, &zero, xd, x_.get(), xd, y_.get(), pd,
            scale_.get(), bias_.get(), running_mean_.get(), running_var_.get(), problem_.eps);
        break;
      case nb::Pass::bwd:
        s = cudnnBatchNormalizationBackward(ctx_.handle, CUDNN_BATCHNORM_SPATIAL, &one, &zero, &one,
                                            &zero, xd, x_.get(), xd, dy_.get(), xd, dx_.get(), pd,
                                            scale_.get(), dgamma_.get(), dbeta_.get(), problem_.eps,
                                            mean_.get(), invstd_.get());
        break;
    }
    check(s, call_name(problem_.pass));
  }

  nb::Problem problem_;
  nb::KernelArgs host_;
  Context& ctx_;
  LegacyDescriptors desc_;
  nb_cuda::DeviceBuffer x_, y_, dy_, dx_, scale_, bias_, running_mean_, running_var_, mean_,
      invstd_, dgamma_, dbeta_;
  nb_cuda::EventTimer timer_;
};

class CudnnLegacyBatchNorm final : public nb::Implementation {
 public:
  std::optional<std::string> unavailable_reason() const override {
    return nb_cudnn::unavailable_reason();
  }
  std::optional<std::string> unsupported_reason(const nb::Problem& p) const override {
    if (auto why = unavailable_reason()) return why;
    if (auto why = eps_below_minimum(p, CUDNN_BN_MIN_EPSILON)) return why;
    try {
      return legacy_support(p);
    } catch (const std::exception&) {
      return std::nullopt;  // an error, not an answer: instantiate() or run() reports it
    }
  }
  std::unique_ptr<nb::Instance> instantiate(const nb::Problem& p,
                                            const nb::KernelArgs& args) override {
    if (auto why = unsupported_reason(p)) throw std::runtime_error("cudnn_legacy: " + *why);
    return std::make_unique<LegacyInstance>(p, args);
  }
};

}  // namespace
}  // namespace nb_cudnn

NB_REGISTER_BACKEND(cudnn_legacy) {
  using namespace nb;
  register_implementation("cudnn_legacy", std::make_shared<nb_cudnn::CudnnLegacyBatchNorm>(),
                          {Method::batchnorm}, {std::begin(kAllPasses), std::end(kAllPasses)},
                          {std::begin(kAllDTypes), std::end(kAllDTypes)},
                          {std::begin(kAllLayouts), std::end(kAllLayouts)});
}
