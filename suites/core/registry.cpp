#include "registry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace nb {

namespace {
class HostInstance final : public Instance {
 public:
  HostInstance(Implementation* impl, const Problem& p, const KernelArgs& a)
      : impl_(impl), problem_(p), args_(a) {}
  void run() override { impl_->run(problem_, args_); }

 private:
  Implementation* impl_;
  Problem problem_;
  KernelArgs args_;
};
}  // namespace

std::unique_ptr<Instance> Implementation::instantiate(const Problem& p, const KernelArgs& args) {
  return std::make_unique<HostInstance>(this, p, args);
}

void Implementation::run(const Problem& p, const KernelArgs&) {
  throw std::logic_error("implementation for " + to_repro(p) +
                         " neither overrides run() nor instantiate()");
}

Registry& Registry::instance() {
  static Registry r;
  return r;
}

void Registry::add(Registration r) {
  if (find(r.backend, r.method, r.pass, r.dtype, r.layout))
    throw std::logic_error(fmt::format("duplicate registration {} {} {} {} {}", r.backend,
                                       to_string(r.method), to_string(r.pass), to_string(r.dtype),
                                       to_string(r.layout)));
  regs_.push_back(std::move(r));
}

const Registration* Registry::find(std::string_view backend, Method m, Pass p, DType dt,
                                   Layout l) const {
  for (const auto& r : regs_)
    if (r.backend == backend && r.method == m && r.pass == p && r.dtype == dt && r.layout == l)
      return &r;
  return nullptr;
}

std::vector<std::string> Registry::backends(bool include_hidden) const {
  std::vector<std::string> out;
  for (const auto& r : regs_) {
    if (r.hidden && !include_hidden) continue;
    if (std::find(out.begin(), out.end(), r.backend) == out.end()) out.push_back(r.backend);
  }
  auto it = std::find(out.begin(), out.end(), "reference");
  if (it != out.end()) std::rotate(out.begin(), it, it + 1);
  return out;
}

std::optional<std::string> Registry::backend_unavailable_reason(std::string_view backend) const {
  for (const auto& r : regs_)
    if (r.backend == backend) return r.impl->unavailable_reason();
  return fmt::format("unknown backend '{}'", backend);
}

void register_implementation(const std::string& backend, std::shared_ptr<Implementation> impl,
                             std::vector<Method> methods, std::vector<Pass> passes,
                             std::vector<DType> dtypes, std::vector<Layout> layouts, bool hidden) {
  for (Method m : methods)
    for (Pass p : passes)
      for (DType d : dtypes)
        for (Layout l : layouts) Registry::instance().add({backend, m, p, d, l, impl, hidden});
}

}  // namespace nb
