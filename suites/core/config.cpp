#include "config.hpp"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

namespace nb {

namespace {

struct Ctx {
  const std::string& source;
  std::string where;  // "[sweep]" or "[[cases]] #2"
  [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
    if (key.empty()) throw ConfigError(fmt::format("{}: {}: {}", source, where, msg));
    throw ConfigError(fmt::format("{}: {}.{}: {}", source, where, key, msg));
  }
};

std::string type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return fmt::format("string \"{}\"", n.as_string()->get());
    case toml::node_type::integer:
      return fmt::format("integer {}", n.as_integer()->get());
    case toml::node_type::floating_point:
      return fmt::format("float {}", n.as_floating_point()->get());
    case toml::node_type::boolean:
      return "boolean";
    case toml::node_type::array:
      return "array";
    case toml::node_type::table:
      return "table";
    default:
      return "value";
  }
}

void check_keys(const toml::table& t, const Ctx& ctx, std::initializer_list<std::string_view> ok) {
  for (const auto& [k, v] : t) {
    if (std::find(ok.begin(), ok.end(), k.str()) != ok.end()) continue;
    std::string list;
    for (auto o : ok) list += (list.empty() ? "" : ", ") + std::string(o);
    ctx.fail(std::string(k.str()), "unknown key (expected one of " + list + ")");
  }
}

// Elements of a scalar-or-array value, each visited with its node.
template <typename F>
void each(const toml::node& n, F&& f) {
  if (const auto* arr = n.as_array()) {
    for (const auto& e : *arr) f(e);
  } else {
    f(n);
  }
}

std::vector<std::string> strings(const toml::node& n, const Ctx& ctx, const std::string& key) {
  std::vector<std::string> out;
  each(n, [&](const toml::node& e) {
    if (!e.is_string())
      ctx.fail(key, "expected a string or a list of strings, got " + type_name(e));
    out.push_back(std::string(*e.as_string()));
  });
  if (out.empty()) ctx.fail(key, "expected at least one value, got an empty list");
  return out;
}

template <typename E, typename Parse>
std::vector<E> enums(const toml::node& n, const Ctx& ctx, const std::string& key, Parse parse) {
  std::vector<E> out;
  for (const auto& s : strings(n, ctx, key)) {
    try {
      out.push_back(parse(s));
    } catch (const std::invalid_argument& e) {
      ctx.fail(key, e.what());
    }
  }
  return out;
}

std::vector<std::int64_t> integers(const toml::node& n, const Ctx& ctx, const std::string& key) {
  std::vector<std::int64_t> out;
  const std::string expected =
      "expected a positive integer, a list of them, or a range table {start, stop, mul|add}";
  if (const auto* t = n.as_table()) {
    check_keys(*t, Ctx{ctx.source, ctx.where + "." + key}, {"start", "stop", "mul", "add"});
    const auto start = (*t)["start"].value<std::int64_t>();
    const auto stop = (*t)["stop"].value<std::int64_t>();
    const auto mul = (*t)["mul"].value<std::int64_t>();
    const auto add = (*t)["add"].value<std::int64_t>();
    if (!start || !stop || (!mul == !add) || *start < 1 || *stop < *start || (mul && *mul < 2) ||
        (add && *add < 1))
      ctx.fail(key, expected + " with integers start >= 1, stop >= start, mul >= 2 or add >= 1");
    for (std::int64_t v = *start; v <= *stop; v = mul ? v * *mul : v + *add) out.push_back(v);
    return out;
  }
  each(n, [&](const toml::node& e) {
    const auto v = e.value_exact<std::int64_t>();
    if (!v || *v < 1) ctx.fail(key, expected + ", got " + type_name(e));
    out.push_back(*v);
  });
  if (out.empty()) ctx.fail(key, expected + ", got an empty list");
  return out;
}

std::vector<double> floats(const toml::node& n, const Ctx& ctx, const std::string& key) {
  std::vector<double> out;
  each(n, [&](const toml::node& e) {
    const auto v = e.value<double>();
    if (!v || !(e.is_floating_point() || e.is_integer()))
      ctx.fail(key, "expected a number or a list of numbers, got " + type_name(e));
    out.push_back(*v);
  });
  if (out.empty()) ctx.fail(key, "expected a number or a list of numbers, got an empty list");
  return out;
}

