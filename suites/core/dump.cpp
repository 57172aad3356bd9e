#include "dump.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace nb {

void write_npy(const std::string& path, const std::string& descr,
               const std::vector<std::int64_t>& shape, const void* data, std::size_t bytes) {
  std::string sh = "(";
  for (auto d : shape) sh += fmt::format("{}, ", d);
  if (shape.size() > 1) sh.resize(sh.size() - 2);
  sh += ")";
  std::string header =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, sh);
  // magic(6) + version(2) + header length(2) + header, padded with spaces to a multiple of 64,
  // ending in '\n'.
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot write");
  const unsigned short len = static_cast<unsigned short>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.put(static_cast<char>(len & 0xff));
  f.put(static_cast<char>(len >> 8));
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!f) throw std::runtime_error(path + ": write failed");
}

namespace {

std::string descr_of(DType dt) {
  switch (dt) {
    case DType::f32:
      return "<f4";
    case DType::f16:
      return "<f2";
    case DType::bf16:
      return "<u2";
  }
  return "<f4";
}

std::vector<std::int64_t> tensor_shape(const Problem& p) {
  return p.layout == Layout::nchw ? std::vector<std::int64_t>{p.n, p.c, p.h, p.w}
                                  : std::vector<std::int64_t>{p.n, p.h, p.w, p.c};
}

std::vector<std::int64_t> small_shape(const Problem& p, const std::string& role,
                                      std::size_t numel) {
  if (role == "gamma" || role == "beta" || role == "dgamma" || role == "dbeta") {
    if (p.is_rows()) return {p.c, p.h, p.w};
    return {p.c};
  }
  if (role == "running_mean" || role == "running_var") return {p.c};
  if (p.method == Method::groupnorm) return {p.n, p.groups};
  if (p.method == Method::instancenorm) return {p.n, p.c};
  return {static_cast<std::int64_t>(numel)};
}

struct Writer {
  std::string dir;
  const Problem& p;
  nlohmann::json files = nlohmann::json::object();

  void tensor(const std::string& file, const std::string& role, const std::string& owner,
              const HostTensor& t) {
    if (t.empty()) return;
    const bool big = role == "x" || role == "y" || role == "dy" || role == "dx";
    const auto shape = big ? tensor_shape(p) : small_shape(p, role, t.numel());
    write_npy(dir + "/" + file, descr_of(t.dtype()), shape, t.data(), t.bytes());
    files[file] = {
        {"role", role},
        {"produced_by", owner},
        {"dtype", t.dtype() == DType::bf16 ? "bf16_bits" : std::string(to_string(t.dtype()))},
        {"shape", shape}};
  }
  void reference(const std::string& role, const std::vector<double>& v) {
    if (v.empty()) return;
    const bool big = role == "y" || role == "dx";
    const auto shape = big ? tensor_shape(p) : small_shape(p, role, v.size());
    const std::string file = "ref64." + role + ".npy";
    write_npy(dir + "/" + file, "<f8", shape, v.data(), v.size() * 8);
    files[file] = {{"role", role},
                   {"produced_by", "fp64 oracle (reference/), before rounding to the dtype"},
                   {"dtype", "f64"},
                   {"shape", shape}};
  }
};

}  // namespace

std::string dump_case(const std::string& dir, int case_index, const Problem& p, Distribution dist,
                      const CaseInputs& in, const ref::Tensors& ref,
                      const std::vector<DumpedBackend>& backends) {
  std::string name = to_repro(p);
  for (char& ch : name)
    if (ch == ':') ch = '_';
  const std::string path = fmt::format("{}/{:04d}_{}_{}", dir, case_index, name, to_string(dist));
  std::filesystem::create_directories(path);
  Writer w{path, p};
  w.tensor("x.npy", "x", "input", in.x);
  w.tensor("dy.npy", "dy", "input", in.dy);
  w.tensor("gamma.npy", "gamma", "input", in.gamma);
  w.tensor("beta.npy", "beta", "input", in.beta);
  w.tensor("running_mean.npy", "running_mean", "input (before the update)", in.running_mean);
  w.tensor("running_var.npy", "running_var", "input (before the update)", in.running_var);
  w.tensor("mean.npy", "mean", "input (saved by forward, fp32)", in.mean);
  w.tensor("invstd.npy", "invstd", "input (saved by forward, fp32)", in.invstd);
  w.reference("y", ref.y);
  w.reference("dx", ref.dx);
  if (p.pass != Pass::bwd) {
    w.reference("mean", p.pass == Pass::fwd_train ? ref.mean : std::vector<double>{});
    w.reference("invstd", p.pass == Pass::fwd_train ? ref.invstd : std::vector<double>{});
    if (p.pass == Pass::fwd_train) {
      w.reference("running_mean", ref.running_mean);
      w.reference("running_var", ref.running_var);
    }
  }
  w.reference("dgamma", ref.dgamma);
  w.reference("dbeta", ref.dbeta);
  nlohmann::json agreements = nlohmann::json::object();
  for (const auto& b : backends) {
    const CaseOutputs& o = *b.outputs;
    const std::string pre = b.backend + ".";
    w.tensor(pre + "y.npy", "y", b.backend, o.y);
    w.tensor(pre + "mean.npy", "mean", b.backend, o.mean);
    w.tensor(pre + "invstd.npy", "invstd", b.backend, o.invstd);
    w.tensor(pre + "running_mean.npy", "running_mean", b.backend + " (after the update)",
             o.running_mean);
    w.tensor(pre + "running_var.npy", "running_var", b.backend + " (after the update)",
             o.running_var);
    w.tensor(pre + "dx.npy", "dx", b.backend, o.dx);
    w.tensor(pre + "dgamma.npy", "dgamma", b.backend, o.dgamma);
    w.tensor(pre + "dbeta.npy", "dbeta", b.backend, o.dbeta);
    agreements[b.backend] = {{"status", to_string(b.agreement->status)},
                             {"worst_output", b.agreement->worst_output},
                             {"max_rel_err", b.agreement->max_rel_err},
                             {"threshold", b.agreement->threshold},
                             {"reason", b.agreement->reason}};
  }
  nlohmann::json m = {
      {"repro", to_repro(p)},
      {"problem",
       {{"method", to_string(p.method)},
        {"pass", to_string(p.pass)},
        {"dtype", to_string(p.dtype)},
        {"layout", to_string(p.layout)},
        {"n", p.n},
        {"c", p.c},
        {"h", p.h},
        {"w", p.w},
        {"num_groups", p.groups},
        {"eps", p.eps},
        {"momentum", p.momentum},
        {"affine", p.affine}}},
      {"distribution", to_string(dist)},
      {"layout_note",
       "x, y, dy, dx are in memory order: (N, C, H, W) for nchw, (N, H, W, C) for nhwc"},
      {"bf16_note",
       "bf16_bits arrays hold raw bfloat16 bits; widen with "
       "(a.astype(numpy.uint32) << 16).view(numpy.float32)"},
      {"files", w.files},
      {"agreement", agreements}};
  std::ofstream f(path + "/manifest.json");
  f << m.dump(2) << "\n";
  if (!f) throw std::runtime_error(path + "/manifest.json: write failed");
  return path;
}

}  // namespace nb
