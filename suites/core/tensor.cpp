#include "tensor.hpp"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

namespace nb {

void HostTensor::Free::operator()(std::byte* p) const { std::free(p); }

HostTensor::HostTensor(DType dt, std::size_t numel, std::size_t misalign_bytes)
    : dtype_(dt), numel_(numel), offset_(misalign_bytes) {
  if (misalign_bytes >= 64 || misalign_bytes % element_size(dt) != 0)
    throw std::invalid_argument("misalignment must be a multiple of the element size below 64");
  if (numel == 0) return;
  const std::size_t need = numel * element_size(dt) + misalign_bytes;
  // Large buffers: 2 MiB alignment so the kernel can back them with huge pages (fewer TLB misses
  // on DRAM-sized sweeps); small ones: one cache line.
  const std::size_t align = need >= (std::size_t{4} << 20) ? (std::size_t{2} << 20) : 64;
  const std::size_t size = (need + align - 1) / align * align;
  void* p = std::aligned_alloc(align, size);
  if (!p) throw std::bad_alloc();
  if (align > 64) madvise(p, size, MADV_HUGEPAGE);
  std::memset(p, 0, size);
  base_.reset(static_cast<std::byte*>(p));
}

std::vector<double> HostTensor::to_double() const {
  std::vector<double> v(numel_);
  for (std::size_t i = 0; i < numel_; ++i) v[i] = get(i);
  return v;
}

void HostTensor::assign(const std::vector<double>& values) {
  if (values.size() != numel_) throw std::invalid_argument("HostTensor::assign: size mismatch");
  for (std::size_t i = 0; i < numel_; ++i) set(i, values[i]);
}

HostTensor HostTensor::clone() const {
  HostTensor t(dtype_, numel_, offset_);
  if (numel_) std::memcpy(t.data(), data(), bytes());
  return t;
}

}  // namespace nb
