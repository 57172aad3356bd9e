// Timing through Google Benchmark (1.7.1), with the memory roofline measured paired with it.
//
// Each case is registered at run time (benchmark::RegisterBenchmark) and run with R repetitions.
// Before the timed loop of every repetition (and of every iteration-count trial Google Benchmark
// makes) two STREAM-style copies run with the same threads, each repeated for max(10 ms,
// min_time / 4): one with ordinary stores and one with non-temporal stores. The bandwidth of these
// virtual machines moves from about 40 to 90 GB/s within minutes, so the roofline of a row is the
// median of the copies measured between its own repetitions, never a copy measured once per run.
//
// Modes:
//  hot   the same buffers back to back; wall time of the loop (UseRealTime), what a framework sees
//        in a steady training loop for cache-resident tensors.
//  cold  before each iteration a buffer of twice the last-level cache is written, evicting the
//        case's tensors; each iteration's run() is timed alone with a steady clock
//        (UseManualTime), so the flush is not counted.
// Device instances (device_timed()) are timed by their own events (UseManualTime) in both modes,
// flush their own L2 in cold mode, and pair each repetition with a device copy
// (paired_copy_gbps(), reported in both copy columns) instead of the host copies.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "registry.hpp"

namespace nb {

enum class TimingMode { hot, cold };
std::string_view to_string(TimingMode m);
/// Throws std::invalid_argument on an unknown name.
TimingMode parse_timing_mode(std::string_view s);

struct TimingOptions {
  int repetitions = 5;
  double min_time_s = 0.05;  ///< per repetition (Google Benchmark MinTime)
  TimingMode mode = TimingMode::hot;
  std::size_t copy_bytes = 0;  ///< bytes per copy buffer; 0: 2 x LLC, at least 64 MiB
};

struct TimingResult {
  std::vector<double> seconds;  ///< per repetition: mean time of one run(), seconds
  double median_s = 0, min_s = 0, max_s = 0, p25_s = 0, p75_s = 0;
  std::int64_t iterations = 0;  ///< iterations per repetition
  double copy_gbps = 0;         ///< median paired ordinary-store copy, GB/s (read + write bytes)
  double copy_nt_gbps = 0;      ///< median paired non-temporal-store copy, GB/s
  std::vector<double> copy_nt_samples;
};

/// Times inst.run() as described above. Throws std::runtime_error if Google Benchmark reports
/// an error for the run.
TimingResult time_instance(Instance& inst, const TimingOptions& opt, const std::string& name);

/// One STREAM-style copy of `bytes` from src to dst with the current OpenMP threads; returns
/// GB/s counting bytes read + written (2 * bytes / seconds / 1e9).
double copy_bandwidth(void* dst, const void* src, std::size_t bytes, bool non_temporal);

/// Repeats copy_bandwidth until min_seconds of copying have passed; returns the aggregate GB/s.
/// The paired roofline uses max(10 ms, min_time / 4) of each copy kind per repetition.
double sustained_copy_bandwidth(void* dst, const void* src, std::size_t bytes, bool non_temporal,
                                double min_seconds);

/// Writes a buffer of twice the last-level cache so no tensor of the case stays cached.
void flush_caches();

/// Quantile q in [0, 1] of v by linear interpolation (v is copied and sorted).
double quantile(std::vector<double> v, double q);

}  // namespace nb
