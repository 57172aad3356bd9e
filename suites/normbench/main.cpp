// normbench: the command line of the normalization benchmark suite.
//   normbench list                         backends, availability and what each implements
//   normbench sweep [CONFIG] [options]     a sweep from a TOML config (default: embedded config)
//   normbench run REPRO [options]          one case, same CSV columns as a sweep
// Exit status: 0 all rows PASS or SKIP, 1 some agreement FAIL (the CSV is complete), 2 a usage,
// config or I/O error (one line on stderr, no results file started).
#include <fmt/format.h>
#include <omp.h>
#include <valgrind/callgrind.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <map>
#include <set>

#include "config.hpp"
#include "machine.hpp"
#include "registry.hpp"
#include "sweep.hpp"

namespace {

std::vector<std::string> split_list(const std::vector<std::string>& items) {
  std::vector<std::string> out;
  for (const auto& item : items) {
    std::size_t start = 0;
    while (start <= item.size()) {
      const std::size_t k = item.find(',', start);
      const std::string s =
          item.substr(start, k == std::string::npos ? std::string::npos : k - start);
      if (!s.empty()) out.push_back(s);
      if (k == std::string::npos) break;
      start = k + 1;
    }
  }
  return out;
}

int cmd_list() {
  const auto& reg = nb::Registry::instance();
  const auto& m = nb::machine();
  fmt::print("machine: {}, {} hardware threads, L2 {} KiB, LLC {} MiB, {} GiB RAM\n", m.cpu_model,
             m.hardware_threads, m.l2_bytes >> 10, m.llc_bytes >> 20, m.physical_memory >> 30);
  fmt::print("methods: batchnorm layernorm groupnorm instancenorm rmsnorm\n");
  fmt::print("passes:  fwd_train fwd_infer bwd\n");
  fmt::print("dtypes:  f32 bf16 f16    layouts: nchw nhwc\n\nbackends:\n");
  for (const auto& b : reg.backends()) {
    const auto why = reg.backend_unavailable_reason(b);
    fmt::print("  {:<14} {}\n", b, why ? "unavailable: " + *why : std::string("available"));
    // Registered combinations, grouped per method and pass.
    std::map<std::pair<int, int>, std::set<std::string>> combos;
    for (const auto& r : reg.all())
      if (r.backend == b)
        combos[{static_cast<int>(r.method), static_cast<int>(r.pass)}].insert(
            fmt::format("{}/{}", nb::to_string(r.dtype), nb::to_string(r.layout)));
    for (const auto& [k, v] : combos)
      fmt::print("      {:<13} {:<10} {}\n", nb::to_string(static_cast<nb::Method>(k.first)),
                 nb::to_string(static_cast<nb::Pass>(k.second)), fmt::join(v, " "));
  }
  return 0;
}

int cmd_exec(const nb::Problem& p, const std::string& backend, int iterations, int threads) {
  if (threads > 0) omp_set_num_threads(threads);
  nb::resolve_backends({backend});  // throws on an unknown name
  const auto* reg = nb::Registry::instance().find(backend, p.method, p.pass, p.dtype, p.layout);
  if (!reg) throw std::invalid_argument(backend + " does not implement " + nb::to_repro(p));
  if (auto why = reg->impl->unavailable_reason()) throw std::runtime_error(backend + ": " + *why);
  if (auto why = reg->impl->unsupported_reason(p)) throw std::runtime_error(backend + ": " + *why);
  const nb::CaseInputs in =
      nb::make_inputs(p, nb::Distribution::normal, nb::fnv1a(nb::to_repro(p)));
  nb::CaseOutputs out = nb::make_outputs(p, in);
  auto inst = reg->impl->instantiate(p, nb::bind(p, in, out));
  // One uninstrumented run first: lazy symbol binding, the machine description, the OpenMP
  // thread pool and the allocator's first requests are set up there, so the instrumented runs
  // count the kernel's steady state, not start-up work that depends on the host.
  inst->run();
  CALLGRIND_START_INSTRUMENTATION;
  for (int i = 0; i < iterations; ++i) inst->run();
  CALLGRIND_STOP_INSTRUMENTATION;
  inst->sync_outputs();
  return 0;
}

int report(const nb::SweepSummary& s, const std::string& out) {
  fmt::print(stderr, "{} rows to {}: {} PASS, {} FAIL, {} SKIP{}\n", s.rows, out, s.pass, s.fail,
             s.skip,
             s.resumed ? fmt::format(" ({} rows kept from the earlier run)", s.resumed) : "");
  return s.fail ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"normbench: benchmarks and agreement checks for normalization layers"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every subcommand");

  app.add_subcommand("list", "List methods, passes and backends with their availability");

  nb::SweepOptions opt;
  std::string config_path;
  std::vector<std::string> backends, methods;
  double budget_gib = 0;
  bool quiet = false;
  auto add_common = [&](CLI::App* sc) {
    sc->add_option("--out", opt.out_csv, "CSV results file ('-' for stdout)");
    sc->add_option("--backends", backends,
                   "Backends to run, comma-separated (default: the config's, else all available "
                   "but the reference)");
    sc->add_option("--threads", opt.threads, "OpenMP threads (default: all)")
        ->check(CLI::PositiveNumber);
    sc->add_option("--dump", opt.dump_dir,
                   "Write every case's inputs and outputs as .npy files plus manifest.json here");
    sc->add_option("--memory-budget", budget_gib,
                   "Skip cases needing more than this many GiB (default: half of RAM)")
        ->check(CLI::PositiveNumber);
    sc->add_flag("--quiet", quiet, "No progress lines on stderr");
  };
  auto* sweep = app.add_subcommand("sweep", "Run a sweep from a TOML config");
  sweep->add_option("CONFIG", config_path,
                    "Config file (default: the embedded configs/default.toml)");
  add_common(sweep);
  sweep->add_option("--methods", methods, "Only these methods, comma-separated");
  sweep->add_flag("--resume", opt.resume, "Append to --out, skipping rows it already has");
  std::string shard;
  sweep->add_option("--shard", shard,
                    "K/N: run only the K-th of N disjoint slices of the sweep (problems i with "
                    "i mod N == K-1), e.g. for a job array; merge the CSVs afterwards");

  std::string repro;
  int reps = 5;
  double min_time = 0.05;
  std::vector<std::string> modes{"hot"}, dists{"normal", "large_offset"};
  auto* run = app.add_subcommand("run", "Run one case given by its repro string");
  run->add_option("REPRO", repro, "e.g. batchnorm:fwd_train:f32:nchw:n32c64h56w56:eps1e-05:mom0.1")
      ->required();
  add_common(run);
  run->add_option("--repetitions", reps, "Google Benchmark repetitions")
      ->check(CLI::Range(1, 1000));
  run->add_option("--min-time", min_time, "Seconds per repetition")->check(CLI::Range(1e-4, 60.0));
  run->add_option("--modes", modes, "hot and/or cold");
  run->add_option("--dists", dists, "Input distributions: normal, large_offset");

  std::string exec_repro, exec_backend;
  int exec_iterations = 1;
  int exec_threads = 0;
  auto* exec = app.add_subcommand(
      "exec",
      "Run one case ITERATIONS times with no timing and no agreement check, for profilers; under "
      "valgrind --tool=callgrind --instr-atstart=no only the runs are instrumented");
  exec->add_option("REPRO", exec_repro, "the case")->required();
  exec->add_option("--backend", exec_backend, "the implementation to run")->required();
  exec->add_option("--iterations", exec_iterations, "runs")->check(CLI::Range(1, 1000000));
  exec->add_option("--threads", exec_threads, "OpenMP threads (default: all)")
      ->check(CLI::PositiveNumber);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  try {
    if (app.got_subcommand("list")) return cmd_list();
    if (app.got_subcommand("exec"))
      return cmd_exec(nb::parse_repro(exec_repro), exec_backend, exec_iterations, exec_threads);
    opt.backends = split_list(backends);
    opt.progress = !quiet;
    opt.memory_budget_bytes = budget_gib * double(1ull << 30);
    nb::SweepConfig cfg;
    if (app.got_subcommand("sweep")) {
      cfg = config_path.empty() ? nb::parse_config(nb::default_config_text(), "<default config>")
                                : nb::load_config(config_path);
      for (const auto& m : split_list(methods)) opt.methods.push_back(nb::parse_method(m));
      if (!shard.empty()) {
        int k = 0, n = 0;
        char tail = 0;
        if (std::sscanf(shard.c_str(), "%d/%d%c", &k, &n, &tail) != 2 || n < 1 || k < 1 || k > n)
          throw std::invalid_argument("--shard " + shard + ": expected K/N with 1 <= K <= N");
        opt.shard_index = k - 1;
        opt.shard_count = n;
      }
      if (sweep->count("--out") == 0) opt.out_csv = "out/" + cfg.settings.name + ".csv";
    } else {
      cfg.source = "<command line>";
      cfg.settings.name = "run";
      cfg.problems.push_back(nb::parse_repro(repro));
      cfg.settings.repetitions = reps;
      cfg.settings.min_time_s = min_time;
      cfg.settings.modes.clear();
      for (const auto& m : split_list(modes))
        cfg.settings.modes.push_back(nb::parse_timing_mode(m));
      cfg.settings.distributions.clear();
      for (const auto& d : split_list(dists))
        cfg.settings.distributions.push_back(nb::parse_distribution(d));
      if (run->count("--out") == 0) opt.out_csv = "-";
    }
    return report(nb::run_sweep(cfg, opt), opt.out_csv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "normbench: error: {}\n", e.what());
    return 2;
  }
}
