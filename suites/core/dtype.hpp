// Data types of normalization tensors and their conversions.
//
// x, y, dy and dx are stored in the problem's dtype; every other tensor (gamma, beta, saved
// statistics, running statistics, dgamma, dbeta) is fp32 (CONVENTIONS section 2). The 16-bit
// conversions round to nearest even, like PyTorch's c10::BFloat16 / c10::Half and the hardware
// instructions (VCVTNEPS2BF16, VCVTPS2PH with imm 0), so a backend's stored output can be compared
// bit for bit with the reference's rounding.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace nb {

enum class DType { f32, bf16, f16 };

/// Size of one element in bytes (4, 2, 2).
std::size_t element_size(DType dt);
/// Significand bits including the implicit one: f32 24, bf16 8, f16 11 (IEEE 754 / bfloat16).
int mantissa_digits(DType dt);
/// Unit roundoff 2^-mantissa_digits: the largest relative error of one rounding to nearest.
double unit_roundoff(DType dt);
std::string_view to_string(DType dt);
/// Parses "f32", "bf16", "f16"; throws std::invalid_argument naming the accepted values otherwise.
DType parse_dtype(std::string_view s);

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// fp32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN.
inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}
inline float bf16_to_float(std::uint16_t h) {
  return bits_float(static_cast<std::uint32_t>(h) << 16);
}

/// fp32 -> IEEE binary16 bits, round to nearest even, overflow to infinity, subnormals kept.
std::uint16_t float_to_f16(float f);
float f16_to_float(std::uint16_t h);

/// Reads element i of a buffer of type dt as double (exact: every f32/bf16/f16 value is a double).
inline double load_as_double(const void* p, DType dt, std::size_t i) {
  switch (dt) {
    case DType::f32:
      return static_cast<const float*>(p)[i];
    case DType::bf16:
      return bf16_to_float(static_cast<const std::uint16_t*>(p)[i]);
    case DType::f16:
      return f16_to_float(static_cast<const std::uint16_t*>(p)[i]);
  }
  return 0.0;
}

/// Stores v into element i of a buffer of type dt: double -> fp32 (nearest) -> 16-bit (nearest
/// even). The double rounding to 16 bits through fp32 can differ from a direct rounding only on
/// exact ties of the fp32 value, which is the behaviour of every fp32-accumulating kernel too.
inline void store_from_double(void* p, DType dt, std::size_t i, double v) {
  const float f = static_cast<float>(v);
  switch (dt) {
    case DType::f32:
      static_cast<float*>(p)[i] = f;
      break;
    case DType::bf16:
      static_cast<std::uint16_t*>(p)[i] = float_to_bf16(f);
      break;
    case DType::f16:
      static_cast<std::uint16_t*>(p)[i] = float_to_f16(f);
      break;
  }
}

}  // namespace nb
