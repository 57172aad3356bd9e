// What cuDNN does without a GPU, through the wrappers of kernels/cudnn: the library version, the
// backend descriptors of every mapped tensor (read back attribute by attribute), the operation
// graphs of every (method, pass, layout, dtype) finalized without a handle, the error messages
// (call, descriptor, attribute, status name, cuDNN's reason), and the legacy 4-d and BatchNorm
// descriptors. cudnnCreate needs a device; that is covered in test_registration.cpp.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "context.hpp"
#include "descriptors.hpp"
#include "graph.hpp"
#include "mapping.hpp"

namespace nb_cudnn {
namespace {

using nb::DType;
using nb::Layout;
using nb::Method;
using nb::Pass;
using nb::Problem;

Problem problem(Method m, Pass pass, DType dt, Layout layout, const std::string& shape) {
  Problem p;
  p.method = m;
  p.pass = pass;
  p.dtype = dt;
  p.layout = layout;
  nb::parse_shape(shape, p);
  return p;
}

std::string shape_for(Method m) { return m == Method::groupnorm ? "n2c8h3w5g4" : "n2c3h4w5"; }

std::vector<std::int64_t> get_int64s(const BackendDescriptor& d, cudnnBackendAttributeName_t a) {
  std::vector<std::int64_t> v(8);
  std::int64_t count = 0;
  check(cudnnBackendGetAttribute(d.get(), a, CUDNN_TYPE_INT64, 8, &count, v.data()), "get");
  v.resize(static_cast<std::size_t>(count));
  return v;
}

TEST(CudnnLibrary, VersionAndLoadability) {
  const std::size_t v = cudnnGetVersion();
  EXPECT_EQ(v / 10000, static_cast<std::size_t>(CUDNN_MAJOR)) << "loaded vs compiled-against major";
  EXPECT_EQ(version_string(91900), "9.19.0");
  EXPECT_EQ(version_string(90802), "9.8.2");
  EXPECT_EQ(library_unavailable_reason(), std::nullopt)
      << "the graph sub-library loads without a GPU: " << *library_unavailable_reason();
}

TEST(CudnnLibrary, StatusCategories) {
  EXPECT_TRUE(CudnnError(CUDNN_STATUS_NOT_SUPPORTED, "").not_supported());
  EXPECT_TRUE(CudnnError(CUDNN_STATUS_NOT_SUPPORTED_SHAPE, "").not_supported());
  EXPECT_TRUE(
      CudnnError(CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT, "").not_supported());
  EXPECT_FALSE(CudnnError(CUDNN_STATUS_BAD_PARAM, "").not_supported());
  EXPECT_FALSE(CudnnError(CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER, "").not_supported());
  EXPECT_FALSE(CudnnError(CUDNN_STATUS_NOT_INITIALIZED, "").not_supported());
}

TEST(CudnnDescriptors, TensorAttributesReadBackAsMapped) {
  for (Method m : nb::kAllMethods)
    for (Pass pass : nb::kAllPasses)
      for (Layout l : nb::kAllLayouts)
        for (DType dt : nb::kAllDTypes) {
          const Problem p = problem(m, pass, dt, l, shape_for(m));
          for (const TensorSpec& spec : map_problem(p).tensors) {
            const std::string where = nb::to_repro(p) + " " + to_string(spec.role);
            BackendDescriptor d = make_tensor(spec, dt);
            EXPECT_EQ(get_int64s(d, CUDNN_ATTR_TENSOR_DIMENSIONS),
                      std::vector<std::int64_t>(spec.shape.dims.begin(), spec.shape.dims.end()))
                << where;
            EXPECT_EQ(
                get_int64s(d, CUDNN_ATTR_TENSOR_STRIDES),
                std::vector<std::int64_t>(spec.shape.strides.begin(), spec.shape.strides.end()))
                << where;
            EXPECT_EQ(d.get_int64(NB_CUDNN_NAMED(CUDNN_ATTR_TENSOR_UNIQUE_ID)), spec.uid) << where;
            cudnnDataType_t type{};
            std::int64_t count = 0;
            check(cudnnBackendGetAttribute(d.get(), CUDNN_ATTR_TENSOR_DATA_TYPE,
                                           CUDNN_TYPE_DATA_TYPE, 1, &count, &type),
                  "get data type");
            EXPECT_EQ(type, spec.data_type ? data_type(dt) : CUDNN_DATA_FLOAT) << where;
            bool by_value = false;
            check(cudnnBackendGetAttribute(d.get(), CUDNN_ATTR_TENSOR_IS_BY_VALUE,
                                           CUDNN_TYPE_BOOLEAN, 1, &count, &by_value),
                  "get by-value");
            EXPECT_EQ(by_value, spec.by_value) << where;
          }
        }
}

TEST(CudnnDescriptors, DataTypes) {
  EXPECT_EQ(data_type(DType::f32), CUDNN_DATA_FLOAT);
  EXPECT_EQ(data_type(DType::bf16), CUDNN_DATA_BFLOAT16);
  EXPECT_EQ(data_type(DType::f16), CUDNN_DATA_HALF);
}

TEST(CudnnDescriptors, ErrorsNameTheCallTheDescriptorAndCudnnsReason) {
  // A tensor without dimensions cannot be finalized.
  BackendDescriptor t(NB_CUDNN_NAMED(CUDNN_BACKEND_TENSOR_DESCRIPTOR), "incomplete");
  try {
    t.finalize();
    FAIL() << "finalized a tensor descriptor without dimensions";
  } catch (const CudnnError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("cudnnBackendFinalize(CUDNN_BACKEND_TENSOR_DESCRIPTOR incomplete): ", 0),
              0u)
        << what;
    EXPECT_NE(what.find(cudnnGetErrorString(e.status())), std::string::npos) << what;
    EXPECT_FALSE(e.not_supported()) << what;
  }
  // An attribute of the wrong type names the attribute.
  BackendDescriptor u(NB_CUDNN_NAMED(CUDNN_BACKEND_TENSOR_DESCRIPTOR), "u");
  const float not_an_int = 1.0f;
  try {
    u.set(NB_CUDNN_NAMED(CUDNN_ATTR_TENSOR_UNIQUE_ID), CUDNN_TYPE_FLOAT, 1, &not_an_int);
    FAIL() << "accepted a float unique id";
  } catch (const CudnnError& e) {
    EXPECT_NE(
        std::string(e.what()).find("cudnnBackendSetAttribute(CUDNN_BACKEND_TENSOR_DESCRIPTOR u, "
                                   "CUDNN_ATTR_TENSOR_UNIQUE_ID): CUDNN_STATUS_BAD_PARAM"),
        std::string::npos)
        << e.what();
  }
}

TEST(CudnnGraph, EveryMappedGraphFinalizesWithoutAGpu) {
  // Operation and graph descriptors are validated by cuDNN on the host: a wrong attribute, a
  // missing tensor or inconsistent shapes fail here, before any engine is considered.
  for (Method m : nb::kAllMethods)
    for (Pass pass : nb::kAllPasses)
      for (Layout l : nb::kAllLayouts)
        for (DType dt : nb::kAllDTypes)
          for (bool affine : {true, false}) {
            Problem p = problem(m, pass, dt, l, shape_for(m));
            p.affine = affine;
            std::vector<NormMapping> mappings{map_problem(p)};
            if (m == Method::batchnorm && pass == Pass::fwd_infer)
              mappings.push_back(map_folded_batchnorm_inference(p));
            for (const NormMapping& mapping : mappings) {
              try {
                NormGraph g(mapping, dt, PlanTarget{});
                EXPECT_GE(g.graph().get_int64(
                              NB_CUDNN_NAMED(CUDNN_ATTR_OPERATIONGRAPH_ENGINE_GLOBAL_COUNT)),
                          0);
              } catch (const std::exception& e) {
                ADD_FAILURE() << nb::to_repro(p) << ": " << e.what();
              }
            }
          }
}

TEST(CudnnGraph, VariantPackFinalizesWithoutAGpu) {
  std::vector<float> host(4);
  int scratch = 0;
  BackendDescriptor pack = make_variant_pack({1, 2}, {host.data(), host.data() + 2}, &scratch);
  EXPECT_TRUE(pack);
  EXPECT_THROW(make_variant_pack({1, 2}, {host.data()}, nullptr), std::logic_error);
}

TEST(CudnnLegacyDescriptors, DataAndDerivedBatchNormShapes) {
  for (Layout l : nb::kAllLayouts)
    for (DType dt : nb::kAllDTypes) {
      const Problem p = problem(Method::batchnorm, Pass::fwd_train, dt, l, "n2c3h4w5");
      const LegacyBatchNormShapes s = map_legacy_batchnorm(p);
      LegacyTensorDescriptor x, bn;
      x.set_4d(data_type(dt), s.data, "x");
      cudnnDataType_t type{};
      EXPECT_EQ(x.get_4d(&type), s.data) << nb::to_repro(p);
      EXPECT_EQ(type, data_type(dt));
      bn.derive_batchnorm(x);
      const Tensor4d derived = bn.get_4d(&type);
      EXPECT_EQ(derived.dims, s.param.dims) << "CUDNN_BATCHNORM_SPATIAL: 1 x C x 1 x 1";
      EXPECT_EQ(derived.span(), p.c) << "per-channel buffers of C floats";
      EXPECT_EQ(type, CUDNN_DATA_FLOAT) << "fp32 statistics and parameters for 16-bit data";
    }
}

}  // namespace
}  // namespace nb_cudnn
