// Which problems cuDNN supports on an H100, decided without a GPU. cuDNN >= 9.8 builds heuristics
// from a device-properties descriptor ("deviceless" planning); the one used here is
// h100_sxm_device_properties.json (cudaDeviceProp of an H100 SXM5 80GB: 132 SMs, 50 MiB L2,
// 227 KiB opt-in shared memory per block, sm_90). For every (method, pass, dtype, layout) the
// mapped graph is given to heuristics A and FALLBACK; an engine configuration they return has
// passed that engine's support checks for this graph on sm_90. Execution plans themselves are not
// finalized: that compiles or loads kernels and needs a real driver.
//
// cuDNN's runtime-compiled engines check support only after loading libcuda.so.1 (a machine
// without a driver has none), so these tests skip unless it loads; the CTest entry
// cudnn_deviceless_support runs them with the CUDA toolkit's stub library as libcuda.so.1 and
// NB_CUDNN_REQUIRE_DEVICELESS=1, which turns the skip into a failure.
//
// The support matrix is printed (GTest's RecordProperty and stdout) for the README.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

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

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

const std::string& h100_json() {
  static const std::string json =
      read_file(std::string(NB_CUDNN_TEST_DIR) + "/h100_sxm_device_properties.json");
  return json;
}

TEST(CudnnDeviceProperties, FromJsonWithoutAGpu) {
  ASSERT_FALSE(h100_json().empty());
  BackendDescriptor d = device_properties_from_json(h100_json());
  const std::string back = d.get_string(NB_CUDNN_NAMED(CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION));
  EXPECT_NE(back.find("\"multiProcessorCount\":132"), std::string::npos) << back;
  EXPECT_NE(back.find("\"deviceVer\":900"), std::string::npos) << back;
  // A description without the device name is rejected, naming the descriptor.
  try {
    device_properties_from_json("{\"multiProcessorCount\":132}");
    FAIL() << "accepted an incomplete device description";
  } catch (const CudnnError& e) {
    EXPECT_NE(std::string(e.what()).find("CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR"), std::string::npos)
        << e.what();
    EXPECT_FALSE(e.not_supported());
  }
}

class CudnnDeviceless : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
      const std::string why = std::string("libcuda.so.1 does not load (") + dlerror() +
                              "): cuDNN filters out its runtime-compiled engines; run the CTest "
                              "entry cudnn_deviceless_support (the toolkit's stub)";
      if (std::getenv("NB_CUDNN_REQUIRE_DEVICELESS")) FAIL() << why;
      GTEST_SKIP() << why;
    }
    properties_ = device_properties_from_json(h100_json());
  }
  PlanTarget target() const { return PlanTarget{nullptr, properties_.get()}; }

  /// Engines that pass cuDNN's support checks for the mapping (both heuristic modes), and the
  /// first heuristic error when there are none.
  std::vector<std::int64_t> viable(const NormMapping& m, DType dt, std::string* error) const {
    NormGraph g(m, dt, target());
    std::vector<std::int64_t> engines;
    for (const HeuristicAnswer& a : query_heuristics(g, target())) {
      engines.insert(engines.end(), a.viable_engines.begin(), a.viable_engines.end());
      if (error && error->empty() && !a.error.empty()) *error = a.error;
    }
    return engines;
  }

  BackendDescriptor properties_;
};

Problem problem(Method m, Pass pass, DType dt, Layout layout, const std::string& shape) {
  Problem p;
  p.method = m;
  p.pass = pass;
  p.dtype = dt;
  p.layout = layout;
  nb::parse_shape(shape, p);
  return p;
}

std::string engines_text(const std::vector<std::int64_t>& e) {
  std::ostringstream s;
  for (std::size_t i = 0; i < e.size(); ++i) s << (i ? "," : "") << e[i];
  return e.empty() ? "-" : s.str();
}

/// Small shapes and shapes of CONVENTIONS section 4 (ResNet-50 BatchNorm, transformer rows,
/// Stable Diffusion GroupNorm).
std::vector<std::string> shapes_for(Method m) {
  switch (m) {
    case Method::batchnorm:
      return {"n8c64h16w16", "n50c256h56w56"};
    case Method::layernorm:
    case Method::rmsnorm:
      return {"n8c64h16w16", "t8192d1024", "t16384d4096"};
    case Method::instancenorm:
      return {"n8c64h16w16", "n2c64h28w28"};
    case Method::groupnorm:
      return {"n8c64h16w16g32", "n2c320h96w96g32"};
  }
  return {};
}

