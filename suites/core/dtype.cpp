#include "dtype.hpp"

#include <cmath>
#include <stdexcept>

namespace nb {

std::size_t element_size(DType dt) { return dt == DType::f32 ? 4 : 2; }

int mantissa_digits(DType dt) {
  switch (dt) {
    case DType::f32:
      return 24;
    case DType::bf16:
      return 8;
    case DType::f16:
      return 11;
  }
  return 24;
}

double unit_roundoff(DType dt) { return std::ldexp(1.0, -mantissa_digits(dt)); }

std::string_view to_string(DType dt) {
  switch (dt) {
    case DType::f32:
      return "f32";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "f16";
  }
  return "?";
}

DType parse_dtype(std::string_view s) {
  if (s == "f32") return DType::f32;
  if (s == "bf16") return DType::bf16;
  if (s == "f16") return DType::f16;
  throw std::invalid_argument("unknown dtype '" + std::string(s) + "' (expected f32, bf16, f16)");
}

// binary16: 1 sign, 5 exponent (bias 15), 10 fraction bits.
std::uint16_t float_to_f16(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {  // below the smallest normal 2^-14: subnormal or zero
    // Value = abs_float; subnormal unit is 2^-24. Round to nearest even in integer arithmetic.
    if (abs < 0x33000000u) return sign;  // < 2^-25 rounds to zero (2^-25 ties to even zero)
    const std::uint32_t mant = (abs & 0x007fffffu) | 0x00800000u;
    const int exp =
        static_cast<int>(abs >> 23);  // biased fp32 exponent, value = mant * 2^(exp-150)
    const int shift = 126 - exp;      // to units of 2^-24: mant >> (150-24-exp)
    const std::uint32_t q = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1);
    std::uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return sign | static_cast<std::uint16_t>(r);
  }
  // Normal: rebias exponent and round the 13 dropped fraction bits to nearest even.
  std::uint32_t v = abs - 0x38000000u;  // exponent bias 127 -> 15
  v += 0x0fffu + ((v >> 13) & 1u);
  return sign | static_cast<std::uint16_t>(v >> 13);
}

float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = (static_cast<std::uint32_t>(h) & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t frac = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: frac * 2^-24
    const float mag = std::ldexp(static_cast<float>(frac), -24);
    return sign ? -mag : mag;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (frac << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (frac << 13));
}

}  // namespace nb
