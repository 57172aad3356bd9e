// Backends `cudnn` and `cudnn_legacy` when CMake could not build them (no CUDA toolkit or nvcc, no
// cuDNN 9 headers and library, or -DNORMBENCH_CUDNN=OFF): every (method, pass, dtype, layout) they
// would implement is registered as unavailable with CMake's reason (NB_CUDNN_UNAVAILABLE), so that
// `normbench list`, sweeps and the CSV say why there are no cuDNN rows. Nothing here runs.
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "registry.hpp"

#ifndef NB_CUDNN_UNAVAILABLE
#define NB_CUDNN_UNAVAILABLE "cuDNN not found"
#endif

namespace nb_cudnn {
namespace {

class UnavailableImplementation final : public nb::Implementation {
 public:
  std::optional<std::string> unavailable_reason() const override { return NB_CUDNN_UNAVAILABLE; }
  std::optional<std::string> unsupported_reason(const nb::Problem&) const override {
    return NB_CUDNN_UNAVAILABLE;
  }
  std::unique_ptr<nb::Instance> instantiate(const nb::Problem&, const nb::KernelArgs&) override {
    throw std::runtime_error(std::string("cudnn: ") + NB_CUDNN_UNAVAILABLE);
  }
};

}  // namespace
}  // namespace nb_cudnn

NB_REGISTER_BACKEND(cudnn_unavailable) {
  using namespace nb;
  auto impl = std::make_shared<nb_cudnn::UnavailableImplementation>();
  register_implementation("cudnn", impl, {std::begin(kAllMethods), std::end(kAllMethods)},
                          {std::begin(kAllPasses), std::end(kAllPasses)},
                          {std::begin(kAllDTypes), std::end(kAllDTypes)},
                          {std::begin(kAllLayouts), std::end(kAllLayouts)});
  register_implementation("cudnn_legacy", impl, {Method::batchnorm},
                          {std::begin(kAllPasses), std::end(kAllPasses)},
                          {std::begin(kAllDTypes), std::end(kAllDTypes)},
                          {std::begin(kAllLayouts), std::end(kAllLayouts)});
}
