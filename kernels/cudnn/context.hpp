// Process-wide state of the `cudnn` and `cudnn_legacy` backends: whether they can run, the one
// cuDNN handle and the stream it works on, and the device summary reported in impl_info. Built on
// the GPU plumbing of kernels/cuda/device.cuh (nb_cuda_device).
#pragma once

#include <cuda_runtime.h>
#include <cudnn.h>

#include <optional>
#include <string>

#include "device.cuh"

namespace nb_cudnn {

/// Whether the cuDNN library itself is usable, without a GPU: the loaded libcudnn's major version
/// (cudnnGetVersion) equals the one compiled against (CUDNN_MAJOR), and its graph sub-library
/// loads (a backend descriptor can be created; libcudnn.so.9 loads libcudnn_graph.so.9 and the
/// engine libraries at run time). nullopt when usable, else "cuDNN library not loadable: <call>:
/// <status text>" or "cuDNN <runtime> loaded, built against <major>.x". Evaluated once.
std::optional<std::string> library_unavailable_reason();

/// nullopt when the backends can run, else the first reason they cannot, in this order:
/// nb_cuda::device_unavailable_reason() ("no CUDA device (cudaErrorInsufficientDriver)" without
/// a driver), library_unavailable_reason(), then "cuDNN handle: cudnnCreate: <status text>".
/// Evaluated once; creates the handle on success.
std::optional<std::string> unavailable_reason();

struct Context {
  cudnnHandle_t handle = nullptr;
  cudaStream_t stream = nullptr;  ///< the handle's stream (cudnnSetStream); events time on it
};
/// The process-wide handle and stream, created on first use and deliberately never destroyed (a
/// cudnnDestroy at exit could run after the CUDA runtime has shut down). Throws
/// std::runtime_error with unavailable_reason() when the backends cannot run.
Context& context();

/// "cuDNN 9.19.0, NVIDIA H100 80GB HBM3 sm_90, device copy 2900 GB/s": the loaded cuDNN version,
/// the device, and its device-to-device copy bandwidth measured once per process
/// (nb_cuda::device_copy_gbps). Throws when there is no device.
const std::string& device_summary();

/// The L2 flusher of cold mode (twice the L2 size written before a timed launch), shared.
nb_cuda::L2Flusher& l2_flusher();

}  // namespace nb_cudnn
