// Backend `pytorch` when CMake did not find a usable libtorch: every (method, pass, dtype, layout)
// is registered as unavailable, with the reason CMake found (NB_PYTORCH_UNAVAILABLE), so that
// `normbench list`, sweeps and the CSV say why there are no PyTorch rows. Nothing here runs.
// scripts/install_peers.sh installs the torch wheel into .venv and rebuilds.
#include <memory>
#include <optional>
#include <string>

#include "registry.hpp"

#ifndef NB_PYTORCH_UNAVAILABLE
#define NB_PYTORCH_UNAVAILABLE "torch not installed"
#endif

namespace nb::pytorch {
namespace {

class UnavailableImplementation final : public Implementation {
 public:
  std::optional<std::string> unavailable_reason() const override { return NB_PYTORCH_UNAVAILABLE; }
};

}  // namespace
}  // namespace nb::pytorch

NB_REGISTER_BACKEND(pytorch) {
  using namespace nb;
  register_implementation("pytorch", std::make_shared<pytorch::UnavailableImplementation>(),
                          {std::begin(kAllMethods), std::end(kAllMethods)},
                          {std::begin(kAllPasses), std::end(kAllPasses)},
                          {std::begin(kAllDTypes), std::end(kAllDTypes)},
                          {std::begin(kAllLayouts), std::end(kAllLayouts)});
}
