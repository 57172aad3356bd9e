// Backend `onednn` when CMake did not find a usable oneDNN: every (method, pass, dtype, layout)
// is registered as unavailable, with the reason CMake found (NB_ONEDNN_UNAVAILABLE), so that
// `normbench list`, sweeps and the CSV say why there are no oneDNN rows. Nothing here runs.
// scripts/install_peers.sh installs oneDNN into .venv and rebuilds.
#include <memory>
#include <optional>
#include <string>

#include "registry.hpp"

#ifndef NB_ONEDNN_UNAVAILABLE
#define NB_ONEDNN_UNAVAILABLE "oneDNN not found"
#endif

namespace nb::onednn {
namespace {

class UnavailableImplementation final : public Implementation {
 public:
  std::optional<std::string> unavailable_reason() const override { return NB_ONEDNN_UNAVAILABLE; }
};

}  // namespace
}  // namespace nb::onednn

NB_REGISTER_BACKEND(onednn) {
  using namespace nb;
  register_implementation("onednn", std::make_shared<onednn::UnavailableImplementation>(),
                          {std::begin(kAllMethods), std::end(kAllMethods)},
                          {std::begin(kAllPasses), std::end(kAllPasses)},
                          {std::begin(kAllDTypes), std::end(kAllDTypes)},
                          {std::begin(kAllLayouts), std::end(kAllLayouts)});
}
