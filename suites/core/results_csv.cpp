#include "results_csv.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace nb {

const std::vector<std::string>& csv_columns() {
  static const std::vector<std::string> cols = {
      // run metadata
      "utc_time", "git_commit", "cpu_model", "compiler", "threads",
      // what ran
      "backend", "impl_info", "method", "pass", "dtype", "layout", "n", "c", "h", "w", "num_groups",
      "eps", "momentum", "affine", "repro", "dist", "mode",
      // time (microseconds, per run of the pass)
      "repetitions", "iterations", "time_median_us", "time_min_us", "time_max_us", "time_p25_us",
      "time_p75_us",
      // roofline
      "bytes", "traffic_model", "gbps", "copy_gbps", "copy_nt_gbps", "frac_copy_nt",
      // agreement with the reference
      "status", "worst_output", "max_abs_err", "max_rel_err", "threshold", "reason"};
  return cols;
}

std::string csv_escape(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"') out += '"';
    out += (ch == '\n' || ch == '\r') ? ' ' : ch;
  }
  return out + "\"";
}

std::vector<std::string> csv_split(const std::string& line) {
  std::vector<std::string> f(1);
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char ch = line[i];
    if (quoted) {
      if (ch == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        f.back() += '"';
        ++i;
      } else if (ch == '"') {
        quoted = false;
      } else {
        f.back() += ch;
      }
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      f.emplace_back();
    } else {
      f.back() += ch;
    }
  }
  return f;
}

std::string CsvWriter::key(const std::string& repro, const std::string& backend,
                           const std::string& dist, const std::string& mode) {
  return repro + "|" + backend + "|" + dist + "|" + mode;
}

static std::string header_line() {
  std::string h;
  for (const auto& c : csv_columns()) h += (h.empty() ? "" : ",") + c;
  return h;
}

CsvWriter::CsvWriter(const std::string& path, bool resume) {
  if (path == "-") {
    f_ = stdout;
    std::fputs((header_line() + "\n").c_str(), f_);
    return;
  }
  namespace fs = std::filesystem;
  if (resume && fs::exists(path) && fs::file_size(path) > 0) {
    std::ifstream in(path, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::size_t eol = text.find('\n');
    if (eol == std::string::npos || text.substr(0, eol) != header_line())
      throw std::runtime_error(
          fmt::format("{}: cannot resume: its header is not this version's CSV header", path));
    // Keep only complete lines: a row cut by a kill has no newline.
    const std::size_t last = text.rfind('\n');
    if (last + 1 != text.size()) fs::resize_file(path, last + 1);
    const auto cols = csv_columns();
    auto idx = [&](const char* name) {
      return static_cast<std::size_t>(std::find(cols.begin(), cols.end(), name) - cols.begin());
    };
    std::size_t pos = eol + 1;
    while (pos <= last) {
      const std::size_t e = text.find('\n', pos);
      const auto f = csv_split(text.substr(pos, e - pos));
      if (f.size() == cols.size())
        done_.insert(key(f[idx("repro")], f[idx("backend")], f[idx("dist")], f[idx("mode")]));
      pos = e + 1;
    }
    f_ = std::fopen(path.c_str(), "ab");
  } else {
    if (auto parent = fs::path(path).parent_path(); !parent.empty()) fs::create_directories(parent);
    f_ = std::fopen(path.c_str(), "wb");
    if (f_) {
      std::fputs((header_line() + "\n").c_str(), f_);
      std::fflush(f_);
    }
  }
  if (!f_) throw std::runtime_error(fmt::format("{}: cannot open for writing", path));
  owns_ = true;
}

CsvWriter::~CsvWriter() {
  if (owns_ && f_) std::fclose(f_);
}

void CsvWriter::append(const CsvRow& row) {
  std::string line;
  bool first = true;
  for (const auto& c : csv_columns()) {
    if (!first) line += ',';
    first = false;
    auto it = row.find(c);
    if (it != row.end()) line += csv_escape(it->second);
  }
  line += '\n';
  // One write() of the whole line: a kill leaves either the full row or a cut last line, which
  // resume drops.
  std::fflush(f_);
  if (::write(fileno(f_), line.data(), line.size()) != static_cast<ssize_t>(line.size()))
    throw std::runtime_error("cannot write a results row");
  ++written_;
}

}  // namespace nb
