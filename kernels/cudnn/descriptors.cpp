// cuDNN descriptor wrappers (descriptors.hpp).
#include "descriptors.hpp"

#include <utility>

namespace nb_cudnn {

std::string status_text(cudnnStatus_t status) {
  std::string text = cudnnGetErrorString(status);
  char last[1024] = {0};
  cudnnGetLastErrorString(last, sizeof last);
  if (last[0]) text += std::string(" (") + last + ")";
  return text;
}

void check(cudnnStatus_t status, const std::string& what) {
  if (status != CUDNN_STATUS_SUCCESS) throw CudnnError(status, what + ": " + status_text(status));
}

std::string version_string(std::size_t v) {
  // cuDNN 9 encodes major * 10000 + minor * 100 + patch (cudnn_version.h, CUDNN_VERSION).
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
         std::to_string(v % 100);
}

cudnnDataType_t data_type(nb::DType dt) {
  switch (dt) {
    case nb::DType::f32:
      return CUDNN_DATA_FLOAT;
    case nb::DType::bf16:
      return CUDNN_DATA_BFLOAT16;
    case nb::DType::f16:
      return CUDNN_DATA_HALF;
  }
  throw std::invalid_argument("unknown dtype");
}

BackendDescriptor::BackendDescriptor(cudnnBackendDescriptorType_t type, const char* type_name,
                                     std::string label)
    : type_name_(type_name), label_(std::move(label)) {
  check(cudnnBackendCreateDescriptor(type, &desc_), "cudnnBackendCreateDescriptor(" + name() + ")");
}

BackendDescriptor::~BackendDescriptor() {
  if (desc_) cudnnBackendDestroyDescriptor(desc_);
}

BackendDescriptor::BackendDescriptor(BackendDescriptor&& o) noexcept
    : desc_(std::exchange(o.desc_, nullptr)),
      type_name_(std::move(o.type_name_)),
      label_(std::move(o.label_)) {}

BackendDescriptor& BackendDescriptor::operator=(BackendDescriptor&& o) noexcept {
  std::swap(desc_, o.desc_);
  std::swap(type_name_, o.type_name_);
  std::swap(label_, o.label_);
  return *this;
}

std::string BackendDescriptor::name() const {
  return label_.empty() ? type_name_ : type_name_ + " " + label_;
}

void BackendDescriptor::set(cudnnBackendAttributeName_t attr, const char* attr_name,
                            cudnnBackendAttributeType_t type, std::int64_t count,
                            const void* elements) {
  check(cudnnBackendSetAttribute(desc_, attr, type, count, elements),
        std::string("cudnnBackendSetAttribute(") + name() + ", " + attr_name + ")");
}

void BackendDescriptor::set_int64(cudnnBackendAttributeName_t attr, const char* attr_name,
                                  std::int64_t v) {
  set(attr, attr_name, CUDNN_TYPE_INT64, 1, &v);
}

void BackendDescriptor::set_int64s(cudnnBackendAttributeName_t attr, const char* attr_name,
                                   const std::vector<std::int64_t>& v) {
  set(attr, attr_name, CUDNN_TYPE_INT64, static_cast<std::int64_t>(v.size()), v.data());
}

void BackendDescriptor::set_bool(cudnnBackendAttributeName_t attr, const char* attr_name, bool v) {
  set(attr, attr_name, CUDNN_TYPE_BOOLEAN, 1, &v);
}

void BackendDescriptor::set_descriptor(cudnnBackendAttributeName_t attr, const char* attr_name,
                                       cudnnBackendDescriptor_t d) {
  set(attr, attr_name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &d);
}

void BackendDescriptor::set_descriptors(cudnnBackendAttributeName_t attr, const char* attr_name,
                                        const std::vector<cudnnBackendDescriptor_t>& d) {
  set(attr, attr_name, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<std::int64_t>(d.size()),
      d.data());
}

void BackendDescriptor::finalize() {
  check(cudnnBackendFinalize(desc_), "cudnnBackendFinalize(" + name() + ")");
}

std::int64_t BackendDescriptor::get_int64(cudnnBackendAttributeName_t attr,
                                          const char* attr_name) const {
  std::int64_t value = 0, count = 0;
  check(cudnnBackendGetAttribute(desc_, attr, CUDNN_TYPE_INT64, 1, &count, &value),
        std::string("cudnnBackendGetAttribute(") + name() + ", " + attr_name + ")");
  return value;
}

std::string BackendDescriptor::get_string(cudnnBackendAttributeName_t attr,
                                          const char* attr_name) const {
  const std::string what =
      std::string("cudnnBackendGetAttribute(") + name() + ", " + attr_name + ")";
  std::int64_t count = 0;
  check(cudnnBackendGetAttribute(desc_, attr, CUDNN_TYPE_CHAR, 0, &count, nullptr), what);
  std::string text(static_cast<std::size_t>(count), '\0');
  check(cudnnBackendGetAttribute(desc_, attr, CUDNN_TYPE_CHAR, count, &count, text.data()), what);
  text.resize(static_cast<std::size_t>(count));
  while (!text.empty() && text.back() == '\0') text.pop_back();
  return text;
}

namespace {

BackendDescriptor tensor_descriptor(std::int64_t uid, const Tensor4d& shape, cudnnDataType_t type,
                                    bool by_value, bool is_virtual, const std::string& label) {
  BackendDescriptor d(NB_CUDNN_NAMED(CUDNN_BACKEND_TENSOR_DESCRIPTOR), label);
  d.set(NB_CUDNN_NAMED(CUDNN_ATTR_TENSOR_DATA_TYPE), CUDNN_TYPE_DATA_TYPE, 1, &type);
  d.set_int64s(NB_CUDNN_NAMED(CUDNN_ATTR_TENSOR_DIMENSIONS),
               {shape.dims.begin(), shape.dims.end()});
  d.set_int64s(NB_CUDNN_NAMED(CUDNN_ATTR_TENSOR_STRIDES),
               {shape.strides.begin(), shape.strides.end()});
  d.set_int64(NB_CUDNN_NAMED(CUDNN_ATTR_TENSOR_UNIQUE_ID), uid);
  d.set_int64(NB_CUDNN_NAMED(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT), 16);
  if (by_value) d.set_bool(NB_CUDNN_NAMED(CUDNN_ATTR_TENSOR_IS_BY_VALUE), true);
  if (is_virtual) d.set_bool(NB_CUDNN_NAMED(CUDNN_ATTR_TENSOR_IS_VIRTUAL), true);
  d.finalize();
  return d;
}

}  // namespace

BackendDescriptor make_tensor(const TensorSpec& spec, nb::DType dtype) {
  return tensor_descriptor(spec.uid, spec.shape,
                           spec.data_type ? data_type(dtype) : CUDNN_DATA_FLOAT, spec.by_value,
                           false, to_string(spec.role));
}

BackendDescriptor make_virtual_tensor(std::int64_t uid, const Tensor4d& shape,
                                      const std::string& label) {
  return tensor_descriptor(uid, shape, CUDNN_DATA_FLOAT, false, true, label);
}

LegacyTensorDescriptor::LegacyTensorDescriptor() {
  check(cudnnCreateTensorDescriptor(&desc_), "cudnnCreateTensorDescriptor");
}

LegacyTensorDescriptor::~LegacyTensorDescriptor() {
  if (desc_) cudnnDestroyTensorDescriptor(desc_);
}

void LegacyTensorDescriptor::set_4d(cudnnDataType_t type, const Tensor4d& t,
                                    const std::string& label) {
  const auto i = [](std::int64_t v) -> int {
    if (v > 0x7fffffff)
      throw std::invalid_argument("tensor dimension exceeds the legacy API's int");
    return static_cast<int>(v);
  };
  check(cudnnSetTensor4dDescriptorEx(desc_, type, i(t.dims[0]), i(t.dims[1]), i(t.dims[2]),
                                     i(t.dims[3]), i(t.strides[0]), i(t.strides[1]),
                                     i(t.strides[2]), i(t.strides[3])),
        "cudnnSetTensor4dDescriptorEx(" + label + ")");
}

void LegacyTensorDescriptor::derive_batchnorm(const LegacyTensorDescriptor& x) {
  check(cudnnDeriveBNTensorDescriptor(desc_, x.get(), CUDNN_BATCHNORM_SPATIAL),
        "cudnnDeriveBNTensorDescriptor(CUDNN_BATCHNORM_SPATIAL)");
}

Tensor4d LegacyTensorDescriptor::get_4d(cudnnDataType_t* type) const {
  int n, c, h, w, sn, sc, sh, sw;
  check(cudnnGetTensor4dDescriptor(desc_, type, &n, &c, &h, &w, &sn, &sc, &sh, &sw),
        "cudnnGetTensor4dDescriptor");
  Tensor4d t;
  t.dims = {n, c, h, w};
  t.strides = {sn, sc, sh, sw};
  return t;
}

}  // namespace nb_cudnn
