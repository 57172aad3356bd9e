// Facts about the machine a run happens on, read at run time: CPU model, cache sizes, memory,
// and the build's git commit and compiler (for the run metadata of every CSV row).
#pragma once

#include <cstddef>
#include <string>

namespace nb {

struct MachineInfo {
  std::string cpu_model;            ///< /proc/cpuinfo "model name"
  std::size_t l2_bytes = 0;         ///< per-core L2 (bytes)
  std::size_t llc_bytes = 0;        ///< last-level cache seen by this process (bytes)
  std::size_t physical_memory = 0;  ///< bytes of RAM
  int hardware_threads = 1;
};

/// Read once, on first call. Cache sizes fall back to 1 MiB (L2) and 32 MiB (LLC) when the OS
/// does not report them.
const MachineInfo& machine();

const char* build_git_commit();  ///< defined in the generated build_info.cpp
const char* build_compiler();
const char* default_config_text();  ///< configs/default.toml, embedded at build time

/// UTC time now, ISO 8601 ("2026-11-22T10:31:05Z").
std::string utc_now();

}  // namespace nb
