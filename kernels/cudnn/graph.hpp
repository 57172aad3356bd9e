// cuDNN graph (backend) API for one mapped problem: the operation graph built from a NormMapping
// (mapping.hpp), the heuristics query, and the execution plan of the first engine configuration
// that finalizes.
//
// Engine choice: heuristics CUDNN_HEUR_MODE_A, then CUDNN_HEUR_MODE_FALLBACK; within each, the
// engine configurations in the order cuDNN ranks them (CUDNN_ATTR_ENGINEHEUR_RESULTS returns only
// those that pass the engines' support checks); the first whose execution plan finalizes is kept.
// The plan does not depend on the data pointers or on the by-value scalars (eps, momentum), so it
// is built once per problem and reused for every execution (cudnn_backend.cpp caches it).
//
// Sources: cuDNN 9 API reference, cudnn_graph library: CUDNN_BACKEND_OPERATION_NORM_FORWARD_-
// DESCRIPTOR, CUDNN_BACKEND_OPERATION_NORM_BACKWARD_DESCRIPTOR, CUDNN_BACKEND_OPERATION_POINTWISE_-
// DESCRIPTOR, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR,
// CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR,
// CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR (cuDNN >= 9.8).
#pragma once

#include <cudnn.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "descriptors.hpp"
#include "mapping.hpp"

namespace nb_cudnn {

/// What the heuristics and the plan are built for: a handle (the GPU it was created on; set on the
/// operation graph and the plan, CUDNN_ATTR_OPERATIONGRAPH_HANDLE / EXECUTION_PLAN_HANDLE), or a
/// device-properties descriptor without any GPU (CUDNN_ATTR_ENGINEHEUR_DEVICEPROP /
/// EXECUTION_PLAN_DEVICEPROP; "deviceless" planning, cuDNN >= 9.8). Exactly one is set.
struct PlanTarget {
  cudnnHandle_t handle = nullptr;
  cudnnBackendDescriptor_t device_properties = nullptr;
};

/// The finalized operation graph of a mapping: its tensor descriptors, the NORM_FORWARD /
/// NORM_BACKWARD operation (or the three pointwise operations of GraphKind::folded_affine) and
/// the CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR. Throws CudnnError naming the descriptor and
/// attribute that cuDNN rejected.
class NormGraph {
 public:
  NormGraph(const NormMapping& mapping, nb::DType dtype, const PlanTarget& target);
  const BackendDescriptor& graph() const { return graph_; }
  const NormMapping& mapping() const { return mapping_; }

 private:
  const BackendDescriptor& tensor(Role r) const;
  void build_norm_operation();
  void build_folded_operations();

  NormMapping mapping_;
  nb::DType dtype_;
  std::vector<std::pair<Role, BackendDescriptor>> tensors_;
  std::vector<BackendDescriptor> virtual_tensors_, pointwise_, operations_;
  BackendDescriptor graph_;
};

/// The engine an execution plan runs, as reported in the CSV's impl_info.
struct EngineChoice {
  std::int64_t engine_id = -1;  ///< CUDNN_ATTR_ENGINE_GLOBAL_INDEX
  std::string heuristic;        ///< "A" or "FALLBACK"
  int rank = 0;                 ///< position among the configurations that heuristic returned
  int candidates = 0;           ///< number of configurations it returned
  std::vector<std::pair<std::string, std::int64_t>> knobs;  ///< CUDNN_ATTR_ENGINECFG_KNOB_CHOICES
  bool runtime_compiled = false;     ///< CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION
  std::int64_t workspace_bytes = 0;  ///< CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE
  /// "engine 3 (heuristic A 1/3, runtime-compiled) knobs KERNEL_CFG=5,... workspace 0 B".
  std::string describe() const;
};

/// A finalized CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR and the engine it runs.
struct ExecutionPlan {
  BackendDescriptor plan;
  EngineChoice choice;
};

/// Heuristics A then FALLBACK; returns the plan of the first engine configuration that finalizes.
/// Throws CudnnError when no configuration finalizes; its message lists each heuristic's answer and
/// each failed configuration's status text. The status is CUDNN_STATUS_NOT_SUPPORTED when cuDNN
/// has no engine for the graph, else that of the first configuration that failed otherwise.
ExecutionPlan build_plan(const NormGraph& graph, const PlanTarget& target);

/// What one heuristic mode returns for a graph, without building plans: the number of engine
/// configurations it proposes and the engines of those that pass cuDNN's support checks
/// (CUDNN_ATTR_ENGINEHEUR_RESULTS filters the rest). error is the status text when the
/// heuristics descriptor did not finalize (cuDNN has no engine matching the graph).
struct HeuristicAnswer {
  std::string mode;
  std::int64_t proposed = 0;
  std::vector<std::int64_t> viable_engines;
  std::string error;
};
/// Modes A and FALLBACK. Throws CudnnError only on an error of the query itself.
std::vector<HeuristicAnswer> query_heuristics(const NormGraph& graph, const PlanTarget& target);

/// A finalized CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR from its JSON representation
/// (CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION; the keys are cudaDeviceProp's: deviceName,
/// multiProcessorCount, l2CacheSize, maxSharedMemoryPerBlockOptin, deviceVer = 10 * major +
/// minor, ...). Needs no GPU. Throws CudnnError (e.g. a missing key is CUDNN_STATUS_BAD_PARAM).
BackendDescriptor device_properties_from_json(const std::string& json);

/// A finalized CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: the data pointer of every non-virtual tensor
/// uid (device pointers; host pointers for by-value tensors) and the workspace. Throws CudnnError.
BackendDescriptor make_variant_pack(const std::vector<std::int64_t>& uids,
                                    const std::vector<void*>& pointers, void* workspace);

}  // namespace nb_cudnn
