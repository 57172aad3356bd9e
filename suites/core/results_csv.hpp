// The CSV results file: one row per (case, backend, input distribution), appended and flushed as
// each case finishes, so an interrupted sweep keeps every completed row and --resume can skip them.
// The columns (kColumns) are documented in README.md, "CSV schema".
#pragma once

#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace nb {

/// Column names in file order.
const std::vector<std::string>& csv_columns();

/// A row as column -> value text; missing columns are written empty.
using CsvRow = std::map<std::string, std::string>;

/// Quotes a field if it contains a comma, a quote or a newline (RFC 4180).
std::string csv_escape(const std::string& s);
/// Splits one CSV line into fields (RFC 4180 quoting).
std::vector<std::string> csv_split(const std::string& line);

class CsvWriter {
 public:
  /// Opens path for appending. When resume is false the file is created (truncated) and the
  /// header written; when true an existing file must have the same header (else
  /// std::runtime_error naming the file), a trailing partial line (a row cut by a kill) is
  /// dropped, and the keys of its complete rows are loaded. "-" writes to stdout.
  CsvWriter(const std::string& path, bool resume);
  ~CsvWriter();
  CsvWriter(const CsvWriter&) = delete;
  CsvWriter& operator=(const CsvWriter&) = delete;

  /// Writes the row with one write() and flushes it to the OS.
  void append(const CsvRow& row);
  /// Key of a row for --resume: repro, backend, distribution, mode.
  static std::string key(const std::string& repro, const std::string& backend,
                         const std::string& dist, const std::string& mode);
  bool done(const std::string& key) const { return done_.count(key) != 0; }
  std::size_t rows_written() const { return written_; }

 private:
  std::FILE* f_ = nullptr;
  bool owns_ = false;
  std::set<std::string> done_;
  std::size_t written_ = 0;
};

}  // namespace nb
