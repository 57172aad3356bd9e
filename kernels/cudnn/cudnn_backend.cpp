// Backend `cudnn`: cuDNN's normalization through the graph (backend) API. Every (method, pass,
// dtype, layout) is registered; what cuDNN itself has no engine for is reported unsupported with
// cuDNN's own status text (GroupNorm in cuDNN 9.19: "CUDNN_STATUS_NOT_SUPPORTED (matcher_casted ==
// nullptr)").
//
// Per problem (untimed, cached for the process): map_problem (mapping.hpp) -> NormGraph ->
// build_plan (graph.hpp: heuristics A then FALLBACK, first configuration that finalizes). BatchNorm
// fwd_infer tries NORM_FORWARD inference first and, when cuDNN has no engine for it, the folded
// pointwise graph y = (x - running_mean) * a + beta. unsupported_reason() builds the plan, so a
// sweep's SKIP rows carry cuDNN's answer; the plan is reused by instantiate() and every run.
//
// Per instance (untimed): device buffers for every tensor of the mapping (inputs copied from the
// KernelArgs host buffers, outputs pre-filled with NaN so an output cuDNN leaves unwritten fails
// the agreement check), host-side conversions (invstd or the folded scale from running_var, ones
// and zeros for noaffine, LayerNorm/RMSNorm parameters of NHWC problems reordered to x's memory
// order and dgamma/dbeta back), the workspace, and one variant pack. run() = cudnnBackendExecute on
// the context's stream + synchronize; run_device_timed() times the same with CUDA events, after an
// L2 flush in cold mode; paired_copy_gbps() is the device copy of kernels/cuda (256 MiB);
// sync_outputs() copies the outputs back. info() = the engine and the device.
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "context.hpp"
#include "descriptors.hpp"
#include "graph.hpp"
#include "mapping.hpp"
#include "registry.hpp"

namespace nb_cudnn {
namespace {

/// A problem as planned: the mapping, its graph, and the plan of the chosen engine.
struct PlannedProblem {
  NormMapping mapping;
  std::unique_ptr<NormGraph> graph;
  ExecutionPlan plan;
  std::string note;  ///< why the folded graph was used, else empty

