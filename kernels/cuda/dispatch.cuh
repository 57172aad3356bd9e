// The `cuda` backend's entry points, shared by the nvcc build (cuda_backend.cu, device pointers)
// and the emulated build (emu/emulated_backend.cpp, host pointers): which problems are handled,
// the workspace they need, and one execution of a pass on a stream.
#pragma once

#include <optional>
#include <string>

#include "channel_norms.cuh"
#include "rows.cuh"

namespace NB_CUDA_NAMESPACE {

/// The methods implemented (registered) by this backend, all passes, dtypes and layouts:
/// LayerNorm/RMSNorm (rows.cuh), BatchNorm/GroupNorm/InstanceNorm (channel_norms.cuh).
inline bool implements(nb::Method m) {
  return m == nb::Method::layernorm || m == nb::Method::rmsnorm || is_channel_method(m);
}

/// nullopt when p is handled on a device with these limits, else the reason.
inline std::optional<std::string> unsupported_reason(const nb::Problem& p,
                                                     const DeviceLimits& lim) {
  if (!implements(p.method)) return std::string("method not implemented by the cuda backend");
  return p.is_rows() ? rows_unsupported(p, lim) : channel_unsupported(p, lim);
}

/// Bytes of device scratch memory run_pass needs for p (partial sums).
inline std::size_t workspace_bytes(const nb::Problem& p, const DeviceLimits& lim) {
  return p.is_rows() ? rows_workspace_bytes(p, lim) : channel_workspace_bytes(p, lim);
}

template <class T>
void run_typed(const nb::Problem& p, const nb::KernelArgs& a, void* workspace,
               const DeviceLimits& lim, Stream stream) {
  if (p.is_rows())
    rows_run<T>(p, a, workspace, lim, stream);
  else
    channel_run<T>(p, a, workspace, lim, stream);
}

/// Enqueues the kernels of p's pass on `stream`. `a` holds device pointers (host pointers in
/// emulation) with the shapes of nb::KernelArgs; workspace has workspace_bytes(p, lim) bytes.
/// Throws std::runtime_error if a launch fails (nbemu::Error in emulation).
inline void run_pass(const nb::Problem& p, const nb::KernelArgs& a, void* workspace,
                     const DeviceLimits& lim, Stream stream) {
  switch (p.dtype) {
    case nb::DType::f32:
      return run_typed<float>(p, a, workspace, lim, stream);
    case nb::DType::bf16:
      return run_typed<bf16_t>(p, a, workspace, lim, stream);
    case nb::DType::f16:
      return run_typed<f16_t>(p, a, workspace, lim, stream);
  }
}

}  // namespace NB_CUDA_NAMESPACE
