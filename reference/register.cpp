// Registers the fp64 reference as backend "reference" for every method, pass, dtype and layout.
//
// One execution widens the KernelArgs inputs to double (x and dy from the problem's dtype with
// nb::load_as_double, every fp32 tensor exactly), runs nb::ref::run (reference.hpp) and narrows
// the outputs: y and dx to the problem's dtype with nb::store_from_double (double -> fp32 ->
// 16-bit, round to nearest even), the statistics, running statistics, dgamma and dbeta to fp32.
// A pointer that is nullptr in KernelArgs (registry.hpp says which pass uses which) is neither read
// nor written. It is the oracle, not a competitor: slow on purpose.
#include <cstddef>
#include <memory>
#include <vector>

#include "reference.hpp"
#include "registry.hpp"

namespace nb {

namespace {

std::vector<double> widen_data(const void* p, DType dt, std::int64_t count) {
  std::vector<double> v;
  if (p == nullptr) return v;
  v.resize(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = load_as_double(p, dt, i);
  return v;
}

std::vector<double> widen_f32(const float* p, std::int64_t count) {
  return widen_data(p, DType::f32, count);
}

void narrow_data(const std::vector<double>& v, void* p, DType dt) {
  if (p == nullptr) return;
  for (std::size_t i = 0; i < v.size(); ++i) store_from_double(p, dt, i, v[i]);
}

void narrow_f32(const std::vector<double>& v, float* p) {
  if (p == nullptr) return;
  for (std::size_t i = 0; i < v.size(); ++i) p[i] = static_cast<float>(v[i]);
}

class ReferenceImplementation final : public Implementation {
 public:
  void run(const Problem& p, const KernelArgs& a) override {
    const std::int64_t numel = p.numel(), params = p.param_count(), stats = p.stats_count();
    ref::Tensors t;
    t.x = widen_data(a.x, p.dtype, numel);
    t.gamma = widen_f32(a.gamma, params);
    if (p.pass == Pass::bwd) {
      t.dy = widen_data(a.dy, p.dtype, numel);
      t.mean = widen_f32(a.mean, stats);
      t.invstd = widen_f32(a.invstd, stats);
    } else {
      t.beta = widen_f32(a.beta, params);
      t.running_mean = widen_f32(a.running_mean, p.c);
      t.running_var = widen_f32(a.running_var, p.c);
    }

    ref::run(p, t);

    if (p.pass == Pass::bwd) {
      narrow_data(t.dx, a.dx, p.dtype);
      narrow_f32(t.dgamma, a.dgamma);
      narrow_f32(t.dbeta, a.dbeta);
      return;
    }
    narrow_data(t.y, a.y, p.dtype);
    if (p.pass == Pass::fwd_train) {
      narrow_f32(t.mean, a.mean);
      narrow_f32(t.invstd, a.invstd);
      if (p.method == Method::batchnorm) {
        narrow_f32(t.running_mean, a.running_mean);
        narrow_f32(t.running_var, a.running_var);
      }
    }
  }
};

}  // namespace

}  // namespace nb

NB_REGISTER_BACKEND(reference) {
  using namespace nb;
  register_implementation("reference", std::make_shared<ReferenceImplementation>(),
                          {std::begin(kAllMethods), std::end(kAllMethods)},
                          {std::begin(kAllPasses), std::end(kAllPasses)},
                          {std::begin(kAllDTypes), std::end(kAllDTypes)},
                          {std::begin(kAllLayouts), std::end(kAllLayouts)});
}
