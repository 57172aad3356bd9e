// Operation graph, heuristics and execution plan of one mapped problem (graph.hpp).
#include "graph.hpp"

#include <fmt/format.h>

#include <stdexcept>

namespace nb_cudnn {

static_assert(static_cast<int>(NormMode::layer) == CUDNN_LAYER_NORM);
static_assert(static_cast<int>(NormMode::instance) == CUDNN_INSTANCE_NORM);
static_assert(static_cast<int>(NormMode::batch) == CUDNN_BATCH_NORM);
static_assert(static_cast<int>(NormMode::group) == CUDNN_GROUP_NORM);
static_assert(static_cast<int>(NormMode::rms) == CUDNN_RMS_NORM);

namespace {

const char* mode_name(NormMode m) {
  switch (m) {
    case NormMode::layer:
      return "CUDNN_LAYER_NORM";
    case NormMode::instance:
      return "CUDNN_INSTANCE_NORM";
    case NormMode::batch:
      return "CUDNN_BATCH_NORM";
    case NormMode::group:
      return "CUDNN_GROUP_NORM";
    case NormMode::rms:
      return "CUDNN_RMS_NORM";
  }
  return "?";
}

/// The NORM_FORWARD attribute that takes a role's tensor.
cudnnBackendAttributeName_t forward_attribute(Role r, const char** name) {
#define NB_CASE(role, attr) \
  case Role::role:          \
    *name = #attr;          \
    return attr
  switch (r) {
    NB_CASE(x, CUDNN_ATTR_OPERATION_NORM_FWD_XDESC);
    NB_CASE(y, CUDNN_ATTR_OPERATION_NORM_FWD_YDESC);
    NB_CASE(scale, CUDNN_ATTR_OPERATION_NORM_FWD_SCALE_DESC);
    NB_CASE(bias, CUDNN_ATTR_OPERATION_NORM_FWD_BIAS_DESC);
    NB_CASE(mean, CUDNN_ATTR_OPERATION_NORM_FWD_MEAN_DESC);
    NB_CASE(inv_variance, CUDNN_ATTR_OPERATION_NORM_FWD_INV_VARIANCE_DESC);
    NB_CASE(epsilon, CUDNN_ATTR_OPERATION_NORM_FWD_EPSILON_DESC);
    NB_CASE(exp_avg_factor, CUDNN_ATTR_OPERATION_NORM_FWD_EXP_AVG_FACTOR_DESC);
    NB_CASE(running_mean_in, CUDNN_ATTR_OPERATION_NORM_FWD_INPUT_RUNNING_MEAN_DESC);
    NB_CASE(running_var_in, CUDNN_ATTR_OPERATION_NORM_FWD_INPUT_RUNNING_VAR_DESC);
    NB_CASE(running_mean_out, CUDNN_ATTR_OPERATION_NORM_FWD_OUTPUT_RUNNING_MEAN_DESC);
    NB_CASE(running_var_out, CUDNN_ATTR_OPERATION_NORM_FWD_OUTPUT_RUNNING_VAR_DESC);
    default:
      break;
  }
  throw std::logic_error(std::string("NORM_FORWARD takes no tensor of role ") + to_string(r));
}

/// The NORM_BACKWARD attribute that takes a role's tensor.
cudnnBackendAttributeName_t backward_attribute(Role r, const char** name) {
  switch (r) {
    NB_CASE(x, CUDNN_ATTR_OPERATION_NORM_BWD_XDESC);
    NB_CASE(dy, CUDNN_ATTR_OPERATION_NORM_BWD_DYDESC);
    NB_CASE(dx, CUDNN_ATTR_OPERATION_NORM_BWD_DXDESC);
    NB_CASE(scale, CUDNN_ATTR_OPERATION_NORM_BWD_SCALE_DESC);
    NB_CASE(mean, CUDNN_ATTR_OPERATION_NORM_BWD_MEAN_DESC);
    NB_CASE(inv_variance, CUDNN_ATTR_OPERATION_NORM_BWD_INV_VARIANCE_DESC);
    NB_CASE(dscale, CUDNN_ATTR_OPERATION_NORM_BWD_DSCALE_DESC);
    NB_CASE(dbias, CUDNN_ATTR_OPERATION_NORM_BWD_DBIAS_DESC);
    NB_CASE(epsilon, CUDNN_ATTR_OPERATION_NORM_BWD_EPSILON_DESC);
    default:
      break;
  }
#undef NB_CASE
  throw std::logic_error(std::string("NORM_BACKWARD takes no tensor of role ") + to_string(r));
}

const char* knob_name(cudnnBackendKnobType_t k) {
  switch (k) {
    case CUDNN_KNOB_TYPE_SWIZZLE:
      return "SWIZZLE";
    case CUDNN_KNOB_TYPE_TILE_SIZE:
      return "TILE_SIZE";
    case CUDNN_KNOB_TYPE_EDGE:
      return "EDGE";
    case CUDNN_KNOB_TYPE_MULTIPLY:
      return "MULTIPLY";
    case CUDNN_KNOB_TYPE_SPLIT_K_BUF:
      return "SPLIT_K_BUF";
    case CUDNN_KNOB_TYPE_TILEK:
      return "TILEK";
    case CUDNN_KNOB_TYPE_STAGES:
      return "STAGES";
    case CUDNN_KNOB_TYPE_REDUCTION_MODE:
      return "REDUCTION_MODE";
    case CUDNN_KNOB_TYPE_KERNEL_CFG:
      return "KERNEL_CFG";
    case CUDNN_KNOB_TYPE_WORKSPACE:
      return "WORKSPACE";
    case CUDNN_KNOB_TYPE_BLOCK_SIZE:
      return "BLOCK_SIZE";
    case CUDNN_KNOB_TYPE_OCCUPANCY:
      return "OCCUPANCY";
    case CUDNN_KNOB_TYPE_ARRAY_SIZE_PER_THREAD:
      return "ARRAY_SIZE_PER_THREAD";
    case CUDNN_KNOB_TYPE_SPLIT_COLS:
      return "SPLIT_COLS";
    case CUDNN_KNOB_TYPE_TILE_ROWS:
      return "TILE_ROWS";
    case CUDNN_KNOB_TYPE_TILE_COLS:
      return "TILE_COLS";
    case CUDNN_KNOB_TYPE_LOAD_SIZE:
      return "LOAD_SIZE";
    case CUDNN_KNOB_TYPE_CTA_COUNT:
      return "CTA_COUNT";
    default:
      return nullptr;
  }
}

const char* heuristic_name(cudnnBackendHeurMode_t m) {
  return m == CUDNN_HEUR_MODE_A ? "A" : m == CUDNN_HEUR_MODE_FALLBACK ? "FALLBACK" : "?";
}

/// The engine configurations a heuristic returns: `proposed` is the count cuDNN announces, the
/// returned descriptors those that pass the engines' support checks. Sets *error and returns none
/// when the heuristics descriptor does not finalize (no engine matches the graph).
std::vector<BackendDescriptor> engine_configs(const NormGraph& graph, const PlanTarget& target,
                                              cudnnBackendHeurMode_t mode, std::int64_t* proposed,
                                              std::string* error) {
  const std::string label = std::string("heuristic ") + heuristic_name(mode);
  BackendDescriptor heur(NB_CUDNN_NAMED(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR), label);
  heur.set_descriptor(NB_CUDNN_NAMED(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH), graph.graph().get());
  heur.set(NB_CUDNN_NAMED(CUDNN_ATTR_ENGINEHEUR_MODE), CUDNN_TYPE_HEUR_MODE, 1, &mode);
  if (target.device_properties) {
#if CUDNN_VERSION >= 90800
    heur.set_descriptor(NB_CUDNN_NAMED(CUDNN_ATTR_ENGINEHEUR_DEVICEPROP), target.device_properties);
#else
    throw CudnnError(CUDNN_STATUS_NOT_SUPPORTED, "device-properties descriptors need cuDNN 9.8");
#endif
  }
  *proposed = 0;
  try {
    heur.finalize();
  } catch (const CudnnError& e) {
    if (!e.not_supported()) throw;
    *error = e.what();
    return {};
  }
  const std::string what =
      "cudnnBackendGetAttribute(" + heur.name() + ", CUDNN_ATTR_ENGINEHEUR_RESULTS)";
  check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, proposed, nullptr),
        what);
  std::vector<BackendDescriptor> configs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (std::int64_t i = 0; i < *proposed; ++i) {
    configs.emplace_back(NB_CUDNN_NAMED(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR),
                         label + " config " + std::to_string(i));
    raw.push_back(configs.back().get());
  }
  std::int64_t returned = 0;
  if (*proposed > 0)
    check(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                   CUDNN_TYPE_BACKEND_DESCRIPTOR, *proposed, &returned, raw.data()),
          what);
  configs.resize(static_cast<std::size_t>(returned));
  return configs;
}

