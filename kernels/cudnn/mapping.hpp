// The mapping of a normbench problem to the tensors of a cuDNN normalization graph: for every
// tensor the operation takes, its role, unique id, logical dimensions (always N, C, H, W, cuDNN's
// 4-d order), strides in elements, element type, and where its device buffer comes from. Pure
// C++: no cuDNN or CUDA include, so the mapping is unit-tested on any machine
// (tests/cudnn/test_mapping.cpp) and the same function feeds both backends
// (graph.cpp builds backend descriptors from it; cudnn_legacy.cpp its 4-d tensor descriptors).
//
// Sources. cuDNN 9 Graph API, CUDNN_BACKEND_OPERATION_NORM_FORWARD_DESCRIPTOR and
// CUDNN_BACKEND_OPERATION_NORM_BACKWARD_DESCRIPTOR (cudnn_graph library reference): x, y, dy, dx
// (N, C, H, W) in the data type; scale and bias shaped like one sample of x for LAYER/RMS norm and
// (1, C, 1, 1) for BATCH/INSTANCE/GROUP norm; saved mean and inverse standard deviation ("inverse
// variance" in cuDNN's attribute names, = 1/sqrt(var + eps)) with size 1 along every reduced
// dimension; epsilon and the exponential average factor are by-value (1, 1, 1, 1) fp32 tensors.
// The shapes follow cudnn-frontend's nodes (include/cudnn_frontend/node/*.h), which derive them the
// same way. CUDNN_BATCHNORM_SPATIAL (cudnn_ops.h) gives the legacy API the same (1, C, 1, 1)
// parameter shape.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "problem.hpp"

