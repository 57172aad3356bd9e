#include "sweep.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "agreement.hpp"
#include "dump.hpp"
#include "machine.hpp"
#include "results_csv.hpp"
#include "traffic.hpp"

namespace nb {

std::vector<std::string> resolve_backends(const std::vector<std::string>& requested) {
  const auto& reg = Registry::instance();
  const auto known = reg.backends(/*include_hidden=*/true);
  if (requested.empty()) {
    std::vector<std::string> out;
    for (const auto& b : reg.backends())
      if (b != "reference" && !reg.backend_unavailable_reason(b)) out.push_back(b);
    return out.empty() ? std::vector<std::string>{"reference"} : out;
  }
  for (const auto& b : requested)
    if (std::find(known.begin(), known.end(), b) == known.end())
      throw std::invalid_argument(
          fmt::format("unknown backend '{}' (known: {})", b, fmt::join(reg.backends(), ", ")));
  return requested;
}

Agreement run_and_compare(const Problem& p, Implementation& impl, const CaseInputs& in,
                          const ref::Tensors& ref, CaseOutputs& out,
                          std::unique_ptr<Instance>* inst_out, std::string* info) {
  try {
    auto inst = impl.instantiate(p, bind(p, in, out));
    inst->run();
    inst->sync_outputs();
    if (info) *info = inst->info();
    Agreement ag = compare(p, in, out, ref);
    if (inst_out) *inst_out = std::move(inst);
    return ag;
  } catch (const std::exception& e) {
    Agreement ag;
    ag.status = Status::fail;
    ag.reason = std::string("error: ") + e.what();
    return ag;
  }
}

namespace {

std::string num(double v) { return fmt::format("{:.6g}", v); }

CsvRow problem_row(const Problem& p, const std::string& backend, Distribution dist,
                   const std::string& mode, int threads) {
  const auto& m = machine();
  static const std::string when = utc_now();
  return CsvRow{{"utc_time", when},
                {"git_commit", build_git_commit()},
                {"cpu_model", m.cpu_model},
                {"compiler", build_compiler()},
                {"threads", std::to_string(threads)},
                {"backend", backend},
                {"method", std::string(to_string(p.method))},
                {"pass", std::string(to_string(p.pass))},
                {"dtype", std::string(to_string(p.dtype))},
                {"layout", std::string(to_string(p.layout))},
                {"n", std::to_string(p.n)},
                {"c", std::to_string(p.c)},
                {"h", std::to_string(p.h)},
                {"w", std::to_string(p.w)},
                {"num_groups", std::to_string(p.effective_groups())},
                {"eps", fmt::format("{}", p.eps)},
                {"momentum", fmt::format("{}", p.momentum)},
                {"affine", p.affine ? "1" : "0"},
                {"repro", to_repro(p)},
                {"dist", std::string(to_string(dist))},
                {"mode", mode}};
}

void set_agreement(CsvRow& row, const Agreement& a) {
  row["status"] = std::string(to_string(a.status));
  row["worst_output"] = a.worst_output;
  row["max_abs_err"] = num(a.max_abs_err);
  row["max_rel_err"] = num(a.max_rel_err);
  row["threshold"] = num(a.threshold);
  row["reason"] = a.reason;
}

std::string eta(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = std::lround(seconds);
  return s >= 3600 ? fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60)
                   : fmt::format("{}m{:02d}s", s / 60, s % 60);
}

}  // namespace