  std::string describe() const {
    std::string s = "cuDNN graph: " + plan.choice.describe();
    if (!note.empty()) s += "; " + note;
    return s;
  }
};

/// Outcome of planning one problem: a plan, or why cuDNN has none (unsupported), or an error.
struct PlanOutcome {
  std::shared_ptr<const PlannedProblem> planned;
  std::optional<std::string> unsupported;
  std::optional<std::string> error;
};

std::shared_ptr<PlannedProblem> plan_mapping(const NormMapping& m, nb::DType dtype) {
  const PlanTarget target{context().handle, nullptr};
  auto planned = std::make_shared<PlannedProblem>();
  planned->mapping = m;
  planned->graph = std::make_unique<NormGraph>(planned->mapping, dtype, target);
  planned->plan = build_plan(*planned->graph, target);
  return planned;
}

/// Plans p; every exception ends in the outcome (an error), a NOT_SUPPORTED answer in unsupported.
PlanOutcome plan_problem(const nb::Problem& p) {
  PlanOutcome out;
  try {
    try {
      out.planned = plan_mapping(map_problem(p), p.dtype);
      return out;
    } catch (const CudnnError& e) {
      if (!e.not_supported()) throw;
      if (p.method != nb::Method::batchnorm || p.pass != nb::Pass::fwd_infer) {
        out.unsupported = std::string("cuDNN: ") + e.what();
        return out;
      }
      // BatchNorm inference: the folded pointwise graph (mapping.hpp, GraphKind::folded_affine).
      try {
        auto planned = plan_mapping(map_folded_batchnorm_inference(p), p.dtype);
        planned->note = std::string(
                            "BatchNorm inference as pointwise (x - running_mean) * a + "
                            "beta; NORM_FORWARD inference: ") +
                        cudnnGetErrorString(e.status());
        out.planned = std::move(planned);
      } catch (const CudnnError& folded) {
        if (!folded.not_supported()) throw;
        out.unsupported =
            std::string("cuDNN: ") + e.what() + "; folded pointwise graph: " + folded.what();
      }
    }
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  return out;
}

/// Plans built once per problem (repro string) and kept for the process (leaked with the
/// context: their descriptors must not be destroyed after cuDNN at exit).
const PlanOutcome& planned(const nb::Problem& p) {
  static std::mutex mutex;
  static auto* cache = new std::map<std::string, PlanOutcome>;
  const std::string key = nb::to_repro(p);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it == cache->end()) it = cache->emplace(key, plan_problem(p)).first;
  return it->second;
}

/// The KernelArgs buffer behind a binding (nullptr for ones, zeros, scratch, host-derived values
/// and by-value scalars).
const void* host_buffer(Binding b, const nb::KernelArgs& a) {
  switch (b) {
    case Binding::x:
      return a.x;
    case Binding::y:
      return a.y;
    case Binding::dy:
      return a.dy;
    case Binding::dx:
      return a.dx;
    case Binding::gamma:
      return a.gamma;
    case Binding::beta:
      return a.beta;
    case Binding::mean:
      return a.mean;
    case Binding::invstd:
      return a.invstd;
    case Binding::running_mean:
      return a.running_mean;
    case Binding::running_var:
      return a.running_var;
    case Binding::dgamma:
      return a.dgamma;
    case Binding::dbeta:
      return a.dbeta;
    default:
      return nullptr;
  }
}

bool is_harness_buffer(Binding b) {
  switch (b) {
    case Binding::ones:
    case Binding::zeros:
    case Binding::scratch:
    case Binding::invstd_of_running_var:
    case Binding::folded_scale:
    case Binding::by_value:
      return false;
    default:
      return true;
  }
}

class GraphInstance final : public nb::Instance {
 public:
  GraphInstance(const nb::Problem& p, const nb::KernelArgs& host,
                std::shared_ptr<const PlannedProblem> planned)
      : problem_(p), planned_(std::move(planned)), ctx_(context()) {
    const NormMapping& m = planned_->mapping;
    std::vector<std::int64_t> uids;
    std::vector<void*> pointers;
    for (const TensorSpec& spec : m.tensors) {
      uids.push_back(spec.uid);
      if (spec.by_value) {
        float& v = scalars_[static_cast<int>(spec.role)];
        v = spec.role == Role::epsilon ? m.epsilon : m.exp_avg_factor;
        pointers.push_back(&v);
        continue;
      }
      Bound b;
      b.spec = spec;
      const std::size_t element = spec.data_type ? nb::element_size(p.dtype) : sizeof(float);
      const std::int64_t span = spec.shape.span();
      if (auto want = binding_elements(spec.binding, p); want && *want != span)
        throw std::logic_error(std::string("cudnn: tensor ") + to_string(spec.role) + " spans " +
                               std::to_string(span) + " elements, its buffer " +
                               to_string(spec.binding) + " has " + std::to_string(*want));
      b.bytes = static_cast<std::size_t>(span) * element;
      b.device = nb_cuda::DeviceBuffer(b.bytes);
      if (spec.output) {
        if (is_harness_buffer(spec.binding))
          b.host_out = const_cast<void*>(host_buffer(spec.binding, host));
        nb_cuda::check(cudaMemset(b.device.get(), 0xff, b.bytes), "cudaMemset (NaN fill)");
      } else {
        upload_input(b, host);
      }
      pointers.push_back(b.device.get());
      bound_.push_back(std::move(b));
    }
    workspace_ =
        nb_cuda::DeviceBuffer(static_cast<std::size_t>(planned_->plan.choice.workspace_bytes));
    pack_ = make_variant_pack(uids, pointers, workspace_.get());
  }

  void run() override {
    execute();
    nb_cuda::check(cudaStreamSynchronize(ctx_.stream), "cudnn backend run");
  }
  std::optional<double> run_device_timed(bool cold) override {
    if (cold) l2_flusher().flush(ctx_.stream);
    timer_.start(ctx_.stream);
    execute();
    return timer_.stop_seconds(ctx_.stream);
  }
  bool device_timed() const override { return true; }
  std::optional<double> paired_copy_gbps() override {
    return nb_cuda::device_copy_gbps(std::size_t{256} << 20, ctx_.stream);
  }
  void sync_outputs() override {
    nb_cuda::check(cudaStreamSynchronize(ctx_.stream), "cudnn backend sync");
    for (const Bound& b : bound_) {
      if (!b.host_out) continue;
      if (!b.spec.reordered) {
        b.device.download(b.host_out);
        continue;
      }
      std::vector<float> device(b.bytes / sizeof(float));
      b.device.download(device.data());
      from_device_order(b.spec, device.data(), static_cast<float*>(b.host_out));
    }
  }
  std::string info() const override { return planned_->describe() + "; " + device_summary(); }

