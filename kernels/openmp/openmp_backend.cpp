// Registration of the `openmp` backend: portable C++ with OpenMP threads and compiler
// vectorisation (`#pragma omp simd`, no intrinsics), for every method x pass x dtype x layout.
//
// It dispatches a problem to its method family (batchnorm.cpp, layernorm.cpp, groupnorm.cpp, with
// channels_last.cpp for NHWC BatchNorm/GroupNorm/InstanceNorm; the backward of reduction units
// of at most 2 elements goes to degenerate_backward.cpp, in fp64) and reports, per instance, the
// thread count and the instruction set the kernels' target_clones resolved to on this CPU.
//
// Limits: every valid problem is supported; an invalid one (problem.hpp validate()) is reported
// unsupported with its reason. Threads: omp_get_max_threads() (OMP_NUM_THREADS).
#include <cstdlib>
#include <memory>
#include <string>

#include "common.hpp"
#include "machine.hpp"

namespace nb::omp {

bool prefetch_worthwhile(Index unit_bytes) {
  const MachineInfo& m = machine();
  const Index threads = omp_get_max_threads();
  const Index share =
      static_cast<Index>(m.l2_bytes) + static_cast<Index>(m.llc_bytes) / (2 * threads);
  return 2 * unit_bytes <= share;
}

namespace {

/// The clone GCC's target_clones resolver picks on this CPU (the same test it makes).
std::string instruction_set() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3";
  return "x86-64";
#else
  return "portable";
#endif
}

bool plant_slowdown() {
  static const bool on = [] {
    const char* e = std::getenv("NORMBENCH_PLANT_SLOWDOWN");
    return e && std::string(e) == "openmp_batchnorm";
  }();
  return on;
}

class OpenMPInstance final : public Instance {
 public:
  OpenMPInstance(const Problem& p, const KernelArgs& a) : problem_(p), args_(a) {}
  void run() override {
    if (problem_.pass == Pass::bwd && problem_.reduction_size() <= kDegenerateUnit) {
      degenerate_backward(problem_, args_);
      return;
    }
    switch (problem_.method) {
      case Method::batchnorm:
        batchnorm(problem_, args_);
        // Test hook of the regression check (README, "Regression tracking"): with
        // NORMBENCH_PLANT_SLOWDOWN=openmp_batchnorm every 4th run repeats the pass, 25 % more
        // work on average. The first run, the one checked for agreement, never repeats.
        if (plant_slowdown() && ++runs_ % 4 == 0) batchnorm(problem_, args_);
        break;
      case Method::layernorm:
      case Method::rmsnorm:
        layernorm_rmsnorm(problem_, args_);
        break;
      case Method::groupnorm:
      case Method::instancenorm:
        groupnorm_instancenorm(problem_, args_);
        break;
    }
  }
  std::string info() const override {
    return "threads=" + std::to_string(omp_get_max_threads()) + " isa=" + instruction_set();
  }

 private:
  Problem problem_;
  KernelArgs args_;
  long runs_ = 0;
};

class OpenMPImplementation final : public Implementation {
 public:
  std::optional<std::string> unsupported_reason(const Problem& p) const override {
    if (auto why = validate(p)) return "invalid problem: " + *why;
    return std::nullopt;
  }
  std::unique_ptr<Instance> instantiate(const Problem& p, const KernelArgs& a) override {
    return std::make_unique<OpenMPInstance>(p, a);
  }
  void run(const Problem& p, const KernelArgs& a) override { OpenMPInstance(p, a).run(); }
};

}  // namespace
}  // namespace nb::omp

NB_REGISTER_BACKEND(openmp) {
  using namespace nb;
  register_implementation("openmp", std::make_shared<omp::OpenMPImplementation>(),
                          {Method::batchnorm, Method::layernorm, Method::groupnorm,
                           Method::instancenorm, Method::rmsnorm},
                          {Pass::fwd_train, Pass::fwd_infer, Pass::bwd},
                          {DType::f32, DType::bf16, DType::f16}, {Layout::nchw, Layout::nhwc});
}
