// Device plumbing of the GPU backends (`cuda`, and later `cudnn`): availability with the CUDA
// error name, device properties, owning device buffers, event timing, the L2 flush of cold mode
// and the device copy bandwidth used as the roofline. Host code; throws std::runtime_error with
// the CUDA error name on failure.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <optional>
#include <string>

namespace nb_cuda {

/// Throws std::runtime_error("<what>: <cudaGetErrorName> (<cudaGetErrorString>)") unless e is
/// cudaSuccess.
void check(cudaError_t e, const char* what);

/// nullopt when a CUDA device is usable, else "no CUDA device (<error name>)". Without a driver
/// cudaGetDeviceCount returns cudaErrorInsufficientDriver (CONVENTIONS section 5), without a GPU
/// cudaErrorNoDevice; both, and a count of 0, mean no device.
std::optional<std::string> device_unavailable_reason();

struct DeviceInfo {
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  std::size_t max_shared_optin = 0;  ///< bytes of shared memory per block with opt-in
  std::size_t l2_bytes = 0;
};
/// Properties of the current device (queried once). Throws when there is no device.
const DeviceInfo& device_info();

/// An owning device allocation (cudaMalloc), movable, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }
  void upload(const void* host);        ///< bytes() bytes, synchronous
  void download(void* host) const;      ///< bytes() bytes, synchronous

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

/// A pair of CUDA events around work enqueued on a stream.
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start(cudaStream_t s);
  /// Records the stop event, waits for it and returns the elapsed seconds.
  double stop_seconds(cudaStream_t s);

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

/// Evicts the L2 cache by writing a buffer of twice its size (cold mode, before a timed launch).
class L2Flusher {
 public:
  L2Flusher();
  void flush(cudaStream_t s);

 private:
  DeviceBuffer buffer_;
};

/// Device-to-device copy bandwidth of a grid-stride 128-bit copy kernel over `bytes` (default
/// 1 GiB, well beyond L2): median of 5 runs, GB/s (1e9) counting bytes read + written, like the
/// host roofline.
double device_copy_gbps(std::size_t bytes = std::size_t{1} << 30, cudaStream_t s = nullptr);

}  // namespace nb_cuda
