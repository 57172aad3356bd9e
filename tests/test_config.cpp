// TOML sweep configs: axes, ranges and shape lists expand to the intended problems; every error
// names the file and the key and is one line; the shipped configs all parse.
#include <gtest/gtest.h>

#include <filesystem>

#include "config.hpp"
#include "machine.hpp"

namespace nb {
namespace {

TEST(Config, AxesAndRangesExpand) {
  const auto cfg = parse_config(R"(
[sweep]
name = "t"
repetitions = 2
modes = ["hot", "cold"]
[[cases]]
methods = ["batchnorm", "groupnorm"]
passes = "fwd_train"
layouts = ["nchw", "nhwc"]
n = { start = 1, stop = 8, mul = 2 }
c = 64
hw = [7, 14]
groups = 32
)",
                                "t.toml");
  EXPECT_EQ(cfg.settings.name, "t");
  EXPECT_EQ(cfg.settings.repetitions, 2);
  EXPECT_EQ(cfg.settings.modes.size(), 2u);
  // 2 methods x 2 layouts x 4 batch sizes x 2 spatial sizes
  ASSERT_EQ(cfg.problems.size(), 32u);
  EXPECT_EQ(to_repro(cfg.problems[0]), "batchnorm:fwd_train:f32:nchw:n1c64h7w7:eps1e-05:mom0.1");
  EXPECT_EQ(to_repro(cfg.problems.back()), "groupnorm:fwd_train:f32:nhwc:n8c64h14w14g32:eps1e-05");
}

TEST(Config, ShapeListsCrossWithBatch) {
  const auto cfg = parse_config(R"(
[[cases]]
methods = ["layernorm"]
passes = ["bwd"]
shapes = ["t256d768", "c8h4w4", "n3c2h2w2"]
n = [1, 2]
)",
                                "t.toml");
  std::vector<std::string> got;
  for (const auto& p : cfg.problems) got.push_back(to_repro(p));
  EXPECT_EQ(got, (std::vector<std::string>{"layernorm:bwd:f32:nchw:t256d768:eps1e-05",
                                           "layernorm:bwd:f32:nchw:n1c8h4w4:eps1e-05",
                                           "layernorm:bwd:f32:nchw:n2c8h4w4:eps1e-05",
                                           "layernorm:bwd:f32:nchw:n3c2h2w2:eps1e-05"}));
}

void expect_error(const std::string& text, const std::string& fragment) {
  try {
    parse_config(text, "bad.toml");
    ADD_FAILURE() << "accepted: " << text;
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("bad.toml", 0), 0u) << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(Config, ErrorsNameFileKeyAndExpectation) {
  expect_error("[[cases]\nmethods = 1", "malformed TOML");
  expect_error("[[cases]]\nmethods = [\"bnorm\"]\nc = 1\nn = 2", "methods: unknown method 'bnorm'");
  expect_error("[[cases]]\nmethods = [\"batchnorm\"]\nc = \"x\"\nn = 2",
               "[[cases]] #1.c: expected a positive integer");
  expect_error("[[cases]]\nmethods = [\"batchnorm\"]\nc = -4\nn = 2",
               ".c: expected a positive integer");
  expect_error("[[cases]]\nmethods = [\"batchnorm\"]\nc = 4", ".n: required key missing");
  expect_error("[[cases]]\nmethods = [\"batchnorm\"]\nc = 4\nn = 2\ncolor = 1",
               ".color: unknown key");
  expect_error("[[cases]]\nmethods = [\"groupnorm\"]\nc = 30\nn = 2\ngroups = 4",
               "not divisible by num_groups=4");
  expect_error("[[cases]]\nmethods = [\"batchnorm\"]\npasses = [\"fwd_train\"]\nc = 4\nn = 1",
               "more than 1 value per channel");
  expect_error("[[cases]]\nmethods = [\"batchnorm\"]\nc = 4\nn = {start = 4, stop = 1, mul = 2}",
               ".n: expected");
  expect_error("[sweep]\nrepetitions = 0\n[[cases]]\nmethods = [\"batchnorm\"]\nc = 4\nn = 2",
               "[sweep].repetitions: expected an integer in [1, 1000]");
  expect_error("[sweep]\nmodes = [\"warm\"]\n[[cases]]\nmethods = [\"batchnorm\"]\nc = 4\nn = 2",
               "unknown timing mode 'warm'");
  expect_error("[sweep]\nname = \"x\"", "expected at least one [[cases]] block");
}

TEST(Config, ShippedConfigsParse) {
  namespace fs = std::filesystem;
  int n = 0;
  for (const auto& e : fs::directory_iterator(fs::path(NB_SOURCE_DIR) / "configs")) {
    if (e.path().extension() != ".toml") continue;
    SCOPED_TRACE(e.path().string());
    const auto cfg = load_config(e.path().string());
    EXPECT_FALSE(cfg.problems.empty());
    ++n;
  }
  EXPECT_GE(n, 6);
  EXPECT_NO_THROW(parse_config(default_config_text(), "<default>"));
}

TEST(Config, MissingFileIsAConfigError) {
  EXPECT_THROW(load_config("/nonexistent/x.toml"), ConfigError);
}

}  // namespace
}  // namespace nb
