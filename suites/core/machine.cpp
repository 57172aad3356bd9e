#include "machine.hpp"

#include <unistd.h>

#include <ctime>
#include <fstream>
#include <string>

namespace nb {

namespace {
std::size_t read_cache_size(int index_level, const char* type) {
  // /sys/devices/system/cpu/cpu0/cache/indexK/{level,type,size}
  for (int k = 0; k < 8; ++k) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(k) + "/";
    std::ifstream lv(dir + "level"), ty(dir + "type"), sz(dir + "size");
    int level = 0;
    std::string t, s;
    if (!(lv >> level) || !(ty >> t) || !(sz >> s)) continue;
    if (level != index_level || (t != type && t != "Unified")) continue;
    std::size_t v = std::stoull(s);
    if (s.back() == 'K') v <<= 10;
    if (s.back() == 'M') v <<= 20;
    return v;
  }
  return 0;
}
}  // namespace

const MachineInfo& machine() {
  static const MachineInfo info = [] {
    MachineInfo m;
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; std::getline(cpuinfo, line);) {
      if (line.rfind("model name", 0) == 0) {
        m.cpu_model = line.substr(line.find(':') + 2);
        break;
      }
    }
    if (m.cpu_model.empty()) m.cpu_model = "unknown";
    m.l2_bytes = read_cache_size(2, "Unified");
    m.llc_bytes = read_cache_size(3, "Unified");
    if (m.l2_bytes == 0) m.l2_bytes = std::size_t{1} << 20;
    if (m.llc_bytes == 0) m.llc_bytes = std::max<std::size_t>(m.l2_bytes, std::size_t{32} << 20);
    m.physical_memory = static_cast<std::size_t>(sysconf(_SC_PHYS_PAGES)) *
                        static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    m.hardware_threads = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
    return m;
  }();
  return info;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace nb