TEST_F(CudnnDeviceless, SupportMatrixOnH100) {
  int supported = 0, total = 0;
  for (Method m : nb::kAllMethods)
    for (Pass pass : nb::kAllPasses)
      for (DType dt : nb::kAllDTypes)
        for (Layout l : nb::kAllLayouts)
          for (const std::string& shape : shapes_for(m)) {
            const Problem p = problem(m, pass, dt, l, shape);
            const std::string repro = nb::to_repro(p);
            std::string error;
            std::vector<std::int64_t> engines;
            std::string how = "NORM";
            try {
              engines = viable(map_problem(p), dt, &error);
              if (engines.empty() && m == Method::batchnorm && pass == Pass::fwd_infer) {
                engines = viable(map_folded_batchnorm_inference(p), dt, nullptr);
                how = "folded";
              }
            } catch (const std::exception& e) {
              ADD_FAILURE() << repro << ": " << e.what();
              continue;
            }
            ++total;
            if (!engines.empty()) ++supported;
            std::cout << "  " << repro << "  " << (engines.empty() ? "UNSUPPORTED" : how)
                      << " engines " << engines_text(engines);
            if (engines.empty()) std::cout << "  (" << error << ")";
            std::cout << "\n";
            // cuDNN 9.19 has no engine on sm_90 for GROUP norm, nor for BatchNorm inference of
            // NCHW data (NORM_FORWARD inference matches no engine; the pointwise engines of the
            // folded graph need channels-last data). Whatever a later version does there, no
            // engine must mean a build_plan failure classified NOT_SUPPORTED (the row's SKIP).
            // Everything else is what the backend claims, and must have an engine.
            const bool may_lack =
                m == Method::groupnorm ||
                (m == Method::batchnorm && pass == Pass::fwd_infer && l == Layout::nchw);
            if (!may_lack) {
              EXPECT_FALSE(engines.empty()) << repro << " has no engine: " << error;
            } else if (engines.empty()) {
              NormGraph g(map_problem(p), dt, target());
              try {
                build_plan(g, target());
                ADD_FAILURE() << repro << ": a plan without an engine";
              } catch (const CudnnError& e) {
                EXPECT_TRUE(e.not_supported()) << repro << ": " << e.what();
              }
            }
          }
  std::cout << "  " << supported << " of " << total << " cases have an engine on sm_90\n";
}

TEST_F(CudnnDeviceless, BatchNormInferenceTakesTheFoldedGraphWhereNormInferenceHasNoEngine) {
  // NHWC: the folded pointwise graph has an engine (what backend `cudnn` runs when NORM_FORWARD
  // inference has none).
  for (DType dt : nb::kAllDTypes) {
    const Problem p = problem(Method::batchnorm, Pass::fwd_infer, dt, Layout::nhwc, "n8c64h16w16");
    std::string error;
    const auto norm = viable(map_problem(p), dt, &error);
    const auto folded = viable(map_folded_batchnorm_inference(p), dt, nullptr);
    EXPECT_FALSE(norm.empty() && folded.empty()) << nb::to_repro(p) << ": " << error;
    if (norm.empty()) {
      EXPECT_NE(error.find("NOT_SUPPORTED"), std::string::npos) << nb::to_repro(p) << error;
    }
  }
}

TEST_F(CudnnDeviceless, UnsupportedGraphsFailWithCudnnsNotSupportedText) {
  // What a sweep's SKIP row says: build_plan's message, classified as not supported.
  const Problem p =
      problem(Method::groupnorm, Pass::fwd_train, DType::f32, Layout::nchw, "n8c64h16w16g32");
  NormGraph g(map_problem(p), p.dtype, target());
  if (!viable(map_problem(p), p.dtype, nullptr).empty())
    GTEST_SKIP() << "this cuDNN has a GROUP norm engine";
  try {
    build_plan(g, target());
    FAIL() << "a plan without an engine";
  } catch (const CudnnError& e) {
    EXPECT_TRUE(e.not_supported()) << e.what();
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("no cuDNN execution plan: ", 0), 0u) << what;
    EXPECT_NE(what.find("CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR heuristic A"), std::string::npos)
        << what;
    EXPECT_NE(what.find("CUDNN_STATUS_NOT_SUPPORTED"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace nb_cudnn
