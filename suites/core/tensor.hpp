// Host tensors: 64-byte aligned (2 MiB aligned and backed by transparent huge pages when large)
// buffers of one dtype, optionally shifted off alignment by a few bytes so tests can check that
// kernels handle a tensor that does not start on a 64-byte boundary.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "dtype.hpp"

namespace nb {

class HostTensor {
 public:
  HostTensor() = default;
  /// numel elements of dt, zero-filled. misalign_bytes (a multiple of the element size, < 64)
  /// shifts the start off the 64-byte boundary. Throws std::bad_alloc when memory runs out.
  HostTensor(DType dt, std::size_t numel, std::size_t misalign_bytes = 0);

  DType dtype() const { return dtype_; }
  std::size_t numel() const { return numel_; }
  std::size_t bytes() const { return numel_ * element_size(dtype_); }
  bool empty() const { return numel_ == 0; }
  void* data() { return base_ ? base_.get() + offset_ : nullptr; }
  const void* data() const { return base_ ? base_.get() + offset_ : nullptr; }
  /// Typed access for fp32 tensors (gamma, statistics); nullptr when empty.
  float* f32() { return static_cast<float*>(data()); }
  const float* f32() const { return static_cast<const float*>(data()); }

  double get(std::size_t i) const { return load_as_double(data(), dtype_, i); }
  void set(std::size_t i, double v) { store_from_double(data(), dtype_, i, v); }
  std::vector<double> to_double() const;
  /// Rounds each value to this dtype (values.size() must equal numel()).
  void assign(const std::vector<double>& values);
  /// A deep copy with the same dtype, size and misalignment.
  HostTensor clone() const;

 private:
  struct Free {
    void operator()(std::byte* p) const;
  };
  std::unique_ptr<std::byte[], Free> base_;
  DType dtype_ = DType::f32;
  std::size_t numel_ = 0;
  std::size_t offset_ = 0;
};

}  // namespace nb