/// Engine id, behaviour notes and knob choices of an engine configuration.
EngineChoice describe_config(const BackendDescriptor& config) {
  EngineChoice c;
  BackendDescriptor engine(NB_CUDNN_NAMED(CUDNN_BACKEND_ENGINE_DESCRIPTOR), "of config");
  cudnnBackendDescriptor_t raw = engine.get();
  std::int64_t count = 0;
  check(cudnnBackendGetAttribute(config.get(), CUDNN_ATTR_ENGINECFG_ENGINE,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count, &raw),
        "cudnnBackendGetAttribute(" + config.name() + ", CUDNN_ATTR_ENGINECFG_ENGINE)");
  c.engine_id = engine.get_int64(NB_CUDNN_NAMED(CUDNN_ATTR_ENGINE_GLOBAL_INDEX));

  cudnnBackendBehaviorNote_t notes[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
  check(cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE,
                                 CUDNN_TYPE_BEHAVIOR_NOTE, CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &count,
                                 notes),
        "cudnnBackendGetAttribute(" + engine.name() + ", CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE)");
  for (std::int64_t i = 0; i < count; ++i)
    if (notes[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) c.runtime_compiled = true;

  const std::string what =
      "cudnnBackendGetAttribute(" + config.name() + ", CUDNN_ATTR_ENGINECFG_KNOB_CHOICES)";
  std::int64_t knobs = 0;
  check(cudnnBackendGetAttribute(config.get(), CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &knobs, nullptr),
        what);
  std::vector<BackendDescriptor> choices;
  std::vector<cudnnBackendDescriptor_t> raw_choices;
  for (std::int64_t i = 0; i < knobs; ++i) {
    choices.emplace_back(NB_CUDNN_NAMED(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR));
    raw_choices.push_back(choices.back().get());
  }
  if (knobs > 0)
    check(
        cudnnBackendGetAttribute(config.get(), CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, knobs, &knobs, raw_choices.data()),
        what);
  for (std::int64_t i = 0; i < knobs; ++i) {
    cudnnBackendKnobType_t type{};
    check(cudnnBackendGetAttribute(raw_choices[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE,
                                   CUDNN_TYPE_KNOB_TYPE, 1, &count, &type),
          "cudnnBackendGetAttribute(knob choice, CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE)");
    const std::int64_t value =
        choices[i].get_int64(NB_CUDNN_NAMED(CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE));
    const char* name = knob_name(type);
    c.knobs.emplace_back(name ? name : "knob" + std::to_string(static_cast<int>(type)), value);
  }
  return c;
}

}  // namespace

NormGraph::NormGraph(const NormMapping& mapping, nb::DType dtype, const PlanTarget& target)
    : mapping_(mapping), dtype_(dtype) {
  for (const auto& spec : mapping_.tensors)
    tensors_.emplace_back(spec.role, make_tensor(spec, dtype));
  if (mapping_.kind == GraphKind::folded_affine)
    build_folded_operations();
  else
    build_norm_operation();
  graph_ = BackendDescriptor(NB_CUDNN_NAMED(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR));
  std::vector<cudnnBackendDescriptor_t> ops;
  for (const auto& op : operations_) ops.push_back(op.get());
  graph_.set_descriptors(NB_CUDNN_NAMED(CUDNN_ATTR_OPERATIONGRAPH_OPS), ops);
  if (target.handle)
    graph_.set(NB_CUDNN_NAMED(CUDNN_ATTR_OPERATIONGRAPH_HANDLE), CUDNN_TYPE_HANDLE, 1,
               &target.handle);
  graph_.finalize();
}

const BackendDescriptor& NormGraph::tensor(Role r) const {
  for (const auto& [role, d] : tensors_)
    if (role == r) return d;
  throw std::logic_error(std::string("graph has no tensor ") + to_string(r));
}

void NormGraph::build_norm_operation() {
  const bool backward = mapping_.kind == GraphKind::norm_backward;
  const std::string label = std::string(mode_name(mapping_.mode)) +
                            (backward                                            ? " backward"
                             : mapping_.kind == GraphKind::norm_forward_training ? " training"
                                                                                 : " inference");
  BackendDescriptor op =
      backward ? BackendDescriptor(NB_CUDNN_NAMED(CUDNN_BACKEND_OPERATION_NORM_BACKWARD_DESCRIPTOR),
                                   label)
               : BackendDescriptor(NB_CUDNN_NAMED(CUDNN_BACKEND_OPERATION_NORM_FORWARD_DESCRIPTOR),
                                   label);
  const auto mode = static_cast<cudnnBackendNormMode_t>(mapping_.mode);
  if (backward) {
    op.set(NB_CUDNN_NAMED(CUDNN_ATTR_OPERATION_NORM_BWD_MODE), CUDNN_TYPE_NORM_MODE, 1, &mode);
  } else {
    const cudnnBackendNormFwdPhase_t phase = mapping_.kind == GraphKind::norm_forward_training
                                                 ? CUDNN_NORM_FWD_TRAINING
                                                 : CUDNN_NORM_FWD_INFERENCE;
    op.set(NB_CUDNN_NAMED(CUDNN_ATTR_OPERATION_NORM_FWD_MODE), CUDNN_TYPE_NORM_MODE, 1, &mode);
    op.set(NB_CUDNN_NAMED(CUDNN_ATTR_OPERATION_NORM_FWD_PHASE), CUDNN_TYPE_NORM_FWD_PHASE, 1,
           &phase);
  }
  for (const auto& [role, d] : tensors_) {
    const char* name = nullptr;
    const auto attr = backward ? backward_attribute(role, &name) : forward_attribute(role, &name);
    op.set_descriptor(attr, name, d.get());
  }
  op.finalize();
  operations_.push_back(std::move(op));
}

void NormGraph::build_folded_operations() {
  // y = ((x - mean) * scale) + bias, three fp32 pointwise operations fused by cuDNN; the two
  // intermediates are virtual (never in memory).
  const TensorSpec* x = mapping_.find(Role::x);
  if (!x) throw std::logic_error("folded graph without x");
  virtual_tensors_.push_back(make_virtual_tensor(101, x->shape, "x - mean"));
  virtual_tensors_.push_back(make_virtual_tensor(102, x->shape, "(x - mean) * scale"));
  struct Step {
    cudnnPointwiseMode_t mode;
    const char* name;
    cudnnBackendDescriptor_t in, operand, out;
  };
  const Step steps[] = {
      {CUDNN_POINTWISE_SUB, "CUDNN_POINTWISE_SUB", tensor(Role::x).get(), tensor(Role::mean).get(),
       virtual_tensors_[0].get()},
      {CUDNN_POINTWISE_MUL, "CUDNN_POINTWISE_MUL", virtual_tensors_[0].get(),
       tensor(Role::scale).get(), virtual_tensors_[1].get()},
      {CUDNN_POINTWISE_ADD, "CUDNN_POINTWISE_ADD", virtual_tensors_[1].get(),
       tensor(Role::bias).get(), tensor(Role::y).get()},
  };
  for (const Step& s : steps) {
    BackendDescriptor pw(NB_CUDNN_NAMED(CUDNN_BACKEND_POINTWISE_DESCRIPTOR), s.name);
    pw.set(NB_CUDNN_NAMED(CUDNN_ATTR_POINTWISE_MODE), CUDNN_TYPE_POINTWISE_MODE, 1, &s.mode);
    const cudnnDataType_t precision = CUDNN_DATA_FLOAT;
    pw.set(NB_CUDNN_NAMED(CUDNN_ATTR_POINTWISE_MATH_PREC), CUDNN_TYPE_DATA_TYPE, 1, &precision);
    pw.finalize();
    BackendDescriptor op(NB_CUDNN_NAMED(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR), s.name);
    op.set_descriptor(NB_CUDNN_NAMED(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR), pw.get());
    op.set_descriptor(NB_CUDNN_NAMED(CUDNN_ATTR_OPERATION_POINTWISE_XDESC), s.in);
    op.set_descriptor(NB_CUDNN_NAMED(CUDNN_ATTR_OPERATION_POINTWISE_BDESC), s.operand);
    op.set_descriptor(NB_CUDNN_NAMED(CUDNN_ATTR_OPERATION_POINTWISE_YDESC), s.out);
    op.finalize();
    pointwise_.push_back(std::move(pw));
    operations_.push_back(std::move(op));
  }
}

std::string EngineChoice::describe() const {
  std::string s = fmt::format("engine {} (heuristic {} {}/{}{})", engine_id, heuristic, rank + 1,
                              candidates, runtime_compiled ? ", runtime-compiled" : "");
  if (!knobs.empty()) {
    s += " knobs";
    const char* sep = " ";
    for (const auto& [name, value] : knobs) {
      s += fmt::format("{}{}={}", sep, name, value);
      sep = ",";
    }
  }
  s += fmt::format(" workspace {} B", workspace_bytes);
  return s;
}

ExecutionPlan build_plan(const NormGraph& graph, const PlanTarget& target) {
  std::vector<std::string> attempts;
  // NOT_SUPPORTED unless a configuration failed otherwise (e.g. runtime compilation): then that
  // status, so that a failure is reported as an error and not as a skip.
  cudnnStatus_t status = CUDNN_STATUS_NOT_SUPPORTED;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    std::int64_t proposed = 0;
    std::string error;
    std::vector<BackendDescriptor> configs = engine_configs(graph, target, mode, &proposed, &error);
    if (!error.empty()) {
      attempts.push_back(error);
      continue;
    }
    if (configs.empty()) {
      attempts.push_back(fmt::format(
          "heuristic {}: {} engine configurations proposed, none passes cuDNN's support checks "
          "(CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr logs each engine's reason)",
          heuristic_name(mode), proposed));
      continue;
    }
    for (std::size_t i = 0; i < configs.size(); ++i) {
      ExecutionPlan p;
      p.plan = BackendDescriptor(NB_CUDNN_NAMED(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR),
                                 fmt::format("heuristic {} config {}", heuristic_name(mode), i));
      p.plan.set_descriptor(NB_CUDNN_NAMED(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG),
                            configs[i].get());
      if (target.handle)
        p.plan.set(NB_CUDNN_NAMED(CUDNN_ATTR_EXECUTION_PLAN_HANDLE), CUDNN_TYPE_HANDLE, 1,
                   &target.handle);
#if CUDNN_VERSION >= 90800
      if (target.device_properties)
        p.plan.set_descriptor(NB_CUDNN_NAMED(CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP),
                              target.device_properties);
#endif
      try {
        p.plan.finalize();
      } catch (const CudnnError& e) {
        attempts.push_back(e.what());
        if (!e.not_supported() && status == CUDNN_STATUS_NOT_SUPPORTED) status = e.status();
        continue;
      }
      p.choice = describe_config(configs[i]);
      p.choice.heuristic = heuristic_name(mode);
      p.choice.rank = static_cast<int>(i);
      p.choice.candidates = static_cast<int>(configs.size());
      p.choice.workspace_bytes =
          p.plan.get_int64(NB_CUDNN_NAMED(CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE));
      return p;
    }
  }
  std::string message = "no cuDNN execution plan";
  const char* sep = ": ";
  for (const auto& a : attempts) {
    message += sep + a;
    sep = "; ";
  }
  throw CudnnError(status, message);
}

