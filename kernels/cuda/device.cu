// Device plumbing (device.cuh).
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "device.cuh"

namespace nb_cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(e) + " (" +
                             cudaGetErrorString(e) + ")");
}

std::optional<std::string> device_unavailable_reason() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a failed initialisation
    return std::string("no CUDA device (") + cudaGetErrorName(e) + ")";
  }
  if (count == 0) return std::string("no CUDA device (cudaGetDeviceCount returned 0)");
  return std::nullopt;
}

const DeviceInfo& device_info() {
  static const DeviceInfo info = [] {
    int dev = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
    DeviceInfo d;
    d.name = prop.name;
    d.cc_major = prop.major;
    d.cc_minor = prop.minor;
    d.sm_count = prop.multiProcessorCount;
    d.max_shared_optin = prop.sharedMemPerBlockOptin;
    d.l2_bytes = static_cast<std::size_t>(prop.l2CacheSize);
    return d;
  }();
  return info;
}

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
  if (bytes) check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
}
DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}
DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  std::swap(ptr_, o.ptr_);
  std::swap(bytes_, o.bytes_);
  return *this;
}
void DeviceBuffer::upload(const void* host) {
  if (bytes_) check(cudaMemcpy(ptr_, host, bytes_, cudaMemcpyHostToDevice), "upload");
}
void DeviceBuffer::download(void* host) const {
  if (bytes_) check(cudaMemcpy(host, ptr_, bytes_, cudaMemcpyDeviceToHost), "download");
}

EventTimer::EventTimer() {
  check(cudaEventCreate(&start_), "cudaEventCreate");
  check(cudaEventCreate(&stop_), "cudaEventCreate");
}
EventTimer::~EventTimer() {
  cudaEventDestroy(start_);
  cudaEventDestroy(stop_);
}
void EventTimer::start(cudaStream_t s) { check(cudaEventRecord(start_, s), "cudaEventRecord"); }
double EventTimer::stop_seconds(cudaStream_t s) {
  check(cudaEventRecord(stop_, s), "cudaEventRecord");
  check(cudaEventSynchronize(stop_), "cudaEventSynchronize");
  float ms = 0.f;
  check(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
  return static_cast<double>(ms) * 1e-3;
}

L2Flusher::L2Flusher() : buffer_(std::max<std::size_t>(2 * device_info().l2_bytes, 1 << 20)) {}
void L2Flusher::flush(cudaStream_t s) {
  check(cudaMemsetAsync(buffer_.get(), 0, buffer_.bytes(), s), "L2 flush");
}

namespace {
__global__ void copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst,
                            std::size_t n) {
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}
}  // namespace

double device_copy_gbps(std::size_t bytes, cudaStream_t s) {
  bytes = bytes / 16 * 16;
  DeviceBuffer src(bytes), dst(bytes);
  check(cudaMemsetAsync(src.get(), 1, bytes, s), "cudaMemset");
  const std::size_t n = bytes / 16;
  const int blocks = device_info().sm_count * 8;
  EventTimer timer;
  std::vector<double> gbps;
  for (int rep = 0; rep < 6; ++rep) {
    timer.start(s);
    copy_kernel<<<blocks, 512, 0, s>>>(static_cast<const uint4*>(src.get()),
                                       static_cast<uint4*>(dst.get()), n);
    check(cudaGetLastError(), "copy_kernel");
    const double t = timer.stop_seconds(s);
    if (rep > 0) gbps.push_back(2.0 * static_cast<double>(bytes) / t / 1e9);  // first: warm-up
  }
  std::sort(gbps.begin(), gbps.end());
  return gbps[gbps.size() / 2];
}

}  // namespace nb_cuda