 private:
  struct Bound {
    TensorSpec spec;
    nb_cuda::DeviceBuffer device;
    std::size_t bytes = 0;
    void* host_out = nullptr;
  };

  void execute() {
    check(cudnnBackendExecute(ctx_.handle, planned_->plan.plan.get(), pack_.get()),
          "cudnnBackendExecute(" + planned_->plan.choice.describe() + ")");
  }

  void upload_input(Bound& b, const nb::KernelArgs& host) {
    const std::int64_t n = b.spec.shape.span();
    std::vector<float> values;
    switch (b.spec.binding) {
      case Binding::ones:
        values.assign(static_cast<std::size_t>(n), 1.0f);
        break;
      case Binding::zeros:
        values.assign(static_cast<std::size_t>(n), 0.0f);
        break;
      case Binding::invstd_of_running_var:
        values = invstd_of_running_var(require(host.running_var, "running_var"), problem_.c,
                                       problem_.eps);
        break;
      case Binding::folded_scale:
        values = folded_scale(host.gamma, require(host.running_var, "running_var"), problem_.c,
                              problem_.eps);
        break;
      default: {
        const void* h = host_buffer(b.spec.binding, host);
        if (!h)
          throw std::logic_error(std::string("cudnn: KernelArgs.") + to_string(b.spec.binding) +
                                 " is null but tensor " + to_string(b.spec.role) + " needs it");
        if (!b.spec.reordered) {
          b.device.upload(h);
          return;
        }
        values = to_device_order(b.spec, static_cast<const float*>(h));
        break;
      }
    }
    b.device.upload(values.data());
  }

  static const float* require(const float* p, const char* name) {
    if (!p) throw std::logic_error(std::string("cudnn: KernelArgs.") + name + " is null");
    return p;
  }

  nb::Problem problem_;
  std::shared_ptr<const PlannedProblem> planned_;
  Context& ctx_;
  std::vector<Bound> bound_;
  float scalars_[kRoleCount] = {};
  nb_cuda::DeviceBuffer workspace_;
  BackendDescriptor pack_;
  nb_cuda::EventTimer timer_;
};

class CudnnGraphNorms final : public nb::Implementation {
 public:
  std::optional<std::string> unavailable_reason() const override {
    return nb_cudnn::unavailable_reason();
  }
  std::optional<std::string> unsupported_reason(const nb::Problem& p) const override {
    if (auto why = unavailable_reason()) return why;
    if (p.method == nb::Method::batchnorm)
      if (auto why = eps_below_minimum(p, CUDNN_BN_MIN_EPSILON)) return why;
    try {
      const PlanOutcome& o = planned(p);
      if (o.unsupported) return o.unsupported;
    } catch (const std::exception&) {
      // An error (not an answer of cuDNN's): instantiate() reports it as a failure.
    }
    return std::nullopt;
  }
  std::unique_ptr<nb::Instance> instantiate(const nb::Problem& p,
                                            const nb::KernelArgs& args) override {
    if (auto why = unsupported_reason(p)) throw std::runtime_error("cudnn: " + *why);
    const PlanOutcome& o = planned(p);
    if (o.error) throw std::runtime_error("cudnn: " + *o.error);
    return std::make_unique<GraphInstance>(p, args, o.planned);
  }
};

}  // namespace
}  // namespace nb_cudnn

NB_REGISTER_BACKEND(cudnn) {
  using namespace nb;
  register_implementation("cudnn", std::make_shared<nb_cudnn::CudnnGraphNorms>(),
                          {std::begin(kAllMethods), std::end(kAllMethods)},
                          {std::begin(kAllPasses), std::end(kAllPasses)},
                          {std::begin(kAllDTypes), std::end(kAllDTypes)},
                          {std::begin(kAllLayouts), std::end(kAllLayouts)});
}