std::vector<HeuristicAnswer> query_heuristics(const NormGraph& graph, const PlanTarget& target) {
  std::vector<HeuristicAnswer> answers;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    HeuristicAnswer a{std::string(heuristic_name(mode)), 0, {}, {}};
    for (const auto& config : engine_configs(graph, target, mode, &a.proposed, &a.error))
      a.viable_engines.push_back(describe_config(config).engine_id);
    answers.push_back(std::move(a));
  }
  return answers;
}

BackendDescriptor device_properties_from_json(const std::string& json) {
#if CUDNN_VERSION >= 90800
  BackendDescriptor d(NB_CUDNN_NAMED(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR), "from JSON");
  d.set(NB_CUDNN_NAMED(CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION), CUDNN_TYPE_CHAR,
        static_cast<std::int64_t>(json.size()), json.data());
  d.finalize();
  return d;
#else
  (void)json;
  throw CudnnError(CUDNN_STATUS_NOT_SUPPORTED, "device-properties descriptors need cuDNN 9.8");
#endif
}

BackendDescriptor make_variant_pack(const std::vector<std::int64_t>& uids,
                                    const std::vector<void*>& pointers, void* workspace) {
  if (uids.size() != pointers.size())
    throw std::logic_error("variant pack: as many uids as pointers are needed");
  BackendDescriptor pack(NB_CUDNN_NAMED(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR));
  pack.set_int64s(NB_CUDNN_NAMED(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS), uids);
  pack.set(NB_CUDNN_NAMED(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS), CUDNN_TYPE_VOID_PTR,
           static_cast<std::int64_t>(pointers.size()), pointers.data());
  pack.set(NB_CUDNN_NAMED(CUDNN_ATTR_VARIANT_PACK_WORKSPACE), CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize();
  return pack;
}

}  // namespace nb_cudnn