std::vector<bool> booleans(const toml::node& n, const Ctx& ctx, const std::string& key) {
  std::vector<bool> out;
  each(n, [&](const toml::node& e) {
    if (!e.is_boolean())
      ctx.fail(key, "expected true/false or a list of them, got " + type_name(e));
    out.push_back(e.as_boolean()->get());
  });
  return out;
}

void parse_settings(const toml::table& t, SweepSettings& s, const std::string& source) {
  const Ctx ctx{source, "[sweep]"};
  check_keys(t, ctx,
             {"name", "backends", "repetitions", "min_time", "modes", "distributions", "seed"});
  if (auto v = t["name"]) {
    if (!v.is_string()) ctx.fail("name", "expected a string, got " + type_name(*v.node()));
    s.name = std::string(*v.as_string());
  }
  if (auto v = t["backends"]) s.backends = strings(*v.node(), ctx, "backends");
  if (auto v = t["repetitions"]) {
    const auto r = v.value_exact<std::int64_t>();
    if (!r || *r < 1 || *r > 1000)
      ctx.fail("repetitions", "expected an integer in [1, 1000], got " + type_name(*v.node()));
    s.repetitions = static_cast<int>(*r);
  }
  if (auto v = t["min_time"]) {
    const auto r = v.value<double>();
    if (!r || !(*r > 0) || *r > 60)
      ctx.fail("min_time", "expected seconds in (0, 60], got " + type_name(*v.node()));
    s.min_time_s = *r;
  }
  if (auto v = t["modes"]) s.modes = enums<TimingMode>(*v.node(), ctx, "modes", parse_timing_mode);
  if (auto v = t["distributions"])
    s.distributions = enums<Distribution>(*v.node(), ctx, "distributions", parse_distribution);
  if (auto v = t["seed"]) {
    const auto r = v.value_exact<std::int64_t>();
    if (!r || *r < 0)
      ctx.fail("seed", "expected a non-negative integer, got " + type_name(*v.node()));
    s.seed = static_cast<std::uint64_t>(*r);
  }
}

