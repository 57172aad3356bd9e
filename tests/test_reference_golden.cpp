// The fp64 reference (reference/reference.hpp) against golden fixtures from an independent
// vectorised NumPy implementation (scripts/make_golden.py; regenerate with
// `.venv/bin/python scripts/make_golden.py`), and the registered "reference" backend against the
// fp64 reference rounded to the storage types.
//
// Golden: every tests/golden/*.json is one case {repro, inputs, outputs}; each output must match
// within 1e-12 relative, |ref - golden| <= 1e-12 * max(|golden|, 1). The floor of 1 makes values
// near zero (outputs are O(1) by construction) compare absolutely: a relative bound alone would
// demand more than fp64 can give for an element that is the difference of O(1) terms. The two
// implementations agree to ~1e-15; a formula error shows up at >= 1e-8 (the bwd fixtures carry
// fp32-rounded saved statistics, so a backward that recomputes them from x fails too).
//
// Registry: the "reference" backend for every method, pass, dtype and layout, run through
// nb::Registry on HostTensors, must equal nb::ref::run on the same (widened) inputs with its
// outputs rounded to the storage types (y, dx to the dtype; statistics, dgamma, dbeta to fp32),
// bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "reference.hpp"
#include "registry.hpp"
#include "tensor.hpp"

