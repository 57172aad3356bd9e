// The GroupNorm and InstanceNorm kernels of groupnorm.cpp compiled a second time, as namespace
// bf16hw, with AVX512-BF16 enabled: bf16 outputs are narrowed with VCVTNEPS2BF16 instead of the
// integer emulation. register.cpp calls these entries only for bf16 data on a CPU that has
// avx512bf16.
#define NB_AVX512_WITH_BF16 1
#include "groupnorm.cpp"