namespace nb_cudnn {

/// cuDNN's normalization modes. The values equal cudnnBackendNormMode_t (cudnn_graph_v9.h:
/// CUDNN_LAYER_NORM 0, CUDNN_INSTANCE_NORM 1, CUDNN_BATCH_NORM 2, CUDNN_GROUP_NORM 3,
/// CUDNN_RMS_NORM 4); graph.cpp static_asserts the equality.
enum class NormMode : int { layer = 0, instance = 1, batch = 2, group = 3, rms = 4 };

/// What graph the problem becomes.
///   norm_forward_training   NORM_FORWARD, phase CUDNN_NORM_FWD_TRAINING (saves mean/invstd)
///   norm_forward_inference  NORM_FORWARD, phase CUDNN_NORM_FWD_INFERENCE
///   norm_backward           NORM_BACKWARD
///   folded_affine           BatchNorm inference as pointwise operations
///                           y = (x - running_mean) * a + beta, a = gamma / sqrt(running_var + eps)
///                           (CONVENTIONS section 1: "Inference folds to y = a_c * x + b_c"; the
///                           subtraction is kept first so inputs far from zero do not cancel), used
///                           when cuDNN has no engine for NORM_FORWARD inference with BATCH_NORM.
enum class GraphKind {
  norm_forward_training,
  norm_forward_inference,
  norm_backward,
  folded_affine
};

/// The tensors of the graphs. Names are cuDNN's attribute names (CUDNN_ATTR_OPERATION_NORM_*).
enum class Role {
  x,                 ///< input, (N, C, H, W), data type
  y,                 ///< forward output, like x
  dy,                ///< backward input gradient, like x
  dx,                ///< backward output, like x
  scale,             ///< gamma (or the folded a), fp32
  bias,              ///< beta, fp32 (absent for RMSNorm)
  mean,              ///< saved mean (training output, backward input), fp32
  inv_variance,      ///< saved invstd = 1/sqrt(var + eps), fp32
  running_mean_in,   ///< BatchNorm training: running mean before the update
  running_var_in,    ///< BatchNorm training: running variance before the update
  running_mean_out,  ///< BatchNorm training: running mean after the update
  running_var_out,   ///< BatchNorm training: running variance after the update
  dscale,            ///< dgamma, fp32
  dbias,             ///< dbeta, fp32
  epsilon,           ///< by-value scalar, fp32
  exp_avg_factor,    ///< by-value scalar: cuDNN's exponentialAverageFactor = our momentum
};
inline constexpr int kRoleCount = 16;
const char* to_string(Role r);

/// Where the device buffer of a tensor comes from (inputs) or goes to (outputs).
enum class Binding {
  x,
  y,
  dy,
  dx,
  gamma,
  beta,
  mean,
  invstd,
  running_mean,
  running_var,
  dgamma,
  dbeta,                  ///< the
                          ///< KernelArgs field of that name, copied as is
  ones,                   ///< noaffine: gamma = 1 (cuDNN requires a scale tensor)
  zeros,                  ///< noaffine: beta = 0 (cuDNN requires a bias tensor)
  scratch,                ///< an output the harness has no buffer for (noaffine
                          ///< dgamma/dbeta); never copied back
  invstd_of_running_var,  ///< 1/sqrt(running_var + eps), computed on the host
  folded_scale,           ///< a = gamma / sqrt(running_var + eps), on the host
  by_value,               ///< a by-value scalar held on the host (epsilon, momentum)
};

const char* to_string(Binding b);

/// Elements of the buffer a binding stands for: N*C*H*W (x, y, dy, dx), param_count (gamma, beta,
/// dgamma, dbeta), stats_count (mean, invstd), C (running_mean, running_var,
/// invstd_of_running_var, folded_scale), 1 (by_value); nullopt for ones, zeros and scratch, which
/// take the size of their tensor. A mapped tensor spans exactly this many elements (so a copy
/// from or to the KernelArgs buffer stays in bounds).
std::optional<std::int64_t> binding_elements(Binding b, const nb::Problem& p);

/// A 4-d tensor in cuDNN's logical order (N, C, H, W); strides in elements.
struct Tensor4d {
  std::array<std::int64_t, 4> dims{1, 1, 1, 1};
  std::array<std::int64_t, 4> strides{1, 1, 1, 1};
  /// Offset in elements of logical element (n, c, h, w): the dot product with the strides.
  std::int64_t offset(std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) const {
    return n * strides[0] + c * strides[1] + h * strides[2] + w * strides[3];
  }
  std::int64_t numel() const { return dims[0] * dims[1] * dims[2] * dims[3]; }
  /// Elements the tensor spans in memory: largest offset + 1.
  std::int64_t span() const;
  bool operator==(const Tensor4d&) const = default;
};

/// Packed strides of dims in a memory order: NCHW (W fastest) or NHWC (C fastest), exactly as
/// nb::Problem::offset addresses x. Dimensions of size 1 get the stride their position implies.
Tensor4d packed(std::array<std::int64_t, 4> dims, nb::Layout layout);

struct TensorSpec {
  Role role = Role::x;
  std::int64_t uid = 0;  ///< CUDNN_ATTR_TENSOR_UNIQUE_ID: 1 + the Role's value
  Tensor4d shape;
  bool data_type = false;  ///< true: the problem's dtype; false: fp32
  bool by_value = false;   ///< CUDNN_ATTR_TENSOR_IS_BY_VALUE (host scalar)
  bool output = false;     ///< written by the graph
  Binding binding = Binding::x;
  /// The device buffer holds the harness's C-major (C, H, W) parameters in the memory order of
  /// the shape's strides (x's layout): LayerNorm/RMSNorm scale, bias, dscale, dbias of an NHWC
  /// problem. Converted on upload and download by to_device_order / from_device_order.
  bool reordered = false;
};

/// A (1, C, H, W) parameter tensor's values in device order: device[spec.shape.offset(0, c, h, w)]
/// = host[(c * H + h) * W + w] for the harness's C-major host buffer (param_count floats). The
/// identity when the shape is packed NCHW or per channel.
std::vector<float> to_device_order(const TensorSpec& spec, const float* host);
/// The inverse: host[(c * H + h) * W + w] = device[spec.shape.offset(0, c, h, w)].
void from_device_order(const TensorSpec& spec, const float* device, float* host);

/// One problem as cuDNN sees it.
struct NormMapping {
  GraphKind kind = GraphKind::norm_forward_training;
  NormMode mode = NormMode::batch;
  std::vector<TensorSpec> tensors;  ///< in Role order, only those the graph takes
  float epsilon = 0;                ///< the problem's eps rounded to fp32 (cuDNN's scalar type)
  float exp_avg_factor = 0;         ///< = momentum (BatchNorm training), else 0
  /// The tensor of a role, or nullptr when the graph does not take it.
  const TensorSpec* find(Role r) const;
};

/// cuDNN's mode for a method: batchnorm BATCH, layernorm LAYER, groupnorm GROUP, instancenorm
/// INSTANCE, rmsnorm RMS.
NormMode norm_mode(nb::Method m);

/// The graph cuDNN's NORM operations need for p (kinds norm_forward_* and norm_backward; for
/// BatchNorm fwd_infer this is NORM_FORWARD inference with mean = running_mean and inv_variance =
/// invstd_of_running_var). Shapes:
///   x, y, dy, dx      (N, C, H, W), strides of p.layout (NHWC: stride of C is 1, of W is C)
///   scale, bias,      (1, C, 1, 1) for batch/instance/group norm, strides of p.layout (element c
///   dscale, dbias     at offset c); (1, C, H, W) for layer/RMS norm in x's layout, like one sample
///                     of x. The harness keeps normalized_shape (C, H, W) C-major whatever the
///                     layout (KernelArgs), so for NHWC these are `reordered`: cuDNN 9.19 has no
///                     LayerNorm/RMSNorm backward engine on sm_90 for C-major parameters with NHWC
///                     x (the forward has), and one order for all passes keeps them comparable.
///   mean, inv_variance  batch (1, C, 1, 1); layer/RMS (N, 1, 1, 1); instance (N, C, 1, 1); group
///                     (N, G, 1, 1); packed so the element of (n, c or g) lies where KernelArgs
///                     keeps it: (C), (N), (N, C), (N, G)
///   running_*         (1, C, 1, 1), BatchNorm fwd_train only (in: the given running statistics,
///                     out: the updated ones)
///   epsilon           forward passes but BatchNorm inference, whose inv_variance has eps inside
///                     (cudnn-frontend sets none for backward since 8.9.6, nor for BN inference)
///   exp_avg_factor    BatchNorm fwd_train only
/// RMSNorm takes no bias/dbias and no mean. Without affine, scale is bound to ones, bias to zeros
/// and dscale/dbias to scratch. Throws std::invalid_argument when p is invalid (nb::validate).
NormMapping map_problem(const nb::Problem& p);

/// BatchNorm fwd_infer as the folded pointwise graph (GraphKind::folded_affine): x, y; mean =
/// running_mean (subtracted); scale = folded_scale a (multiplied); bias = beta or zeros (added).
/// Throws std::invalid_argument unless p is a valid batchnorm fwd_infer problem.
NormMapping map_folded_batchnorm_inference(const nb::Problem& p);

/// invstd_c = 1/sqrt(running_var_c + eps) in fp64, rounded to fp32 (C values): what NORM_FORWARD
/// inference takes in place of the running variance.
std::vector<float> invstd_of_running_var(const float* running_var, std::int64_t channels,
                                         double eps);
/// a_c = gamma_c / sqrt(running_var_c + eps) in fp64, rounded to fp32; gamma nullptr means 1.
std::vector<float> folded_scale(const float* gamma, const float* running_var, std::int64_t channels,
                                double eps);

/// The legacy API's view (cudnnSetTensor4dDescriptorEx, cudnnDeriveBNTensorDescriptor with
/// CUDNN_BATCHNORM_SPATIAL): x/y/dy/dx and the (1, C, 1, 1) parameter and statistics shape.
struct LegacyBatchNormShapes {
  Tensor4d data;   ///< (N, C, H, W) in p.layout
  Tensor4d param;  ///< (1, C, 1, 1): bnScaleBiasMeanVarDesc (cuDNN derives it, packed NCHW)
};
/// Throws std::invalid_argument unless p is a valid batchnorm problem.
LegacyBatchNormShapes map_legacy_batchnorm(const nb::Problem& p);

/// cuDNN requires eps >= CUDNN_BN_MIN_EPSILON (cudnn_ops.h; 0.0 in cuDNN 9). nullopt when
/// p.eps satisfies it, else "eps <value> is below CUDNN_BN_MIN_EPSILON (<min>)". No clamp: a
/// different eps would be a different problem.
std::optional<std::string> eps_below_minimum(const nb::Problem& p, double min_epsilon);

}  // namespace nb_cudnn
