#include "problem.hpp"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <stdexcept>

namespace nb {

namespace {

template <typename E, std::size_t K>
E parse_enum(std::string_view s, const E (&all)[K], const char* what) {
  std::string expected;
  for (E e : all) {
    if (to_string(e) == s) return e;
    if (!expected.empty()) expected += ", ";
    expected += to_string(e);
  }
  throw std::invalid_argument(fmt::format("unknown {} '{}' (expected {})", what, s, expected));
}

std::int64_t parse_int(std::string_view s, char field, std::string_view whole) {
  std::int64_t v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size())
    throw std::invalid_argument(
        fmt::format("bad shape '{}': '{}' needs an integer, got '{}'", whole, field, s));
  return v;
}

double parse_double(std::string_view s, std::string_view name) {
  double v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size())
    throw std::invalid_argument(fmt::format("bad option '{}': '{}' is not a number", name, s));
  return v;
}

}  // namespace

std::string_view to_string(Method m) {
  switch (m) {
    case Method::batchnorm:
      return "batchnorm";
    case Method::layernorm:
      return "layernorm";
    case Method::groupnorm:
      return "groupnorm";
    case Method::instancenorm:
      return "instancenorm";
    case Method::rmsnorm:
      return "rmsnorm";
  }
  return "?";
}
std::string_view to_string(Pass p) {
  switch (p) {
    case Pass::fwd_train:
      return "fwd_train";
    case Pass::fwd_infer:
      return "fwd_infer";
    case Pass::bwd:
      return "bwd";
  }
  return "?";
}
std::string_view to_string(Layout l) { return l == Layout::nchw ? "nchw" : "nhwc"; }

Method parse_method(std::string_view s) { return parse_enum(s, kAllMethods, "method"); }
Pass parse_pass(std::string_view s) { return parse_enum(s, kAllPasses, "pass"); }
Layout parse_layout(std::string_view s) { return parse_enum(s, kAllLayouts, "layout"); }

std::int64_t Problem::effective_groups() const {
  if (method == Method::groupnorm) return groups;
  if (method == Method::instancenorm) return c;
  return 1;
}

std::int64_t Problem::reduction_size() const {
  switch (method) {
    case Method::batchnorm:
      return n * h * w;
    case Method::layernorm:
    case Method::rmsnorm:
      return c * h * w;
    case Method::groupnorm:
      return (c / groups) * h * w;
    case Method::instancenorm:
      return h * w;
  }
  return 0;
}

std::int64_t Problem::stats_count() const {
  switch (method) {
    case Method::batchnorm:
      return c;
    case Method::layernorm:
    case Method::rmsnorm:
      return n;
    case Method::groupnorm:
      return n * groups;
    case Method::instancenorm:
      return n * c;
  }
  return 0;
}

std::int64_t Problem::param_count() const { return is_rows() ? c * h * w : c; }

std::optional<std::string> validate(const Problem& p) {
  if (p.n <= 0 || p.c <= 0 || p.h <= 0 || p.w <= 0)
    return fmt::format("sizes must be positive (got n={} c={} h={} w={})", p.n, p.c, p.h, p.w);
  if (p.groups <= 0) return fmt::format("num_groups must be positive (got {})", p.groups);
  if (p.method == Method::groupnorm && p.c % p.groups != 0)
    return fmt::format("C={} is not divisible by num_groups={}", p.c, p.groups);
  if (p.method != Method::groupnorm && p.groups != 1)
    return fmt::format("num_groups applies to groupnorm only (got g{} for {})", p.groups,
                       to_string(p.method));
  if (!(p.eps > 0.0) || !std::isfinite(p.eps))
    return fmt::format("eps must be positive and finite (got {})", p.eps);
  if (!(p.momentum >= 0.0 && p.momentum <= 1.0))
    return fmt::format("momentum must be in [0, 1] (got {})", p.momentum);
  if (p.method != Method::batchnorm && p.momentum != 0.1)
    return fmt::format("momentum applies to batchnorm only (got mom{} for {})", p.momentum,
                       to_string(p.method));
  // Guard the products below against overflow before anyone allocates.
  const double numel = static_cast<double>(p.n) * p.c * p.h * p.w;
  if (numel > 4.6e18) return fmt::format("tensor of {:.3g} elements is too large", numel);
  if (p.method == Method::batchnorm && p.pass != Pass::fwd_infer && p.n * p.h * p.w == 1)
    return fmt::format(
        "batchnorm {} needs more than 1 value per channel (N*H*W == 1); PyTorch: \"Expected more "
        "than 1 value per channel when training\"",
        to_string(p.pass));
  return std::nullopt;
}

