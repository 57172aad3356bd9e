// Process-wide cuDNN state (context.hpp).
#include "context.hpp"

#include <fmt/format.h>

#include <mutex>
#include <stdexcept>

#include "descriptors.hpp"

namespace nb_cudnn {

std::optional<std::string> library_unavailable_reason() {
  static const std::optional<std::string> reason = []() -> std::optional<std::string> {
    const std::size_t version = cudnnGetVersion();
    if (version / 10000 != CUDNN_MAJOR)
      return fmt::format("cuDNN {} loaded, built against cuDNN {}.x", version_string(version),
                         CUDNN_MAJOR);
    try {
      BackendDescriptor probe(NB_CUDNN_NAMED(CUDNN_BACKEND_TENSOR_DESCRIPTOR),
                              "availability probe");
    } catch (const CudnnError& e) {
      return std::string("cuDNN library not loadable: ") + e.what();
    }
    return std::nullopt;
  }();
  return reason;
}

namespace {

struct State {
  std::optional<std::string> reason;
  Context context;
};

State& state() {
  // Leaked on purpose: see context().
  static State* s = [] {
    auto* st = new State;
    if (auto why = nb_cuda::device_unavailable_reason()) {
      st->reason = why;
      return st;
    }
    if (auto why = library_unavailable_reason()) {
      st->reason = why;
      return st;
    }
    try {
      check(cudnnCreate(&st->context.handle), "cuDNN handle: cudnnCreate");
      nb_cuda::check(cudaStreamCreate(&st->context.stream), "cudaStreamCreate");
      check(cudnnSetStream(st->context.handle, st->context.stream), "cudnnSetStream");
    } catch (const std::exception& e) {
      st->reason = e.what();
    }
    return st;
  }();
  return *s;
}

}  // namespace

std::optional<std::string> unavailable_reason() { return state().reason; }

Context& context() {
  State& s = state();
  if (s.reason) throw std::runtime_error(*s.reason);
  return s.context;
}

const std::string& device_summary() {
  static std::once_flag once;
  static std::string summary;
  std::call_once(once, [] {
    const nb_cuda::DeviceInfo& d = nb_cuda::device_info();
    summary = fmt::format("cuDNN {}, {} sm_{}{}, device copy {:.0f} GB/s",
                          version_string(cudnnGetVersion()), d.name, d.cc_major, d.cc_minor,
                          nb_cuda::device_copy_gbps(std::size_t{1} << 30, context().stream));
  });
  return summary;
}

nb_cuda::L2Flusher& l2_flusher() {
  static nb_cuda::L2Flusher* f = new nb_cuda::L2Flusher;  // leaked with the context
  return *f;
}

}  // namespace nb_cudnn
