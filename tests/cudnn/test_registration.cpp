// Registration and availability of the `cudnn` and `cudnn_legacy` backends: what each registers,
// and that without a usable device both say why, with nb_cuda's reason ("no CUDA device
// (cudaErrorInsufficientDriver)" on a machine without a driver), answer unsupported_reason() with
// it, and refuse to instantiate. In a build without cuDNN the reason is CMake's.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <tuple>

#include "registry.hpp"
#ifdef NB_CUDNN_BUILT
#include "context.hpp"
#include "device.cuh"
#endif

namespace nb {
namespace {

using Key = std::tuple<Method, Pass, DType, Layout>;

std::set<Key> registered(const std::string& backend) {
  std::set<Key> out;
  for (const auto& r : Registry::instance().all())
    if (r.backend == backend) {
      EXPECT_FALSE(r.hidden) << backend;
      out.insert({r.method, r.pass, r.dtype, r.layout});
    }
  return out;
}

std::set<Key> every(std::initializer_list<Method> methods) {
  std::set<Key> out;
  for (Method m : methods)
    for (Pass p : kAllPasses)
      for (DType d : kAllDTypes)
        for (Layout l : kAllLayouts) out.insert({m, p, d, l});
  return out;
}

TEST(CudnnRegistration, CudnnRegistersEveryMethodPassDtypeAndLayout) {
  // GroupNorm included: where cuDNN has no engine, the row is SKIP with cuDNN's status text.
  EXPECT_EQ(registered("cudnn"), every({Method::batchnorm, Method::layernorm, Method::groupnorm,
                                        Method::instancenorm, Method::rmsnorm}));
}

TEST(CudnnRegistration, LegacyRegistersBatchNormOnly) {
  EXPECT_EQ(registered("cudnn_legacy"), every({Method::batchnorm}));
}

TEST(CudnnRegistration, UnavailableBackendsSayWhyAndRefuseToRun) {
  const auto& reg = Registry::instance();
#ifdef NB_CUDNN_BUILT
  const auto device = nb_cuda::device_unavailable_reason();
  if (!device) {
    // A GPU is present: either usable, or a cuDNN-specific reason (library, handle).
    const auto why = reg.backend_unavailable_reason("cudnn");
    if (why) {
      EXPECT_NE(why->find("cuDNN"), std::string::npos) << *why;
    }
    GTEST_SKIP() << "a CUDA device is present; cudnn: " << (why ? *why : "available");
  }
  const std::string expected = *device;
  EXPECT_EQ(expected.rfind("no CUDA device (", 0), 0u) << expected;
  EXPECT_EQ(nb_cudnn::unavailable_reason(), expected);
  EXPECT_THROW(nb_cudnn::context(), std::runtime_error);
#else
  const std::string expected = NB_CUDNN_UNAVAILABLE_REASON;
#endif
  for (const char* backend : {"cudnn", "cudnn_legacy"}) {
    EXPECT_EQ(reg.backend_unavailable_reason(backend), expected) << backend;
    const Registration* r =
        reg.find(backend, Method::batchnorm, Pass::fwd_train, DType::f32, Layout::nhwc);
    ASSERT_NE(r, nullptr) << backend;
    Problem p = parse_repro("batchnorm:fwd_train:f32:nhwc:n2c3h4w5");
    EXPECT_EQ(r->impl->unsupported_reason(p), expected) << backend;
    EXPECT_THROW(r->impl->instantiate(p, KernelArgs{}), std::runtime_error) << backend;
  }
}

}  // namespace
}  // namespace nb
