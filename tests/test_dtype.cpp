// 16-bit conversions: round to nearest even, checked against values computed by hand and against
// the hardware-independent definition (every 16-bit value round-trips; midpoints go to even).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "dtype.hpp"

namespace nb {
namespace {

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to even.
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);
  EXPECT_EQ(float_to_bf16(-2.0f), 0xc000);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);  // rounds to infinity
  EXPECT_EQ(float_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -24)), 0x0001);         // smallest subnormal
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)), 0x0000);         // tie with zero: even
  EXPECT_EQ(float_to_f16(std::ldexp(3.0f, -26)), 0x0001);         // 0.75 ulp rounds up
  EXPECT_EQ(float_to_f16(std::ldexp(3.0f, -25)), 0x0002);         // 1.5 ulp: tie to even 2
  EXPECT_EQ(float_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even
  EXPECT_EQ(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(f16_to_float(0x3555), 0.333251953125f);
}

TEST(DType, Every16BitValueRoundTrips) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto u = static_cast<std::uint16_t>(h);
    const float f = f16_to_float(u);
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_f16(f), u) << std::hex << h;
    const float b = bf16_to_float(u);
    if (!std::isnan(b)) {
      ASSERT_EQ(float_to_bf16(b), u) << std::hex << h;
    }
  }
}

TEST(DType, F16MidpointsRoundToEven) {
  // Between consecutive normal f16 values a and b, the fp32 midpoint goes to the even one.
  for (std::uint16_t h = 0x0400; h < 0x7bff; h = static_cast<std::uint16_t>(h + 97)) {
    const float a = f16_to_float(h), b = f16_to_float(static_cast<std::uint16_t>(h + 1));
    const float mid = (a + b) / 2;  // exact in fp32
    EXPECT_EQ(float_to_f16(mid), (h & 1) ? h + 1 : h) << std::hex << h;
    EXPECT_EQ(float_to_f16(std::nextafter(mid, b)), h + 1);
    EXPECT_EQ(float_to_f16(std::nextafter(mid, a)), h);
  }
}

TEST(DType, Properties) {
  EXPECT_EQ(element_size(DType::f32), 4u);
  EXPECT_EQ(element_size(DType::bf16), 2u);
  EXPECT_DOUBLE_EQ(unit_roundoff(DType::bf16), 1.0 / 256);
  EXPECT_DOUBLE_EQ(unit_roundoff(DType::f16), 1.0 / 2048);
  EXPECT_THROW(parse_dtype("fp32"), std::invalid_argument);
}

}  // namespace
}  // namespace nb