SweepSummary run_sweep(const SweepConfig& cfg, const SweepOptions& opt) {
  // Everything that can be wrong with the options is checked before the results file opens.
  const auto backends =
      resolve_backends(opt.backends.empty() ? cfg.settings.backends : opt.backends);
  if (opt.threads < 0) throw std::invalid_argument("--threads must be positive");
  if (opt.threads > 0) omp_set_num_threads(opt.threads);
  const int threads = omp_get_max_threads();
  const double budget = opt.memory_budget_bytes > 0
                            ? opt.memory_budget_bytes
                            : 0.5 * static_cast<double>(machine().physical_memory);
  if (opt.shard_count < 1 || opt.shard_index < 0 || opt.shard_index >= opt.shard_count)
    throw std::invalid_argument(fmt::format("bad shard {}/{}: expected K/N with 1 <= K <= N",
                                            opt.shard_index + 1, opt.shard_count));
  std::vector<Problem> problems;
  for (std::size_t i = 0; i < cfg.problems.size(); ++i) {
    const Problem& p = cfg.problems[i];
    if (static_cast<int>(i % static_cast<std::size_t>(opt.shard_count)) != opt.shard_index)
      continue;
    if (opt.methods.empty() ||
        std::find(opt.methods.begin(), opt.methods.end(), p.method) != opt.methods.end())
      problems.push_back(p);
  }
  if (problems.empty())
    throw std::invalid_argument("no problem of the config matches --methods and --shard");

  CsvWriter csv(opt.out_csv, opt.resume);
  SweepSummary sum;
  const auto& reg = Registry::instance();
  const auto& settings = cfg.settings;
  const auto t_start = std::chrono::steady_clock::now();
  std::size_t done_cases = 0;

  auto emit = [&](CsvRow row) {
    csv.append(row);
    ++sum.rows;
    const auto& st = row["status"];
    if (st == "PASS") ++sum.pass;
    if (st == "FAIL") ++sum.fail;
    if (st == "SKIP") ++sum.skip;
  };

  for (std::size_t pi = 0; pi < problems.size(); ++pi) {
    const Problem& p = problems[pi];
    const std::string repro = to_repro(p);
    if (opt.progress) {
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
      const double per = done_cases ? elapsed / static_cast<double>(done_cases) : NAN;
      fmt::print(stderr, "[{}/{}] {}  (elapsed {}, ETA {})\n", pi + 1, problems.size(), repro,
                 eta(elapsed), eta(per * static_cast<double>(problems.size() - pi)));
    }
    // Which (backend, dist, mode) rows are still to do, and which backends can run at all.
    struct Todo {
      std::string backend;
      const Registration* reg = nullptr;
      std::string skip;
    };
    std::vector<Todo> todo;
    for (const auto& b : backends) {
      Todo t{b, reg.find(b, p.method, p.pass, p.dtype, p.layout), {}};
      if (!t.reg)
        t.skip = fmt::format("{} has no implementation of {} {} {} {}", b, to_string(p.method),
                             to_string(p.pass), to_string(p.dtype), to_string(p.layout));
      else if (auto why = t.reg->impl->unavailable_reason())
        t.skip = "unavailable: " + *why;
      else if (auto why2 = t.reg->impl->unsupported_reason(p))
        t.skip = "unsupported: " + *why2;
      todo.push_back(std::move(t));
    }
    const double need =
        static_cast<double>(case_memory_bytes(p, static_cast<int>(backends.size())));
    const bool over_budget = need > budget;

    for (std::size_t di = 0; di < settings.distributions.size(); ++di) {
      const Distribution dist = settings.distributions[di];
      const bool timed = di == 0;
      std::vector<std::string> modes;
      if (timed)
        for (auto m : settings.modes) modes.push_back(std::string(to_string(m)));
      else
        modes.push_back("-");  // agreement only
      auto all_done = [&](const std::string& b) {
        return std::all_of(modes.begin(), modes.end(), [&](const std::string& m) {
          return csv.done(CsvWriter::key(repro, b, std::string(to_string(dist)), m));
        });
      };
      bool any = false;
      for (const auto& t : todo) {
        if (all_done(t.backend)) {
          sum.resumed += modes.size();
          continue;
        }
        if (!t.skip.empty() || over_budget) {
          for (const auto& m : modes) {
            CsvRow row = problem_row(p, t.backend, dist, m, threads);
            row["status"] = "SKIP";
            row["reason"] = over_budget ? fmt::format("needs {:.2f} GiB > memory budget {:.2f} GiB",
                                                      need / (1 << 30), budget / (1 << 30))
                                        : t.skip;
            emit(row);
          }
          continue;
        }
        any = true;
      }
      if (!any) continue;

      const std::uint64_t seed = settings.seed ^ fnv1a(repro) ^ fnv1a(to_string(dist));
      const CaseInputs in = make_inputs(p, dist, seed);
      const ref::Tensors ref = reference_outputs(p, in);
      std::vector<std::pair<std::string, std::pair<CaseOutputs, Agreement>>> dumped;
      for (const auto& t : todo) {
        if (!t.skip.empty() || over_budget || all_done(t.backend)) continue;
        CaseOutputs out = make_outputs(p, in);
        std::unique_ptr<Instance> inst;
        std::string info;
        const Agreement ag = run_and_compare(p, *t.reg->impl, in, ref, out, &inst, &info);
        for (const auto& m : modes) {
          if (csv.done(CsvWriter::key(repro, t.backend, std::string(to_string(dist)), m))) continue;
          CsvRow row = problem_row(p, t.backend, dist, m, threads);
          row["impl_info"] = info;
          set_agreement(row, ag);
          if (timed && inst) {
            TimingOptions to;
            to.repetitions = settings.repetitions;
            to.min_time_s = settings.min_time_s;
            to.mode = parse_timing_mode(m);
            try {
              const TimingResult r = time_instance(*inst, to, repro + "/" + t.backend);
              const Traffic tr = traffic(p, threads, machine().llc_bytes);
              const double gbps = static_cast<double>(tr.bytes) / r.median_s / 1e9;
              row["repetitions"] = std::to_string(r.seconds.size());
              row["iterations"] = std::to_string(r.iterations);
              row["time_median_us"] = num(r.median_s * 1e6);
              row["time_min_us"] = num(r.min_s * 1e6);
              row["time_max_us"] = num(r.max_s * 1e6);
              row["time_p25_us"] = num(r.p25_s * 1e6);
              row["time_p75_us"] = num(r.p75_s * 1e6);
              row["bytes"] = std::to_string(tr.bytes);
              row["traffic_model"] = tr.model;
              row["gbps"] = num(gbps);
              row["copy_gbps"] = num(r.copy_gbps);
              row["copy_nt_gbps"] = num(r.copy_nt_gbps);
              row["frac_copy_nt"] = num(gbps / r.copy_nt_gbps);
            } catch (const std::exception& e) {
              row["status"] = "FAIL";
              row["reason"] = std::string("timing error: ") + e.what();
            }
          }
          emit(row);
          if (opt.progress)
            fmt::print(stderr, "    {:<14} {:<12} {:<4} {} {}{}\n", t.backend, to_string(dist), m,
                       row["status"],
                       row["gbps"].empty() ? ""
                                           : fmt::format("{} GB/s, {} of NT copy  ", row["gbps"],
                                                         row["frac_copy_nt"]),
                       row["status"] == "FAIL" ? row["reason"] : "");
        }
        if (!opt.dump_dir.empty())
          dumped.emplace_back(t.backend, std::make_pair(std::move(out), ag));
      }
      if (!opt.dump_dir.empty()) {
        std::vector<DumpedBackend> db;
        for (const auto& [b, oa] : dumped) db.push_back({b, &oa.first, &oa.second});
        dump_case(opt.dump_dir, static_cast<int>(pi), p, dist, in, ref, db);
      }
    }
    ++done_cases;
  }
  return sum;
}

}  // namespace nb