void require_valid(const Problem& p) {
  if (auto why = validate(p)) throw std::invalid_argument(to_repro(p) + ": " + *why);
}

std::string shape_string(const Problem& p) {
  if (p.is_rows() && p.h == 1 && p.w == 1) return fmt::format("t{}d{}", p.n, p.c);
  std::string s = fmt::format("n{}c{}h{}w{}", p.n, p.c, p.h, p.w);
  if (p.method == Method::groupnorm) s += fmt::format("g{}", p.groups);
  return s;
}

std::string to_repro(const Problem& p) {
  // fmt's "{}" for double is the shortest representation that round-trips.
  std::string s = fmt::format("{}:{}:{}:{}:{}:eps{}", to_string(p.method), to_string(p.pass),
                              to_string(p.dtype), to_string(p.layout), shape_string(p), p.eps);
  if (p.method == Method::batchnorm) s += fmt::format(":mom{}", p.momentum);
  if (!p.affine) s += ":noaffine";
  return s;
}

void parse_shape(std::string_view s, Problem& p, bool allow_missing_n) {
  std::optional<std::int64_t> field[128];
  auto v = [&](char k) -> std::optional<std::int64_t>& {
    return field[static_cast<unsigned char>(k)];
  };
  std::size_t i = 0;
  if (s.empty()) throw std::invalid_argument("empty shape");
  while (i < s.size()) {
    const char key = s[i];
    if (std::string_view("nchwgtd").find(key) == std::string_view::npos)
      throw std::invalid_argument(fmt::format(
          "bad shape '{}': unexpected '{}' (expected n<N>c<C>h<H>w<W>[g<G>] or t<T>d<D>)", s, key));
    std::size_t j = i + 1;
    while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '-')) ++j;
    if (v(key))
      throw std::invalid_argument(fmt::format("bad shape '{}': '{}' given twice", s, key));
    v(key) = parse_int(s.substr(i + 1, j - i - 1), key, s);
    i = j;
  }
  const bool rows = v('t') || v('d');
  if (rows) {
    if (v('n') || v('c') || v('h') || v('w') || v('g'))
      throw std::invalid_argument(
          fmt::format("bad shape '{}': t<T>d<D> cannot be mixed with n/c/h/w/g", s));
    if (!v('t') || !v('d'))
      throw std::invalid_argument(fmt::format("bad shape '{}': rows need both t and d", s));
    p.n = *v('t');
    p.c = *v('d');
    p.h = p.w = 1;
    return;
  }
  if (!v('c')) throw std::invalid_argument(fmt::format("bad shape '{}': missing c<C>", s));
  if (!v('n') && !allow_missing_n)
    throw std::invalid_argument(fmt::format("bad shape '{}': missing n<N>", s));
  if (v('n')) p.n = *v('n');
  p.c = *v('c');
  p.h = v('h') ? *v('h') : (v('w') ? *v('w') : 1);
  p.w = v('w') ? *v('w') : p.h;
  if (v('g')) p.groups = *v('g');
}

Problem parse_repro(std::string_view s) {
  std::vector<std::string_view> f;
  std::size_t start = 0;
  while (true) {
    const std::size_t k = s.find(':', start);
    f.push_back(s.substr(start, k == std::string_view::npos ? std::string_view::npos : k - start));
    if (k == std::string_view::npos) break;
    start = k + 1;
  }
  if (f.size() < 5)
    throw std::invalid_argument(
        fmt::format("bad repro '{}': expected METHOD:PASS:DTYPE:LAYOUT:SHAPE[:OPTION...]", s));
  Problem p;
  p.method = parse_method(f[0]);
  p.pass = parse_pass(f[1]);
  p.dtype = parse_dtype(f[2]);
  p.layout = parse_layout(f[3]);
  parse_shape(f[4], p);
  if ((f[4].find('t') != std::string_view::npos || f[4].find('d') != std::string_view::npos) &&
      !p.is_rows())
    throw std::invalid_argument(
        fmt::format("bad repro '{}': t<T>d<D> shapes are for layernorm and rmsnorm only", s));
  for (std::size_t k = 5; k < f.size(); ++k) {
    const std::string_view o = f[k];
    if (o == "noaffine") {
      p.affine = false;
    } else if (o.starts_with("eps")) {
      p.eps = parse_double(o.substr(3), o);
    } else if (o.starts_with("mom")) {
      p.momentum = parse_double(o.substr(3), o);
    } else {
      throw std::invalid_argument(
          fmt::format("bad repro '{}': unknown option '{}' (expected eps<float>, mom<float>, "
                      "noaffine)",
                      s, o));
    }
  }
  if (auto why = validate(p)) throw std::invalid_argument(fmt::format("{}: {}", s, *why));
  return p;
}

}  // namespace nb
