// The CSV writer: quoting round-trips, and --resume drops a row cut by a kill, keeps every
// complete row and refuses a file with another header.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "results_csv.hpp"

namespace nb {
namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(ResultsCsv, EscapeRoundTrips) {
  for (std::string s : {"plain", "a,b", "say \"hi\"", "", ",\",\""}) {
    const auto f = csv_split(csv_escape(s) + "," + csv_escape("x"));
    ASSERT_EQ(f.size(), 2u);
    EXPECT_EQ(f[0], s);
  }
}

TEST(ResultsCsv, ResumeDropsCutRowAndKeepsCompleteOnes) {
  const std::string path = ::testing::TempDir() + "/nb_resume.csv";
  {
    CsvWriter w(path, false);
    w.append({{"repro", "a:b"}, {"backend", "x"}, {"dist", "normal"}, {"mode", "hot"}});
    w.append({{"repro", "c:d"},
              {"backend", "x"},
              {"dist", "normal"},
              {"mode", "hot"},
              {"reason", "a, b"}});
  }
  { std::ofstream(path, std::ios::app) << "2026,cut"; }  // a row cut by a kill
  CsvWriter w(path, true);
  EXPECT_TRUE(w.done(CsvWriter::key("a:b", "x", "normal", "hot")));
  EXPECT_TRUE(w.done(CsvWriter::key("c:d", "x", "normal", "hot")));
  EXPECT_FALSE(w.done(CsvWriter::key("c:d", "x", "large_offset", "-")));
  const std::string text = read_all(path);
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(text.find("cut"), std::string::npos);
}

TEST(ResultsCsv, ResumeRefusesAnotherHeader) {
  const std::string path = ::testing::TempDir() + "/nb_other.csv";
  { std::ofstream(path) << "a,b,c\n1,2,3\n"; }
  EXPECT_THROW(CsvWriter(path, true), std::runtime_error);
}

}  // namespace
}  // namespace nb