namespace {

namespace fs = std::filesystem;
using nb::ref::Tensors;

std::vector<fs::path> golden_files() {
  std::vector<fs::path> files;
  if (!fs::is_directory(NB_GOLDEN_DIR)) return files;
  for (const auto& entry : fs::directory_iterator(NB_GOLDEN_DIR))
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

/// The field of Tensors that a fixture's tensor name refers to; nullptr for an unknown name.
std::vector<double>* field(Tensors& t, const std::string& name) {
  static const std::map<std::string, std::vector<double> Tensors::*> fields = {
      {"x", &Tensors::x},
      {"gamma", &Tensors::gamma},
      {"beta", &Tensors::beta},
      {"y", &Tensors::y},
      {"mean", &Tensors::mean},
      {"invstd", &Tensors::invstd},
      {"running_mean", &Tensors::running_mean},
      {"running_var", &Tensors::running_var},
      {"dy", &Tensors::dy},
      {"dx", &Tensors::dx},
      {"dgamma", &Tensors::dgamma},
      {"dbeta", &Tensors::dbeta}};
  const auto it = fields.find(name);
  return it == fields.end() ? nullptr : &(t.*(it->second));
}

TEST(ReferenceGolden, DirectoryHasFixtures) {
  EXPECT_GE(golden_files().size(), 20u) << "run .venv/bin/python scripts/make_golden.py";
}

class ReferenceGoldenFixture : public testing::TestWithParam<fs::path> {};

TEST_P(ReferenceGoldenFixture, MatchesNumPy) {
  std::ifstream in(GetParam());
  ASSERT_TRUE(in) << GetParam();
  const nlohmann::json j = nlohmann::json::parse(in);
  const std::string repro = j.at("repro").get<std::string>();
  SCOPED_TRACE(repro);
  const nb::Problem p = nb::parse_repro(repro);
  EXPECT_EQ(nb::to_repro(p), repro) << "fixture repro is not canonical";

  Tensors t;
  for (const auto& [name, values] : j.at("inputs").items()) {
    std::vector<double>* f = field(t, name);
    ASSERT_NE(f, nullptr) << "unknown input " << name;
    *f = values.get<std::vector<double>>();
  }
  nb::ref::run(p, t);

  // Every result the pass produces must be in the fixture and match it.
  std::vector<std::string> produced;
  for (const char* name : {"y", "mean", "invstd", "dx", "dgamma", "dbeta"})
    if (!field(t, name)->empty() && !j.at("inputs").contains(name)) produced.push_back(name);
  for (const auto& name : produced)
    EXPECT_TRUE(j.at("outputs").contains(name))
        << "reference wrote " << name << ", fixture has none";

  for (const auto& [name, values] : j.at("outputs").items()) {
    const auto golden = values.get<std::vector<double>>();
    const std::vector<double>* f = field(t, name);
    ASSERT_NE(f, nullptr) << "unknown output " << name;
    ASSERT_EQ(f->size(), golden.size()) << name;
    for (std::size_t i = 0; i < golden.size(); ++i)
      EXPECT_LE(std::abs((*f)[i] - golden[i]), 1e-12 * std::max(std::abs(golden[i]), 1.0))
          << name << "[" << i << "]: reference " << (*f)[i] << ", golden " << golden[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ReferenceGoldenFixture, testing::ValuesIn(golden_files()),
                         [](const testing::TestParamInfo<fs::path>& info) {
                           std::string s = info.param.stem().string();
                           for (char& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ReferenceGoldenFixture);

// ---------------------------------------------------------------------------------------------
// The registered backend.

nb::HostTensor random_tensor(nb::DType dt, std::int64_t count, std::mt19937_64& rng, double lo,
                             double hi) {
  nb::HostTensor t(dt, static_cast<std::size_t>(count));
  std::uniform_real_distribution<double> dist(lo, hi);
  for (std::int64_t i = 0; i < count; ++i) t.set(static_cast<std::size_t>(i), dist(rng));
  return t;
}

std::vector<double> widen(const nb::HostTensor& t) {
  return t.empty() ? std::vector<double>{} : t.to_double();
}

/// out must hold exactly the values of expected rounded to out's dtype.
void expect_rounded_equal(const nb::HostTensor& out, const std::vector<double>& expected,
                          const char* name) {
  ASSERT_EQ(out.numel(), expected.size()) << name;
  nb::HostTensor rounded(out.dtype(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) rounded.set(i, expected[i]);
  for (std::size_t i = 0; i < expected.size(); ++i)
    EXPECT_EQ(out.get(i), rounded.get(i)) << name << "[" << i << "]";
}

struct RegistryCase {
  nb::Method method;
  nb::Pass pass;
  nb::DType dtype;
  nb::Layout layout;
  bool affine;
};

std::string case_name(const RegistryCase& c) {
  return std::string(nb::to_string(c.method)) + "_" + std::string(nb::to_string(c.pass)) + "_" +
         std::string(nb::to_string(c.dtype)) + "_" + std::string(nb::to_string(c.layout)) +
         (c.affine ? "" : "_noaffine");
}

void PrintTo(const RegistryCase& c, std::ostream* os) { *os << case_name(c); }

class ReferenceRegistry : public testing::TestWithParam<RegistryCase> {};

TEST_P(ReferenceRegistry, EqualsFp64RoundedToStorage) {
  const RegistryCase rc = GetParam();
  nb::Problem p;
  p.method = rc.method;
  p.pass = rc.pass;
  p.dtype = rc.dtype;
  p.layout = rc.layout;
  p.n = 2;
  p.c = 4;
  p.h = 3;
  p.w = 2;
  p.groups = rc.method == nb::Method::groupnorm ? 2 : 1;
  p.affine = rc.affine;
  SCOPED_TRACE(nb::to_repro(p));

  const nb::Registration* reg =
      nb::Registry::instance().find("reference", p.method, p.pass, p.dtype, p.layout);
  ASSERT_NE(reg, nullptr);
  EXPECT_FALSE(reg->hidden);
  EXPECT_FALSE(reg->impl->unavailable_reason().has_value());
  EXPECT_FALSE(reg->impl->unsupported_reason(p).has_value());

  std::mt19937_64 rng(7);
  const std::int64_t numel = p.numel(), params = p.param_count(), stats = p.stats_count();
  nb::HostTensor x = random_tensor(p.dtype, numel, rng, -1.5, 3.0);
  nb::HostTensor gamma =
      p.affine ? random_tensor(nb::DType::f32, params, rng, 0.5, 1.5) : nb::HostTensor();
  nb::HostTensor beta =
      p.has_beta() ? random_tensor(nb::DType::f32, params, rng, -0.5, 0.5) : nb::HostTensor();
  nb::HostTensor running_mean, running_var;
  if (p.method == nb::Method::batchnorm) {
    running_mean = random_tensor(nb::DType::f32, p.c, rng, -0.5, 0.5);
    running_var = random_tensor(nb::DType::f32, p.c, rng, 0.5, 2.0);
  }

  Tensors t;  // what nb::ref::run sees: the stored values, widened
  t.x = widen(x);
  t.gamma = widen(gamma);
  nb::KernelArgs a;
  a.x = x.data();
  a.gamma = gamma.f32();

  nb::HostTensor y, mean, invstd, dy, dx, dgamma, dbeta;
  const bool has_mean = p.method != nb::Method::rmsnorm;
  if (p.pass == nb::Pass::bwd) {
    std::vector<double> mean64, invstd64;
    nb::ref::statistics(p, t.x, mean64, invstd64);
    invstd = nb::HostTensor(nb::DType::f32, stats);
    invstd.assign(invstd64);
    if (has_mean) {
      mean = nb::HostTensor(nb::DType::f32, stats);
      mean.assign(mean64);
    }
    dy = random_tensor(p.dtype, numel, rng, -1.0, 1.0);
    dx = nb::HostTensor(p.dtype, numel);
    if (p.affine) dgamma = nb::HostTensor(nb::DType::f32, params);
    if (p.has_beta()) dbeta = nb::HostTensor(nb::DType::f32, params);
    t.mean = widen(mean);
    t.invstd = widen(invstd);
    t.dy = widen(dy);
    a.mean = mean.f32();
    a.invstd = invstd.f32();
    a.dy = dy.data();
    a.dx = dx.data();
    a.dgamma = dgamma.f32();
    a.dbeta = dbeta.f32();
  } else {
    y = nb::HostTensor(p.dtype, numel);
    t.beta = widen(beta);
    t.running_mean = widen(running_mean);
    t.running_var = widen(running_var);
    a.y = y.data();
    a.beta = beta.f32();
    a.running_mean = running_mean.f32();
    a.running_var = running_var.f32();
    if (p.pass == nb::Pass::fwd_train) {
      invstd = nb::HostTensor(nb::DType::f32, stats);
      if (has_mean) mean = nb::HostTensor(nb::DType::f32, stats);
      a.mean = mean.f32();
      a.invstd = invstd.f32();
    }
  }

  auto instance = reg->impl->instantiate(p, a);
  instance->run();
  instance->sync_outputs();
  nb::ref::run(p, t);

  if (p.pass == nb::Pass::bwd) {
    expect_rounded_equal(dx, t.dx, "dx");
    if (p.affine) expect_rounded_equal(dgamma, t.dgamma, "dgamma");
    if (p.has_beta()) expect_rounded_equal(dbeta, t.dbeta, "dbeta");
    return;
  }
  expect_rounded_equal(y, t.y, "y");
  if (p.pass == nb::Pass::fwd_train) {
    expect_rounded_equal(invstd, t.invstd, "invstd");
    if (has_mean) expect_rounded_equal(mean, t.mean, "mean");
  }
  if (p.method == nb::Method::batchnorm) {
    // fwd_train updated them in place; fwd_infer must have left them as they were.
    expect_rounded_equal(running_mean, t.running_mean, "running_mean");
    expect_rounded_equal(running_var, t.running_var, "running_var");
  }
}

std::vector<RegistryCase> all_registry_cases() {
  std::vector<RegistryCase> cases;
  for (nb::Method m : nb::kAllMethods)
    for (nb::Pass ps : nb::kAllPasses)
      for (nb::DType dt : nb::kAllDTypes)
        for (nb::Layout l : nb::kAllLayouts) cases.push_back({m, ps, dt, l, true});
  for (nb::Method m : nb::kAllMethods)
    for (nb::Pass ps : nb::kAllPasses)
      cases.push_back({m, ps, nb::DType::f32, nb::Layout::nhwc, false});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllCombinations, ReferenceRegistry,
                         testing::ValuesIn(all_registry_cases()),
                         [](const testing::TestParamInfo<RegistryCase>& info) {
                           return case_name(info.param);
                         });

}  // namespace
