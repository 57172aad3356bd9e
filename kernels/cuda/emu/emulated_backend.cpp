// The emulated `cuda` backend: dispatch.cuh compiled by the host compiler (portable.cuh maps
// the CUDA constructs to the SIMT emulator), run on the host buffers of nb::KernelArgs.
#include "emulated_backend.hpp"

#include <limits>
#include <vector>

#include "../dispatch.cuh"

namespace nb_cuda_emu {
namespace {

class EmulatedCuda final : public nb::Implementation {
 public:
  explicit EmulatedCuda(int sm_count) { limits_.sm_count = sm_count; }
  std::optional<std::string> unsupported_reason(const nb::Problem& p) const override {
    return nb_cuda_emu::unsupported_reason(p, limits_);
  }
  void run(const nb::Problem& p, const nb::KernelArgs& args) override {
    if (auto why = unsupported_reason(p)) throw std::runtime_error("unsupported: " + *why);
    // Scratch starts as NaN, as uninitialised device memory might: a read before a write shows.
    std::vector<float> workspace((workspace_bytes(p, limits_) + 3) / 4,
                                 std::numeric_limits<float>::quiet_NaN());
    run_pass(p, args, workspace.data(), limits_, nullptr);
  }

 private:
  DeviceLimits limits_;
};

}  // namespace

std::shared_ptr<nb::Implementation> make_emulated_cuda(int sm_count) {
  return std::make_shared<EmulatedCuda>(sm_count);
}

bool emulated_implements(nb::Method m) { return implements(m); }

}  // namespace nb_cuda_emu