void parse_block(const toml::table& t, const Ctx& ctx, std::vector<Problem>& out) {
  check_keys(t, ctx,
             {"methods", "passes", "dtypes", "layouts", "n", "c", "h", "w", "hw", "shapes",
              "groups", "eps", "momentum", "affine"});
  auto get = [&](const char* k) { return t[k].node(); };
  if (!get("methods")) ctx.fail("methods", "required key missing (expected a list of methods)");
  const auto methods = enums<Method>(*get("methods"), ctx, "methods", parse_method);
  const auto passes = get("passes")
                          ? enums<Pass>(*get("passes"), ctx, "passes", parse_pass)
                          : std::vector<Pass>(std::begin(kAllPasses), std::end(kAllPasses));
  const auto dtypes = get("dtypes") ? enums<DType>(*get("dtypes"), ctx, "dtypes", parse_dtype)
                                    : std::vector<DType>{DType::f32};
  const auto layouts = get("layouts") ? enums<Layout>(*get("layouts"), ctx, "layouts", parse_layout)
                                      : std::vector<Layout>{Layout::nchw};
  const auto ns = get("n") ? integers(*get("n"), ctx, "n") : std::vector<std::int64_t>{};
  const auto groups =
      get("groups") ? integers(*get("groups"), ctx, "groups") : std::vector<std::int64_t>{1};
  const auto epss = get("eps") ? floats(*get("eps"), ctx, "eps") : std::vector<double>{1e-5};
  const auto moms =
      get("momentum") ? floats(*get("momentum"), ctx, "momentum") : std::vector<double>{0.1};
  const auto affines =
      get("affine") ? booleans(*get("affine"), ctx, "affine") : std::vector<bool>{true};

  // Shapes: explicit list, or the product of the c/h/w axes; each crossed with n when it has none.
  std::vector<std::pair<Problem, bool>> shapes;  // (shape, needs n from the axis)
  if (get("shapes")) {
    if (get("c") || get("h") || get("w") || get("hw"))
      ctx.fail("shapes", "give either shapes or the c/h/w/hw axes, not both");
    for (const auto& s : strings(*get("shapes"), ctx, "shapes")) {
      Problem p;
      p.n = -1;
      try {
        parse_shape(s, p, /*allow_missing_n=*/true);
      } catch (const std::invalid_argument& e) {
        ctx.fail("shapes", e.what());
      }
      shapes.push_back({p, p.n == -1});
    }
  } else {
    if (!get("c")) ctx.fail("c", "required key missing (give c with h/w/hw, or shapes)");
    if (get("hw") && (get("h") || get("w"))) ctx.fail("hw", "give hw or h/w, not both");
    const auto cs = integers(*get("c"), ctx, "c");
    const auto hs = get("hw")
                        ? integers(*get("hw"), ctx, "hw")
                        : (get("h") ? integers(*get("h"), ctx, "h") : std::vector<std::int64_t>{1});
    const auto ws_axis = get("w") ? integers(*get("w"), ctx, "w") : std::vector<std::int64_t>{};
    for (auto c : cs)
      for (auto h : hs) {
        const auto ws =
            get("hw") ? std::vector<std::int64_t>{h}
                      : (ws_axis.empty() ? std::vector<std::int64_t>{get("h") ? h : 1} : ws_axis);
        for (auto w : ws) {
          Problem p;
          p.n = -1;
          p.c = c;
          p.h = h;
          p.w = w;
          shapes.push_back({p, true});
        }
      }
  }
  const bool any_needs_n =
      std::any_of(shapes.begin(), shapes.end(), [](auto& s) { return s.second; });
  if (any_needs_n && ns.empty()) ctx.fail("n", "required key missing (a shape has no n<N>)");

  for (Method m : methods)
    for (Pass pass : passes)
      for (DType dt : dtypes)
        for (Layout l : layouts)
          for (const auto& [shape, needs_n] : shapes)
            for (std::int64_t n : needs_n ? ns : std::vector<std::int64_t>{shape.n})
              for (std::int64_t g : m == Method::groupnorm ? groups : std::vector<std::int64_t>{1})
                for (double eps : epss)
                  for (double mom : m == Method::batchnorm ? moms : std::vector<double>{0.1})
                    for (bool affine : affines) {
                      Problem p = shape;
                      p.method = m;
                      p.pass = pass;
                      p.dtype = dt;
                      p.layout = l;
                      p.n = n;
                      p.groups = m == Method::groupnorm ? (shape.groups > 1 ? shape.groups : g) : 1;
                      p.eps = eps;
                      p.momentum = mom;
                      p.affine = affine;
                      if (auto why = validate(p))
                        ctx.fail("", fmt::format("invalid problem {}: {}", to_repro(p), *why));
                      out.push_back(p);
                    }
}

}  // namespace

SweepConfig parse_config(const std::string& text, const std::string& source) {
  SweepConfig cfg;
  cfg.source = source;
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw ConfigError(fmt::format("{}:{}:{}: malformed TOML: {}", source, e.source().begin.line,
                                  e.source().begin.column, e.description()));
  }
  const Ctx top{source, "(top level)"};
  check_keys(root, top, {"sweep", "cases"});
  if (auto s = root["sweep"]) {
    if (!s.is_table()) top.fail("sweep", "expected a table [sweep]");
    parse_settings(*s.as_table(), cfg.settings, source);
  }
  const auto* cases = root["cases"].as_array();
  if (!cases || cases->empty()) top.fail("cases", "expected at least one [[cases]] block");
  std::set<std::string> seen;
  std::vector<Problem> all;
  for (std::size_t i = 0; i < cases->size(); ++i) {
    const Ctx ctx{source, fmt::format("[[cases]] #{}", i + 1)};
    const auto* t = (*cases)[i].as_table();
    if (!t) ctx.fail("", "expected a table");
    parse_block(*t, ctx, all);
  }
  for (const auto& p : all)
    if (seen.insert(to_repro(p)).second) cfg.problems.push_back(p);
  return cfg;
}

SweepConfig load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(fmt::format("{}: cannot read the config file", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path);
}

}  // namespace nb
