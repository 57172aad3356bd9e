// Registration of the avx512 backend: one Implementation for every method x pass x dtype x
// layout, the run-time CPU checks and the environment switches of kernels.hpp. Compiled for the
// baseline ISA (no target attribute, no intrinsics): on a CPU without AVX-512 the backend reports
// "unavailable: CPU lacks avx512f" instead of dying with SIGILL. bf16 data go to the kernels
// compiled with AVX512-BF16 (namespace bf16hw) when the CPU has it, else to the emulated
// narrowing of namespace base.
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "kernels/avx512/kernels.hpp"
#include "machine.hpp"

namespace nb::avx512 {

namespace {

/// First AVX-512 (or companion) feature this CPU lacks, or nullptr.
const char* missing_cpu_feature() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f")) return "avx512f";
  if (!__builtin_cpu_supports("avx512bw")) return "avx512bw";
  if (!__builtin_cpu_supports("avx512vl")) return "avx512vl";
  if (!__builtin_cpu_supports("avx512dq")) return "avx512dq";
  if (!__builtin_cpu_supports("fma")) return "fma";
  if (!__builtin_cpu_supports("f16c")) return "f16c";
  return nullptr;
}

bool cpu_has_avx512bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

/// auto (default, also for unset or unknown values) | always | never
Options::Switch read_switch(const char* name) {
  const char* s = std::getenv(name);
  if (s && std::strcmp(s, "always") == 0) return Options::Switch::always;
  if (s && std::strcmp(s, "never") == 0) return Options::Switch::never;
  return Options::Switch::automatic;
}

Options read_options() {
  Options o;
  o.streaming = read_switch("NB_AVX512_STREAMING");
  o.split = read_switch("NB_AVX512_SPLIT");
  if (const char* s = std::getenv("NB_AVX512_PREFETCH")) o.prefetch = std::strcmp(s, "0") != 0;
  if (const char* s = std::getenv("NB_AVX512_BF16"))
    o.emulate_bf16 = std::strcmp(s, "emulate") == 0;
  return o;
}

using Kernel = void (*)(const Problem&, const KernelArgs&);

bool hardware_bf16(const Problem& p) {
  return p.dtype == DType::bf16 && !options().emulate_bf16 && cpu_has_avx512bf16();
}

Kernel select_kernel(const Problem& p) {
  if (p.pass == Pass::bwd && p.reduction_size() <= 2) return degenerate_backward;
  const bool hw = hardware_bf16(p);
  switch (p.method) {
    case Method::batchnorm:
      return hw ? bf16hw::batchnorm : base::batchnorm;
    case Method::layernorm:
      return hw ? bf16hw::layernorm : base::layernorm;
    case Method::groupnorm:
      return hw ? bf16hw::groupnorm : base::groupnorm;
    case Method::instancenorm:
      return hw ? bf16hw::instancenorm : base::instancenorm;
    case Method::rmsnorm:
      return hw ? bf16hw::rmsnorm : base::rmsnorm;
  }
  throw std::logic_error("avx512: unknown method");
}

std::string describe(const Problem& p) {
  const std::uint64_t e = element_size(p.dtype), numel = static_cast<std::uint64_t>(p.numel());
  const std::uint64_t footprint = (p.pass == Pass::bwd ? 3 : 2) * numel * e;
  const bool stream = use_streaming(footprint);
  // The unit-size condition of prefetch_next_unit (two units per thread in the LLC) is left out:
  // units of tens of MiB.
  const bool prefetch = options().prefetch && footprint > streaming_cache_bytes();
  std::string s = fmt::format("streaming_stores={} prefetch_next_unit={}", stream ? "yes" : "no",
                              prefetch ? "on" : "off");
  if (p.method == Method::batchnorm && p.pass != Pass::fwd_infer && p.layout == Layout::nchw &&
      p.spatial() > 1) {
    const int threads = p.numel() >= kParallelMinElements ? std::max(1, omp_get_max_threads()) : 1;
    const std::uint64_t unit =
        (p.pass == Pass::bwd ? 2 : 1) * static_cast<std::uint64_t>(p.n * p.spatial()) * e;
    s += split_channels(unit, p.c, threads) ? " split_channels=yes" : " split_channels=no";
  }
  if (p.dtype == DType::bf16)
    s += hardware_bf16(p) ? " bf16_narrowing=vcvtneps2bf16" : " bf16_narrowing=emulated";
  return s;
}

class Avx512Instance final : public Instance {
 public:
  Avx512Instance(Kernel kernel, const Problem& p, const KernelArgs& args)
      : kernel_(kernel), problem_(p), args_(args), info_(describe(p)) {}
  void run() override { kernel_(problem_, args_); }
  std::string info() const override { return info_; }

 private:
  Kernel kernel_;
  Problem problem_;
  KernelArgs args_;
  std::string info_;
};

class Avx512 final : public Implementation {
 public:
  std::optional<std::string> unavailable_reason() const override {
    if (const char* f = missing_cpu_feature()) return std::string("CPU lacks ") + f;
    return std::nullopt;
  }
  std::unique_ptr<Instance> instantiate(const Problem& p, const KernelArgs& args) override {
    check_available();
    return std::make_unique<Avx512Instance>(select_kernel(p), p, args);
  }
  void run(const Problem& p, const KernelArgs& args) override {
    check_available();
    select_kernel(p)(p, args);
  }

 private:
  void check_available() const {
    if (const auto why = unavailable_reason())
      throw std::runtime_error("avx512 backend unavailable: " + *why);
  }
};

}  // namespace

const Options& options() {
  static const Options o = read_options();
  return o;
}

namespace {

/// The value of a switch: `automatic` leaves the decision to the rule.
bool decide(Options::Switch s, bool rule) {
  return s == Options::Switch::always || (s == Options::Switch::automatic && rule);
}

}  // namespace

bool use_streaming(std::uint64_t footprint_bytes) {
  return decide(options().streaming, footprint_bytes > streaming_cache_bytes());
}

std::uint64_t streaming_cache_bytes() {
  const MachineInfo& m = machine();
  const std::uint64_t cap =
      kLlcPerCoreCap * static_cast<std::uint64_t>(std::max(m.hardware_threads, 1));
  return std::min<std::uint64_t>(m.llc_bytes, cap);
}

bool split_channels(std::uint64_t unit_bytes, int64_t channels, int threads) {
  if (threads < 2 || channels < threads) return false;
  return decide(options().split, unit_bytes >= machine().l2_bytes / 2);
}

bool prefetch_next_unit(std::uint64_t footprint_bytes, std::uint64_t unit_bytes, int threads) {
  return options().prefetch && footprint_bytes > streaming_cache_bytes() &&
         unit_bytes <= machine().llc_bytes / (4 * static_cast<std::uint64_t>(std::max(threads, 1)));
}

}  // namespace nb::avx512

NB_REGISTER_BACKEND(avx512) {
  using namespace nb;
  register_implementation("avx512", std::make_shared<avx512::Avx512>(),
                          {std::begin(kAllMethods), std::end(kAllMethods)},
                          {std::begin(kAllPasses), std::end(kAllPasses)},
                          {std::begin(kAllDTypes), std::end(kAllDTypes)},
                          {std::begin(kAllLayouts), std::end(kAllLayouts)});
}
