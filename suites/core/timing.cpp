#include "timing.hpp"

#include <benchmark/benchmark.h>
#include <emmintrin.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "machine.hpp"
#include "tensor.hpp"

namespace nb {

std::string_view to_string(TimingMode m) { return m == TimingMode::hot ? "hot" : "cold"; }

TimingMode parse_timing_mode(std::string_view s) {
  if (s == "hot") return TimingMode::hot;
  if (s == "cold") return TimingMode::cold;
  throw std::invalid_argument("unknown timing mode '" + std::string(s) + "' (expected hot, cold)");
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(pos);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

double copy_bandwidth(void* dst, const void* src, std::size_t bytes, bool non_temporal) {
  // 16-byte SSE2 loads and stores (every x86-64 has them). Written with intrinsics so the
  // compiler cannot turn the loop into a memcpy call, whose large-size path already uses
  // streaming stores. Buffers are 64-byte aligned (HostTensor).
  const std::int64_t vecs = static_cast<std::int64_t>(bytes / 16);
  auto* d = static_cast<__m128i*>(dst);
  const auto* s = static_cast<const __m128i*>(src);
  const auto t0 = std::chrono::steady_clock::now();
  if (non_temporal) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < vecs; ++i) _mm_stream_si128(d + i, _mm_load_si128(s + i));
    _mm_sfence();
  } else {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < vecs; ++i) _mm_store_si128(d + i, _mm_load_si128(s + i));
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * static_cast<double>(vecs * 16) / dt / 1e9;
}

double sustained_copy_bandwidth(void* dst, const void* src, std::size_t bytes, bool non_temporal,
                                double min_seconds) {
  // Repeats the copy until min_seconds have passed: one 64 MiB copy lasts about a millisecond,
  // short enough to catch a momentary dip or burst of a shared host's bandwidth; a sample as long
  // as the kernel's repetition reflects the same conditions the kernel saw.
  double bytes_moved = 0, seconds = 0;
  do {
    const double gbps = copy_bandwidth(dst, src, bytes, non_temporal);
    bytes_moved += 2.0 * static_cast<double>(bytes);
    seconds += 2.0 * static_cast<double>(bytes) / (gbps * 1e9);
  } while (seconds < min_seconds);
  return bytes_moved / seconds / 1e9;
}

namespace {

struct CopyBuffers {
  HostTensor src, dst;
  explicit CopyBuffers(std::size_t bytes) : src(DType::f32, bytes / 4), dst(DType::f32, bytes / 4) {
    std::memset(src.data(), 1, src.bytes());  // touch every page before timing
  }
};

CopyBuffers& copy_buffers(std::size_t bytes) {
  static std::unique_ptr<CopyBuffers> buf;
  if (!buf || buf->src.bytes() != bytes) buf = std::make_unique<CopyBuffers>(bytes);
  return *buf;
}

// Collects the per-repetition iteration runs of the one benchmark being run.
class CollectingReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs)
      if (r.run_type == Run::RT_Iteration) runs_.push_back(r);
  }
  std::vector<Run> runs_;
};

}  // namespace

void flush_caches() {
  static HostTensor junk(DType::f32, 2 * machine().llc_bytes / 4);
  static float v = 0;
  v += 1.0f;
  float* p = junk.f32();
  const std::int64_t n = static_cast<std::int64_t>(junk.numel());
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; i += 16) p[i] = v;
}

TimingResult time_instance(Instance& inst, const TimingOptions& opt, const std::string& name) {
  static std::once_flag init;
  std::call_once(init, [] {
    int argc = 1;
    char arg0[] = "normbench";
    char* argv[] = {arg0, nullptr};
    benchmark::Initialize(&argc, argv);
  });
  const std::size_t copy_bytes =
      opt.copy_bytes ? opt.copy_bytes
                     : std::max<std::size_t>(std::size_t{64} << 20, 2 * machine().llc_bytes);
  CopyBuffers& cb = copy_buffers(copy_bytes);
  const bool manual = opt.mode == TimingMode::cold || inst.device_timed();

  auto body = [&](benchmark::State& state) {
    // One copy repetition of each kind before each kernel repetition (untimed: outside the loop).
    double nt = 0, plain = 0;
    if (auto dev = inst.paired_copy_gbps()) {
      nt = plain = *dev;  // a device has one copy roofline
    } else {
      copy_bandwidth(cb.dst.data(), cb.src.data(), copy_bytes, true);  // settle pages and clocks
      const double span = std::max(0.01, opt.min_time_s / 4);
      nt = sustained_copy_bandwidth(cb.dst.data(), cb.src.data(), copy_bytes, true, span);
      plain = sustained_copy_bandwidth(cb.dst.data(), cb.src.data(), copy_bytes, false, span);
    }
    state.counters["copy_nt_gbps"] = nt;
    state.counters["copy_gbps"] = plain;
    inst.run();  // warm-up: first touch, lazy initialisation
    for (auto _ : state) {
      if (!manual) {
        inst.run();
        continue;
      }
      if (inst.device_timed()) {
        state.SetIterationTime(inst.run_device_timed(opt.mode == TimingMode::cold).value_or(0.0));
        continue;
      }
      if (opt.mode == TimingMode::cold) flush_caches();
      const auto t0 = std::chrono::steady_clock::now();
      inst.run();
      state.SetIterationTime(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  };
  auto* b = benchmark::RegisterBenchmark(name.c_str(), body);
  b->Repetitions(opt.repetitions)->MinTime(opt.min_time_s)->ReportAggregatesOnly(false);
  if (manual)
    b->UseManualTime();
  else
    b->UseRealTime();

  CollectingReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  benchmark::ClearRegisteredBenchmarks();

  TimingResult r;
  std::vector<double> plain;
  for (const auto& run : rep.runs_) {
    if (run.error_occurred) throw std::runtime_error("benchmark error: " + run.error_message);
    r.seconds.push_back(run.real_accumulated_time / static_cast<double>(run.iterations));
    r.iterations = run.iterations;
    r.copy_nt_samples.push_back(run.counters.at("copy_nt_gbps").value);
    plain.push_back(run.counters.at("copy_gbps").value);
  }
  if (r.seconds.empty()) throw std::runtime_error("benchmark produced no runs for " + name);
  r.median_s = quantile(r.seconds, 0.5);
  r.min_s = *std::min_element(r.seconds.begin(), r.seconds.end());
  r.max_s = *std::max_element(r.seconds.begin(), r.seconds.end());
  r.p25_s = quantile(r.seconds, 0.25);
  r.p75_s = quantile(r.seconds, 0.75);
  r.copy_nt_gbps = quantile(r.copy_nt_samples, 0.5);
  r.copy_gbps = quantile(plain, 0.5);
  return r;
}

}  // namespace nb
