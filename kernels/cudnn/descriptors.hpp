// RAII wrappers of cuDNN's descriptors with every status checked. A failure throws CudnnError whose
// message names the call, the descriptor and the attribute, then cuDNN's status name
// (cudnnGetErrorString) and its last error message (cudnnGetLastErrorString, the reason cuDNN
// logged, e.g. "matcher_casted == nullptr"):
//   cudnnBackendFinalize(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR heuristics A):
//   CUDNN_STATUS_NOT_SUPPORTED (matcher_casted == nullptr)
// Sources: cuDNN 9 API reference, cudnn_graph library (cudnnBackendCreateDescriptor,
// cudnnBackendSetAttribute, cudnnBackendGetAttribute, cudnnBackendFinalize, cudnnGetErrorString,
// cudnnGetLastErrorString) and cudnn_ops library (cudnnSetTensor4dDescriptorEx,
// cudnnDeriveBNTensorDescriptor). Host code only; none of these calls needs a GPU except where
// said.
#pragma once

#include <cudnn.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtype.hpp"
#include "mapping.hpp"

/// Expands to an attribute (or descriptor type) and its name, for messages:
/// d.set_int64(NB_CUDNN_NAMED(CUDNN_ATTR_TENSOR_UNIQUE_ID), 7).
#define NB_CUDNN_NAMED(name) name, #name

namespace nb_cudnn {

/// A cuDNN call that did not return CUDNN_STATUS_SUCCESS.
class CudnnError : public std::runtime_error {
 public:
  CudnnError(cudnnStatus_t status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  cudnnStatus_t status() const { return status_; }
  /// The CUDNN_STATUS_NOT_SUPPORTED category (3000-3999): cuDNN has no implementation for the
  /// request (a SKIP, not an error of the wrapper).
  bool not_supported() const { return status_ / 1000 == CUDNN_STATUS_NOT_SUPPORTED / 1000; }

 private:
  cudnnStatus_t status_;
};

/// "<CUDNN_STATUS_NAME> (<last error message>)", or just the name when cuDNN logged none.
std::string status_text(cudnnStatus_t status);
/// Throws CudnnError("<what>: " + status_text(status)) unless status is CUDNN_STATUS_SUCCESS.
void check(cudnnStatus_t status, const std::string& what);

/// A cuDNN version number (cudnnGetVersion: 91900) as "9.19.0".
std::string version_string(std::size_t version);

/// CUDNN_DATA_FLOAT, CUDNN_DATA_BFLOAT16, CUDNN_DATA_HALF.
cudnnDataType_t data_type(nb::DType dt);

/// An owned cudnnBackendDescriptor_t (cudnnBackendCreateDescriptor / DestroyDescriptor). Movable.
/// Creating, setting and finalizing tensor, operation, graph and heuristics descriptors works
/// without a GPU; execution plans need a handle (a GPU) or a device-properties descriptor.
class BackendDescriptor {
 public:
  BackendDescriptor() = default;
  /// Throws CudnnError("cudnnBackendCreateDescriptor(<type_name> <label>): ...").
  BackendDescriptor(cudnnBackendDescriptorType_t type, const char* type_name,
                    std::string label = {});
  ~BackendDescriptor();
  BackendDescriptor(BackendDescriptor&& o) noexcept;
  BackendDescriptor& operator=(BackendDescriptor&& o) noexcept;
  BackendDescriptor(const BackendDescriptor&) = delete;
  BackendDescriptor& operator=(const BackendDescriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return desc_; }
  explicit operator bool() const { return desc_ != nullptr; }
  /// "<type_name> <label>", as messages print it.
  std::string name() const;

  /// cudnnBackendSetAttribute; throws CudnnError naming this descriptor and the attribute.
  void set(cudnnBackendAttributeName_t attr, const char* attr_name,
           cudnnBackendAttributeType_t type, std::int64_t count, const void* elements);
  void set_int64(cudnnBackendAttributeName_t attr, const char* attr_name, std::int64_t v);
  void set_int64s(cudnnBackendAttributeName_t attr, const char* attr_name,
                  const std::vector<std::int64_t>& v);
  void set_bool(cudnnBackendAttributeName_t attr, const char* attr_name, bool v);
  void set_descriptor(cudnnBackendAttributeName_t attr, const char* attr_name,
                      cudnnBackendDescriptor_t d);
  void set_descriptors(cudnnBackendAttributeName_t attr, const char* attr_name,
                       const std::vector<cudnnBackendDescriptor_t>& d);
  /// cudnnBackendFinalize; throws CudnnError("cudnnBackendFinalize(<name>): ...").
  void finalize();

  /// cudnnBackendGetAttribute of one INT64; throws CudnnError.
  std::int64_t get_int64(cudnnBackendAttributeName_t attr, const char* attr_name) const;
  /// cudnnBackendGetAttribute of a CHAR array (JSON representations); throws CudnnError.
  std::string get_string(cudnnBackendAttributeName_t attr, const char* attr_name) const;

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
  std::string type_name_, label_;
};

/// A finalized CUDNN_BACKEND_TENSOR_DESCRIPTOR for a mapped tensor: dims and strides as given,
/// data type (the problem's dtype or fp32), unique id, 16-byte alignment (device buffers come from
/// cudaMalloc), by-value flag. Throws CudnnError naming the tensor's role.
BackendDescriptor make_tensor(const TensorSpec& spec, nb::DType dtype);
/// A finalized virtual (graph-internal, never in memory) fp32 tensor descriptor.
BackendDescriptor make_virtual_tensor(std::int64_t uid, const Tensor4d& shape,
                                      const std::string& label);

/// An owned legacy cudnnTensorDescriptor_t (cudnnCreateTensorDescriptor / Destroy). No GPU needed.
class LegacyTensorDescriptor {
 public:
  /// Throws CudnnError.
  LegacyTensorDescriptor();
  ~LegacyTensorDescriptor();
  LegacyTensorDescriptor(const LegacyTensorDescriptor&) = delete;
  LegacyTensorDescriptor& operator=(const LegacyTensorDescriptor&) = delete;
  cudnnTensorDescriptor_t get() const { return desc_; }
  /// cudnnSetTensor4dDescriptorEx(dims, strides); throws CudnnError naming `label`.
  void set_4d(cudnnDataType_t type, const Tensor4d& t, const std::string& label);
  /// cudnnDeriveBNTensorDescriptor(this, x, CUDNN_BATCHNORM_SPATIAL): the (1, C, 1, 1) fp32
  /// descriptor of scale, bias, mean and variance for x's data type. Throws CudnnError.
  void derive_batchnorm(const LegacyTensorDescriptor& x);
  /// cudnnGetTensor4dDescriptor: the data type and the (N, C, H, W) dims and strides set.
  Tensor4d get_4d(cudnnDataType_t* type) const;

 private:
  cudnnTensorDescriptor_t desc_ = nullptr;
};

}  // namespace nb_cudnn
